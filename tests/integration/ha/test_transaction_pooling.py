"""An app behind PgBouncer in transaction mode (``create_engine(..., transaction_pooling=True)``):
no prepared statement outlives its transaction, the SQL web-session store's read outside a
transaction runs inside one all the same, and the session cache's LISTEN goes past PgBouncer
(``SqlStore(listen_url=...)``), to whichever server is the primary.

PgBouncer's pool is small (3 server connections for 20 client ones), so many clients share
each server connection: a statement prepared on one and executed on another fails at once.
The counterfactual tests show that the load of the first test does fail without each part of
the setting. One PostgreSQL pair and one PgBouncer serve the whole module (their own processes,
on free ports; the machine's own servers are not used). Missing packages skip the tests, or,
under CI=true, fail them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from ha import PgBouncer, PostgresPair, pgbouncer_missing, postgres_missing, temporary_workdir
from installed import require_installed
from session_tables import SESSIONS, with_table
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import atomic, create_engine
from fastapi_atomic.engine import transaction_pooled
from fastapi_atomic.testing import make_record, new_key
from fastapi_atomic.unit_of_work import SqlAlchemyUnitOfWork
from fastapi_atomic.websession import SqlStore
from fastapi_atomic.websession.record import Changes, SessionRecord
from fastapi_atomic.websession.stores.sql_trigger import notify_channel

#: the load: concurrent tasks, and units of work each runs one after the other
TASKS = 40
ITERATIONS = 25
#: PgBouncer's server connections: far fewer than the engine's 20 client connections
SERVER_CONNECTIONS = 3
#: seconds a committed change may take to evict a record cached in another process
EVICTION_BOUND = 5.0


@dataclass(frozen=True)
class Stack:
    pair: PostgresPair
    bouncer: PgBouncer

    def pooled_engine(self, **kwargs: Any) -> AsyncEngine:
        """An engine through PgBouncer, with as many connections as half the load's tasks."""
        return create_engine(self.bouncer.url(), pool_size=20, **kwargs)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """A primary with its standby, and PgBouncer in front of the primary; the sessions table
    made on the primary (no trigger: the stores send their own notifications)."""
    require_installed(postgres_missing() or pgbouncer_missing())
    with (
        temporary_workdir("ha-txpool-") as workdir,
        PostgresPair(workdir) as pair,
        PgBouncer(workdir, pair.primary_port, pool_size=SERVER_CONNECTIONS) as bouncer,
    ):
        asyncio.run(_on_primary(pair, with_table))
        yield Stack(pair, bouncer)


async def _on_primary(pair: PostgresPair, work: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    engine = create_engine(pair.url(pair.primary_port))
    try:
        await work(engine)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def disposed(engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    try:
        yield engine
    finally:
        await engine.dispose()


# --- the load: a session read outside the transaction, then a write in it -------------------


async def new_sessions(engine: AsyncEngine, store: SqlStore, count: int) -> list[str]:
    keys = [new_key() for _ in range(count)]
    async with atomic(engine) as uow:
        for key in keys:
            await store.create(key, make_record(n=0), uow)
    return keys


async def run_load(engine: AsyncEngine, store: SqlStore, keys: list[str]) -> Counter[str]:
    """Each key's task: ITERATIONS units of work that read the session before any transaction
    began (the store's out-of-transaction path) and then write it in the unit of work's
    transaction. The errors, by their first line."""
    errors: Counter[str] = Counter()

    async def task(key: str) -> None:
        for _ in range(ITERATIONS):
            try:
                async with atomic(engine) as uow:
                    assert isinstance(uow, SqlAlchemyUnitOfWork)
                    assert not uow._in_transaction  # the read below takes the "aside" path
                    record = await store.read(key, uow)
                    assert record is not None
                    change = Changes([("set", "n", record.data["n"] + 1)])
                    await store.update(key, change, uow, current=record)
            except Exception as exc:
                errors[str(exc).splitlines()[0]] += 1

    await asyncio.gather(*(task(key) for key in keys))
    return errors


async def read_all(engine: AsyncEngine, store: SqlStore, keys: list[str]) -> list[SessionRecord]:
    async with atomic(engine) as uow:
        found = [await store.read(key, uow) for key in keys]
    assert all(record is not None for record in found)
    return [record for record in found if record is not None]


def prepared_statement_errors(errors: Counter[str]) -> tuple[int, list[str]]:
    """How many of ``errors`` name a prepared statement, and the others' messages."""
    prepared = sum(count for message, count in errors.items() if "prepared statement" in message)
    return prepared, [message for message in errors if "prepared statement" not in message]


async def test_the_load_through_pgbouncer_runs_without_an_error(stack: Stack) -> None:
    store = SqlStore(SESSIONS)
    async with disposed(stack.pooled_engine(transaction_pooling=True)) as engine:
        assert transaction_pooled(engine)
        # the store's read "outside a transaction" is given the engine itself: a transaction
        assert SqlAlchemyUnitOfWork(engine)._autocommit_engine is engine
        keys = await new_sessions(engine, store, TASKS)
        started = time.monotonic()
        errors = await run_load(engine, store, keys)
        took = time.monotonic() - started
        assert not errors, f"{sum(errors.values())} failed units of work: {errors.most_common(5)}"
        records = await read_all(engine, store, keys)
    assert [record.data["n"] for record in records] == [ITERATIONS] * TASKS, "a write was lost"
    print(f"\n{TASKS * ITERATIONS} units of work through PgBouncer in {took:.2f} s")


async def test_without_transaction_pooling_the_same_load_fails(stack: Stack) -> None:
    """asyncpg's and SQLAlchemy's statement caches, and asyncpg's per-connection statement
    names, meet PgBouncer's shared server connections: "prepared statement ... does not
    exist" (most units of work fail, not a few)."""
    store = SqlStore(SESSIONS)
    async with disposed(stack.pooled_engine()) as engine:
        assert not transaction_pooled(engine)
        async with disposed(stack.pooled_engine(transaction_pooling=True)) as setup:
            keys = await new_sessions(setup, store, TASKS)
        errors = await run_load(engine, store, keys)
    prepared, others = prepared_statement_errors(errors)
    assert prepared >= TASKS * ITERATIONS // 10, f"only {prepared} prepared-statement errors"
    assert not others, others
    print(f"\n{prepared} of {TASKS * ITERATIONS} units of work failed on a prepared statement")


async def test_a_read_in_autocommit_fails_even_with_transaction_pooling(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``_autocommit_engine`` returning the engine itself prevents: in autocommit, asyncpg
    prepares a statement (one PgBouncer "transaction") and executes it (another), each maybe
    on a different server connection. The unit of work is made to forget that the engine is
    pooled, so its out-of-transaction read runs in autocommit as it does on a direct engine."""
    monkeypatch.setattr("fastapi_atomic.unit_of_work.transaction_pooled", lambda _engine: False)
    store = SqlStore(SESSIONS)
    async with disposed(stack.pooled_engine(transaction_pooling=True)) as engine:
        assert SqlAlchemyUnitOfWork(engine)._autocommit_engine is not engine
        keys = await new_sessions(engine, store, TASKS)
        errors = await run_load(engine, store, keys)
    prepared, others = prepared_statement_errors(errors)
    assert prepared >= TASKS * ITERATIONS // 10, f"only {prepared} prepared-statement errors"
    assert not others, others
    print(f"\n{prepared} of {TASKS * ITERATIONS} autocommit reads failed on a prepared statement")


# --- the session cache: LISTEN past PgBouncer -------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until ``check`` held; fails after ``within``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def load(store: SqlStore, engine: AsyncEngine, key: str) -> SessionRecord | None:
    async with atomic(engine) as uow:
        return await store.load(key, uow)


@contextlib.asynccontextmanager
async def started(engine: AsyncEngine, *stores: SqlStore) -> AsyncIterator[None]:
    try:
        for store in stores:
            await store.start(engine)
        yield
    finally:
        for store in stores:
            await store.aclose()


async def evicted_within(
    writer: SqlStore, reader: SqlStore, engine: AsyncEngine, bound: float
) -> float:
    """A session cached in ``reader``, changed through ``writer``: seconds until ``reader``
    serves the change (fails after ``bound``)."""
    key = new_key()
    async with atomic(engine) as uow:
        await writer.create(key, make_record(step=1), uow)
    assert reader.cache is not None
    for _ in range(2):  # the first load fills the cache, the second is a hit
        first = await load(reader, engine, key)
        assert first is not None and first.data == {"step": 1}
    assert reader.cache.hits >= 1 and len(reader.cache) == 1

    async with atomic(engine) as uow:
        await writer.update(key, Changes([("set", "step", 2)]), uow)

    async def sees_step_2() -> bool:
        record = await load(reader, engine, key)
        return record is not None and record.data == {"step": 2}

    return await eventually(sees_step_2, within=bound)


async def test_the_cache_listens_past_pgbouncer_and_a_change_evicts_it(stack: Stack) -> None:
    """Two stores (two processes) on the pooled engine, their feeds given the multihost URL of
    the pair: both go live, and a change committed through PgBouncer reaches the other."""
    listen_url = stack.pair.multihost_url()
    writer, reader = (SqlStore(SESSIONS, cache=True, listen_url=listen_url) for _ in "ab")
    async with (
        disposed(stack.pooled_engine(transaction_pooling=True)) as engine,
        started(engine, writer, reader),
    ):

        async def live() -> bool:
            return all(store.cache is not None and store.cache.live for store in (writer, reader))

        await eventually(live, within=5.0)
        took = await evicted_within(writer, reader, engine, EVICTION_BOUND)
    print(f"\nevicted {took * 1000:.1f} ms after the commit")


async def test_a_store_notifies_through_pgbouncer_itself(stack: Stack) -> None:
    """A store with no ``listen_url`` sends its notifications through PgBouncer (no startup
    setting, no prepared statement), and a process listening past it hears them."""
    writer = SqlStore(SESSIONS)  # no cache, no listen_url: it only publishes
    reader = SqlStore(SESSIONS, cache=True, listen_url=stack.pair.multihost_url())
    async with (
        disposed(stack.pooled_engine(transaction_pooling=True)) as engine,
        started(engine, writer, reader),
    ):

        async def live() -> bool:
            return reader.cache is not None and reader.cache.live

        await eventually(live, within=5.0)
        await evicted_within(writer, reader, engine, EVICTION_BOUND)


async def test_without_a_listen_url_the_cache_stays_off_behind_pgbouncer(stack: Stack) -> None:
    """A LISTEN through PgBouncer in transaction mode would hear nothing: the store does not
    cache (every read goes to the database) rather than serve what it would never hear of."""
    store = SqlStore(SESSIONS, cache=True)
    async with (
        disposed(stack.pooled_engine(transaction_pooling=True)) as engine,
        started(engine, store),
    ):
        key = new_key()
        async with atomic(engine) as uow:
            await store.create(key, make_record(step=1), uow)
        for _ in range(3):
            assert await load(store, engine, key) is not None
        assert store.cache is not None and not store.cache.live and len(store.cache) == 0


async def test_the_listen_url_finds_the_primary_among_its_hosts(stack: Stack) -> None:
    """The standby named first: ``target_session_attrs=primary`` passes it over (a LISTEN on a
    standby fails: "cannot execute LISTEN during recovery"), so the feed follows a failover."""
    pair = stack.pair
    hosts = "&".join(f"host=127.0.0.1:{port}" for port in (pair.standby_port, pair.primary_port))
    listen_url = f"postgresql+asyncpg://postgres@/{pair.database}?{hosts}"
    listen_url += "&target_session_attrs=primary"
    store = SqlStore(SESSIONS, cache=True, listen_url=listen_url)
    listens = (
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE query = 'LISTEN \"{notify_channel(SESSIONS)}\"'"
    )

    async def live() -> bool:
        return store.cache is not None and store.cache.live

    async def on_the_primary_alone() -> bool:
        # == 1: the feeds of the tests before, cut, may take a moment to go
        on = [pair.psql(port, listens) for port in (pair.primary_port, pair.standby_port)]
        return on == ["1", "0"]

    async with (
        disposed(stack.pooled_engine(transaction_pooling=True)) as engine,
        started(engine, store),
    ):
        await eventually(live, within=5.0)
        await eventually(on_the_primary_alone, within=5.0)
