"""Test helpers for apps built on fastapi_atomic: a fake unit of work, the store contract suite.

Unit tests of services take a :class:`FakeUnitOfWork` (nothing commits; phases and hooks are
recorded); a route's tests can hand it to the app with
``app.dependency_overrides[get_unit_of_work] = lambda: fake``.

A new web-session store passes the same expectations as the built-in ones by subclassing the
contract and providing a ``store`` fixture (and, for a store in the app's database, an
``engine`` fixture whose database has its table)::

    class TestMyStore(WebSessionStoreContract):
        @pytest.fixture
        def store(self) -> MyStore: ...
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .engine import create_engine
from .unit_of_work import Hook, IsolationLevel, UnitOfWork, atomic
from .websession.record import Changes, SessionRecord
from .websession.stores.base import WebSessionStore

T = TypeVar("T")


class FakeUnitOfWork(UnitOfWork):
    """A unit of work for unit tests (the fake of *Architecture Patterns with Python*).

    Nothing commits by itself: :meth:`commit` and :meth:`rollback`, called by the test, run the
    hooks as the middleware would and set :attr:`committed` / :attr:`rolled_back`. Phases run
    in a savepoint of the one AsyncSession and are counted in :attr:`phases`. Give it an
    AsyncSession (an in-memory SQLite database, say) for services that query.
    """

    def __init__(self, db: AsyncSession | None = None) -> None:
        self._db = db
        self.committed = False
        self.rolled_back = False
        #: phases that ran to the end (each would have committed)
        self.phases = 0
        #: times a read-only transaction was given back before an outside call
        self.releases = 0
        self.isolation_level: IsolationLevel | None = None
        #: what a failure from now on would tell the client (set_failure_detail)
        self.failure_detail: str | None = None
        self._on_commit: list[Hook] = []
        self._on_rollback: list[Hook] = []

    @property
    def db(self) -> AsyncSession:
        if self._db is None:
            raise AssertionError(
                "This FakeUnitOfWork has no AsyncSession: give it one, FakeUnitOfWork(db), "
                "for code that uses the database."
            )
        return self._db

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[AsyncSession]:
        async with self.db.begin_nested():
            yield self.db

    async def run_phase(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        isolation_level: IsolationLevel | None = None,
        idempotent: bool = False,
    ) -> T:
        async with self.savepoint() as db:
            result = await work(db)
        self.phases += 1
        return result

    def on_commit(self, hook: Hook) -> None:
        self._on_commit.append(hook)

    def on_rollback(self, hook: Hook) -> None:
        self._on_rollback.append(hook)

    def set_failure_detail(self, detail: str) -> None:
        self.failure_detail = detail

    async def set_isolation_level(self, level: IsolationLevel) -> None:
        self.isolation_level = level

    async def release(self) -> None:
        self.releases += 1

    async def commit(self) -> None:
        """What the middleware does when a request succeeded: run the on-commit hooks."""
        self.committed = True
        for hook in self._on_commit:
            await _call(hook)

    async def rollback(self) -> None:
        """What the middleware does when a request failed: run the on-rollback hooks."""
        self.rolled_back = True
        for hook in reversed(self._on_rollback):
            await _call(hook)


async def _call(hook: Hook) -> None:
    result = hook()
    if result is not None:
        await result


class _RolledBack(Exception):
    pass


async def run_in_unit_of_work(
    engine: AsyncEngine, work: Callable[[UnitOfWork], Awaitable[T]], *, commit: bool = True
) -> T:
    """``work`` in an :func:`~fastapi_atomic.atomic` unit of work, committed or rolled back."""
    result: T
    try:
        async with atomic(engine) as uow:
            result = await work(uow)
            if not commit:
                raise _RolledBack()
    except _RolledBack:
        pass
    return result


def make_record(user_id: str | None = None, **data: Any) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        data=dict(data),
        created_at=now,
        last_seen_at=now,
        csrf_token=secrets.token_urlsafe(16),
        public_id=secrets.token_urlsafe(8),
        user_id=user_id,
        authenticated_at=now if user_id else None,
    )


def new_key() -> str:
    return secrets.token_hex(32)


class WebSessionStoreContract:
    """What every web-session store must do. Subclass it with a ``store`` fixture."""

    @pytest.fixture
    async def engine(self) -> AsyncIterator[AsyncEngine]:
        """The database of the units of work the store is used in: an empty one in memory.

        Override it for a store that keeps its records in the app's database.
        """
        engine = create_engine("sqlite+aiosqlite://")
        yield engine
        await engine.dispose()

    async def run(
        self, engine: AsyncEngine, work: Callable[[UnitOfWork], Awaitable[T]], commit: bool = True
    ) -> T:
        return await run_in_unit_of_work(engine, work, commit=commit)

    async def test_create_then_load(self, store: WebSessionStore, engine: AsyncEngine) -> None:
        key, record = new_key(), make_record("7", cart=[1, 2])
        await self.run(engine, lambda uow: store.create(key, record, uow))
        loaded = await self.run(engine, lambda uow: store.load(key, uow))
        assert loaded == record

    async def test_unknown_key_loads_nothing(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        assert await self.run(engine, lambda uow: store.load(new_key(), uow)) is None

    async def test_update_replays_changes_and_bumps_the_version(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        key = new_key()
        await self.run(engine, lambda uow: store.create(key, make_record(a=1, b=2), uow))
        changes = Changes([("set", "a", 10), ("delete", "b", None), ("append", "ids", 5)])
        updated = await self.run(engine, lambda uow: store.update(key, changes, uow))
        assert updated is not None
        assert updated.data == {"a": 10, "ids": [5]}
        loaded = await self.run(engine, lambda uow: store.load(key, uow))
        assert loaded is not None and loaded.data == {"a": 10, "ids": [5]}
        assert loaded.version == 2

    async def test_update_never_resurrects_a_deleted_session(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        key = new_key()
        await self.run(engine, lambda uow: store.create(key, make_record("1"), uow))
        await self.run(engine, lambda uow: store.delete(key, uow))
        result = await self.run(
            engine, lambda uow: store.update(key, Changes([("set", "x", 1)]), uow)
        )
        assert result is None
        assert await self.run(engine, lambda uow: store.load(key, uow)) is None

    async def test_interleaved_updates_compose(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        key = new_key()
        await self.run(engine, lambda uow: store.create(key, make_record(), uow))
        first = Changes([("append", "order_ids", 1), ("set", "tab", "one")])
        second = Changes([("append", "order_ids", 2), ("set", "theme", "dark")])
        await self.run(engine, lambda uow: store.update(key, first, uow))
        await self.run(engine, lambda uow: store.update(key, second, uow))
        loaded = await self.run(engine, lambda uow: store.load(key, uow))
        assert loaded is not None
        assert loaded.data == {"order_ids": [1, 2], "tab": "one", "theme": "dark"}

    async def test_concurrent_appends_all_survive(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        key = new_key()
        await self.run(engine, lambda uow: store.create(key, make_record(), uow))

        async def append(value: int) -> None:
            await self.run(
                engine, lambda uow: store.update(key, Changes([("append", "ids", value)]), uow)
            )

        if engine.dialect.name == "sqlite":
            for value in range(10):  # one writer at a time: the store must still compose
                await append(value)
        else:
            await asyncio.gather(*(append(value) for value in range(10)))
        loaded = await self.run(engine, lambda uow: store.load(key, uow))
        assert loaded is not None and sorted(loaded.data["ids"]) == list(range(10))

    async def test_a_rolled_back_write_leaves_the_session_as_it_was(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        key = new_key()
        await self.run(engine, lambda uow: store.create(key, make_record(a=1), uow))
        await self.run(
            engine, lambda uow: store.update(key, Changes([("set", "a", 2)]), uow), commit=False
        )
        await self.run(engine, lambda uow: store.delete(key, uow), commit=False)
        loaded = await self.run(engine, lambda uow: store.load(key, uow))
        assert loaded is not None and loaded.data == {"a": 1}
        fresh = new_key()
        await self.run(engine, lambda uow: store.create(fresh, make_record(), uow), commit=False)
        assert await self.run(engine, lambda uow: store.load(fresh, uow)) is None

    async def test_two_writes_rolled_back_together_leave_the_first_state(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        """A session flushed mid-request and saved again at COMMIT is written twice in one unit
        of work; a rollback must undo both, back to what was there before the first."""
        key = new_key()
        await self.run(engine, lambda uow: store.create(key, make_record(ids=[0]), uow))

        async def twice(uow: UnitOfWork) -> None:
            first = await store.update(key, Changes([("append", "ids", 1)]), uow)
            await store.update(key, Changes([("append", "ids", 2)]), uow, current=first)

        await self.run(engine, twice, commit=False)
        loaded = await self.run(engine, lambda uow: store.load(key, uow))
        assert loaded is not None and loaded.data == {"ids": [0]}

    async def test_list_and_delete_a_users_sessions(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        user = f"u{secrets.token_hex(4)}"
        keys = [new_key() for _ in range(3)]
        async with atomic(engine) as uow:
            for key in keys:
                await store.create(key, make_record(user), uow)
        other = new_key()
        await self.run(engine, lambda uow: store.create(other, make_record("someone else"), uow))
        listed = await self.run(engine, lambda uow: store.list_for_user(user, uow))
        assert sorted(key for key, _ in listed) == sorted(keys)
        deleted = await self.run(engine, lambda uow: store.delete_for_user(user, uow, keep=keys[0]))
        assert deleted == 2
        listed = await self.run(engine, lambda uow: store.list_for_user(user, uow))
        assert [key for key, _ in listed] == [keys[0]]
        assert await self.run(engine, lambda uow: store.load(other, uow)) is not None

    async def test_a_read_never_outlives_a_committed_write(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        # Stores that cache reads must evict on commit: the next read sees the write at once.
        key = new_key()
        await self.run(engine, lambda uow: store.create(key, make_record("1", a=1), uow))
        assert await self.run(engine, lambda uow: store.load(key, uow)) is not None
        await self.run(engine, lambda uow: store.update(key, Changes([("set", "a", 2)]), uow))
        loaded = await self.run(engine, lambda uow: store.load(key, uow))
        assert loaded is not None and loaded.data == {"a": 2}
        await self.run(engine, lambda uow: store.delete_for_user("1", uow, keep=None))
        assert await self.run(engine, lambda uow: store.load(key, uow)) is None

    async def test_purge_deletes_only_expired_sessions(
        self, store: WebSessionStore, engine: AsyncEngine
    ) -> None:
        store.configure(idle_timeout=10, absolute_timeout=100)
        stale, fresh = make_record("1"), make_record("1")
        stale.last_seen_at -= 20
        stale_key, fresh_key = new_key(), new_key()
        await self.run(engine, lambda uow: store.create(stale_key, stale, uow))
        await self.run(engine, lambda uow: store.create(fresh_key, fresh, uow))
        purged = await self.run(engine, store.purge_expired)
        assert purged in (0, 1)  # 0: the store expires records by itself
        assert await self.run(engine, lambda uow: store.read(fresh_key, uow)) is not None
        if purged:
            assert await self.run(engine, lambda uow: store.read(stale_key, uow)) is None

    async def test_ping(self, store: WebSessionStore) -> None:
        await store.ping()
