"""The SQL store's own notifications on PostgreSQL (``SqlStore(notify="store")``, the default):
sent just before the writing transaction commits, in a transaction of their own, with no
trigger on the table (the conftest's table has none).

Two started stores stand for two server processes, as in test_cache.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import atomic
from fastapi_atomic.exceptions import ServiceUnavailable
from fastapi_atomic.testing import make_record, new_key
from fastapi_atomic.websession import SqlStore
from fastapi_atomic.websession.record import Changes
from fastapi_atomic.websession.stores.sql_trigger import notify_channel


@pytest.fixture
async def listener(
    postgres_engine: AsyncEngine, sessions_table: Table
) -> AsyncIterator[asyncio.Queue[tuple[float, str]]]:
    """Every notification on the store's channel, with when it arrived."""
    url = postgres_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(url)
    received: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
    await connection.add_listener(
        notify_channel(sessions_table),
        lambda _c, _p, _ch, payload: received.put_nowait((time.monotonic(), payload)),
    )
    yield received
    await connection.close()


async def started(store: SqlStore, engine: AsyncEngine, cleanup: list[SqlStore]) -> SqlStore:
    await store.start(engine)
    cleanup.append(store)
    return store


@pytest.fixture
async def stores() -> AsyncIterator[list[SqlStore]]:
    made: list[SqlStore] = []
    yield made
    for store in made:
        await store.aclose()


async def version_in_database(engine: AsyncEngine, table: Table, key: str) -> int | None:
    async with engine.connect() as connection:
        return await connection.scalar(select(table.c.version).where(table.c.key == key))


async def test_the_message_is_out_before_the_commit_and_the_commit_sends_none(
    postgres_engine: AsyncEngine,
    sessions_table: Table,
    listener: asyncio.Queue[tuple[float, str]],
    stores: list[SqlStore],
) -> None:
    store = await started(SqlStore(sessions_table), postgres_engine, stores)
    key = new_key()
    async with atomic(postgres_engine) as uow:
        await store.create(key, make_record("1"), uow)
    assert listener.empty()  # a new key: nobody can hold it

    seen_before_commit: list[tuple[str, int | None]] = []

    async def look() -> None:  # registered after the store's hook: runs right before COMMIT
        _, payload = await asyncio.wait_for(listener.get(), 5)
        seen_before_commit.append(
            (payload, await version_in_database(postgres_engine, sessions_table, key))
        )

    async with atomic(postgres_engine) as uow:
        await store.update(key, Changes([("set", "a", 1)]), uow)
        uow._before_commit(look)
    # The listener had "<key> 2" while the database still said version 1 to everyone else.
    assert seen_before_commit == [(f"{key} 2", 1)]
    assert await version_in_database(postgres_engine, sessions_table, key) == 2
    await asyncio.sleep(0.05)
    assert listener.empty()  # and the COMMIT itself sent nothing (no trigger)

    async with atomic(postgres_engine) as uow:
        await store.delete(key, uow)
    assert (await asyncio.wait_for(listener.get(), 5))[1] == f"{key} -"


async def test_a_store_without_a_cache_still_tells_the_processes_that_have_one(
    postgres_engine: AsyncEngine, sessions_table: Table, stores: list[SqlStore]
) -> None:
    writer = await started(SqlStore(sessions_table), postgres_engine, stores)
    reader = await started(SqlStore(sessions_table, cache=True), postgres_engine, stores)
    key = new_key()
    async with atomic(postgres_engine) as uow:
        await writer.create(key, make_record("2", step=1), uow)
    for _ in range(2):
        async with atomic(postgres_engine) as uow:
            assert (await reader.load(key, uow)) is not None
    assert reader.cache is not None and reader.cache.hits >= 1

    async with atomic(postgres_engine) as uow:
        await writer.update(key, Changes([("set", "step", 2)]), uow)
    # Published before the COMMIT returned: the reader's cache has already dropped it.
    async with atomic(postgres_engine) as uow:
        record = await reader.load(key, uow)
    assert record is not None and record.data == {"step": 2}


async def test_logging_out_everywhere_tells_every_process_of_every_session(
    postgres_engine: AsyncEngine,
    sessions_table: Table,
    listener: asyncio.Queue[tuple[float, str]],
    stores: list[SqlStore],
) -> None:
    store = await started(SqlStore(sessions_table), postgres_engine, stores)
    keys = sorted(new_key() for _ in range(3))
    async with atomic(postgres_engine) as uow:
        for key in keys:
            await store.create(key, make_record("u-3"), uow)
    async with atomic(postgres_engine) as uow:
        assert await store.delete_for_user("u-3", uow, keep=None) == 3
    payloads = [(await asyncio.wait_for(listener.get(), 5))[1] for _ in keys]
    assert sorted(payloads) == [f"{key} -" for key in keys]


async def test_a_change_the_others_could_not_hear_of_is_not_made(
    postgres_engine: AsyncEngine, sessions_table: Table, stores: list[SqlStore]
) -> None:
    """No server at the notification's address: the write fails before COMMIT (a 503 in an
    app), and the database keeps the record as it was."""
    nowhere = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    store = await started(SqlStore(sessions_table, listen_url=nowhere), postgres_engine, stores)
    key = new_key()
    async with atomic(postgres_engine) as uow:
        await store.create(key, make_record("4", a=1), uow)

    with pytest.raises(ServiceUnavailable, match="change feed is unavailable"):
        async with atomic(postgres_engine) as uow:
            await store.update(key, Changes([("set", "a", 2)]), uow)
    assert await version_in_database(postgres_engine, sessions_table, key) == 1
