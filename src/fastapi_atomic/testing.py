"""Test helpers for apps built on fastapi_atomic, and the web-session store contract suite.

A new store passes the same expectations as the built-in ones by subclassing the contract and
providing two fixtures::

    class TestMyStore(WebSessionStoreContract):
        @pytest.fixture
        def store(self) -> MyStore: ...

        @pytest.fixture
        def engine(self) -> AsyncEngine: ...   # the app's database (any, for non-SQL stores)
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from .unit_of_work import UnitOfWork
from .websession.record import Changes, SessionRecord
from .websession.stores.base import WebSessionStore

T = TypeVar("T")


@asynccontextmanager
async def unit_of_work(engine: AsyncEngine, *, commit: bool = True) -> AsyncIterator[UnitOfWork]:
    """A unit of work outside any request: committed at the end (or rolled back)."""
    uow = UnitOfWork(engine)
    try:
        yield uow
        if commit:
            await uow.commit()
        else:
            await uow.rollback()
    except BaseException:
        await uow.rollback()
        raise
    finally:
        await uow.close()
    await uow.run_after_commit_hooks()


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
    """What every web-session store must do. Subclass it with ``store`` and ``engine`` fixtures."""

    async def run(
        self, engine: AsyncEngine, work: Callable[[UnitOfWork], Awaitable[T]], commit: bool = True
    ) -> T:
        async with unit_of_work(engine, commit=commit) as uow:
            return await work(uow)

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
        async with unit_of_work(engine) as uow:
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

    async def test_ping(self, store: WebSessionStore) -> None:
        await store.ping()
