"""The web-session read cache on real PostgreSQL (LISTEN/NOTIFY) and Redis (pub/sub).

Two stores with their own caches and feeds stand for two server processes: what one commits,
the other must stop serving from memory, and a feed that drops must empty its cache.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from session_tables import with_table
from sqlalchemy import MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import atomic
from fastapi_atomic.testing import (
    WebSessionStoreContract,
    make_record,
    new_key,
    run_in_unit_of_work,
)
from fastapi_atomic.websession import RedisStore, SqlStore, web_sessions_table
from fastapi_atomic.websession.feeds import RedisFeed
from fastapi_atomic.websession.record import Changes, SessionRecord
from fastapi_atomic.websession.stores.base import WebSessionStore
from fastapi_atomic.websession.stores.sql_trigger import notify_channel


@pytest.fixture
async def sql_stores(
    postgres_engine: AsyncEngine, sessions_table: Table
) -> AsyncIterator[list[SqlStore]]:
    stores = [SqlStore(sessions_table, cache=True) for _ in range(2)]
    for store in stores:
        await store.start(postgres_engine)
    yield stores
    for store in stores:
        await store.aclose()


@pytest.fixture
async def redis_stores(
    redis_url: str, redis_prefix: str, sqlite_engine: AsyncEngine
) -> AsyncIterator[list[RedisStore]]:
    # As an app makes them (a client that retries on a closed connection); named, so that a
    # test can find its own connections among the server's clients.
    stores = [
        RedisStore.from_url(
            redis_url,
            prefix=redis_prefix,
            cache=True,
            client_name=redis_client_name(redis_prefix),
        )
        for _ in "ab"
    ]
    for store in stores:
        await store.start(sqlite_engine)  # the app's engine: Redis stores do not use it
    yield stores
    keys = [key async for key in stores[0].redis.scan_iter(f"{redis_prefix}*")]
    if keys:
        await stores[0].redis.delete(*keys)
    for store in stores:
        await store.aclose()


def redis_client_name(prefix: str) -> str:
    return "test-" + prefix.replace(":", "-").strip("-")


class TestCachedSqlStoreOnPostgres(WebSessionStoreContract):
    @pytest.fixture
    def store(self, sql_stores: list[SqlStore]) -> SqlStore:
        return sql_stores[0]

    @pytest.fixture
    def engine(self, postgres_engine: AsyncEngine) -> AsyncEngine:
        return postgres_engine


class TestCachedRedisStore(WebSessionStoreContract):
    @pytest.fixture
    def store(self, redis_stores: list[RedisStore]) -> RedisStore:
        return redis_stores[0]


@pytest.fixture(params=["sql on postgres", "redis"])
def two_processes(
    request: pytest.FixtureRequest, postgres_engine: AsyncEngine
) -> tuple[list[WebSessionStore], AsyncEngine]:
    name = "sql_stores" if request.param == "sql on postgres" else "redis_stores"
    stores: list[WebSessionStore] = request.getfixturevalue(name)
    return stores, postgres_engine


async def load(store: WebSessionStore, engine: AsyncEngine, key: str) -> SessionRecord | None:
    async with atomic(engine) as uow:
        return await store.load(key, uow)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> float:
    """Seconds until ``check`` held; fails after ``within`` (a correctness bound, not speed)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, "the other process kept the stale record"
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def stored(store: WebSessionStore, engine: AsyncEngine, record: SessionRecord) -> str:
    """A new session holding ``record``, created through ``store``; its key."""
    key = new_key()
    async with atomic(engine) as uow:
        await store.create(key, record, uow)
    return key


async def cached_in_reader(
    writer: WebSessionStore, reader: WebSessionStore, engine: AsyncEngine, record: SessionRecord
) -> str:
    """A session created through ``writer`` and read twice through ``reader`` (then cached)."""
    key = await stored(writer, engine, record)
    first = await load(reader, engine, key)
    assert first is not None and first.data == record.data
    assert await load(reader, engine, key) == first
    return key


async def test_both_caches_are_live(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
) -> None:
    stores, _ = two_processes
    assert all(store.cache is not None and store.cache.live for store in stores)  # type: ignore[attr-defined]


async def test_a_write_in_one_process_evicts_the_record_in_the_other(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
) -> None:
    (writer, reader), engine = two_processes
    key = await cached_in_reader(writer, reader, engine, make_record("5", step=1))
    assert reader.cache.hits >= 1  # type: ignore[attr-defined]

    async with atomic(engine) as uow:
        await writer.update(key, Changes([("set", "step", 2)]), uow)

    async def sees_step_2() -> bool:
        record = await load(reader, engine, key)
        return record is not None and record.data == {"step": 2}

    await eventually(sees_step_2)


async def test_a_logout_in_one_process_ends_the_session_in_the_other(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
) -> None:
    (writer, reader), engine = two_processes
    key = await cached_in_reader(writer, reader, engine, make_record("6"))

    async with atomic(engine) as uow:
        await writer.delete(key, uow)

    async def gone() -> bool:
        return await load(reader, engine, key) is None

    await eventually(gone)


async def test_a_rolled_back_write_is_never_served(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
) -> None:
    (writer, reader), engine = two_processes
    key = await cached_in_reader(writer, reader, engine, make_record("7", a=1))
    await run_in_unit_of_work(
        engine, lambda uow: writer.update(key, Changes([("set", "a", 2)]), uow), commit=False
    )
    await asyncio.sleep(0.05)  # whatever message there was has arrived
    for store in (writer, reader):
        record = await load(store, engine, key)
        assert record is not None and record.data == {"a": 1}


async def test_a_dropped_feed_empties_the_cache_until_it_is_back(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
    redis_url: str,
    redis_prefix: str,
) -> None:
    """Only this test's own feeds are cut: its LISTEN connections, its Redis clients."""
    (store, _), engine = two_processes
    cache = store.cache  # type: ignore[attr-defined]
    key = await stored(store, engine, make_record("8"))
    await load(store, engine, key)
    assert len(cache) == 1

    if isinstance(store, SqlStore):
        async with engine.connect() as connection:
            killed = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query = :listen"
                ),
                {"listen": f'LISTEN "{notify_channel(store.table)}"'},
            )
        assert killed >= 1
    else:
        admin = Redis.from_url(redis_url)
        ours = redis_client_name(redis_prefix)
        clients = await admin.client_list(_type="pubsub")
        mine = [client["id"] for client in clients if client.get("name") == ours]
        assert mine
        for client_id in mine:
            await admin.client_kill_filter(_id=client_id)
        await admin.aclose()

    async def dark() -> bool:
        return not cache.live

    await eventually(dark)
    assert len(cache) == 0
    assert await load(store, engine, key) is not None  # read from the store meanwhile

    async def back() -> bool:
        return bool(cache.live)

    await eventually(back, within=10.0)


async def test_without_the_trigger_the_sql_cache_stays_off(postgres_engine: AsyncEngine) -> None:
    table = web_sessions_table(MetaData(), name="web_sessions_without_trigger")
    async with postgres_engine.begin() as connection:
        await connection.run_sync(table.create)
    store = SqlStore(table, cache=True, notify="trigger")
    await store.start(postgres_engine)
    try:
        assert store.cache is not None and not store.cache.live
        key = await stored(store, postgres_engine, make_record())
        await load(store, postgres_engine, key)
        assert len(store.cache) == 0
    finally:
        await store.aclose()
        async with postgres_engine.begin() as connection:
            await connection.run_sync(table.drop)


@pytest.mark.parametrize("store_kind", ["sql on postgres", "redis"])
async def test_the_feed_stops_at_shut_down_even_in_the_middle_of_a_heartbeat(
    store_kind: str,
    postgres_engine: AsyncEngine,
    redis_url: str,
    redis_prefix: str,
    sessions_table: Table,
) -> None:
    # With a heartbeat of a millisecond, the cancellation lands on a heartbeat's timeout most
    # of the time: where that swallowed it, shut-down waited forever on the feed.
    for _ in range(5):
        store: SqlStore | RedisStore
        if store_kind == "redis":
            store = RedisStore(Redis.from_url(redis_url), prefix=redis_prefix, cache=True)
        else:
            store = SqlStore(sessions_table, cache=True)
        await store.start(postgres_engine)
        feed = store._feed
        assert feed is not None and feed._task is not None
        task = feed._task
        feed.heartbeat = 0.001
        if isinstance(feed, RedisFeed):
            feed.timeout = 0.005  # its PINGs and their deadline, as quick
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await store.aclose()
        assert task.done() and time.monotonic() - started < 1.0


async def test_the_writer_serves_what_it_committed_from_memory(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
) -> None:
    """Its own message, arriving after the COMMIT for the same version, leaves it cached."""
    (writer, _), engine = two_processes
    cache = writer.cache  # type: ignore[attr-defined]
    key = await stored(writer, engine, make_record("9", step=1))
    async with atomic(engine) as uow:
        current = await writer.load(key, uow)
        assert current is not None
        await writer.update(key, Changes([("set", "step", 2)]), uow, current=current)
    await asyncio.sleep(0.1)  # the write's own NOTIFY / PUBLISH has arrived meanwhile
    misses = cache.misses
    record = await load(writer, engine, key)
    assert record is not None and record.data == {"step": 2} and record.version == 2
    assert cache.misses == misses, "the writer read its own write from the store"


async def test_a_save_starts_from_the_version_another_request_of_this_process_committed(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two requests of one session load version 1; the first appends and commits. The second
    replays its append on the version the first cached: one compare-and-set, no read of the
    store, and both appends kept."""
    (store, _), engine = two_processes
    key = await stored(store, engine, make_record("12", order_ids=[]))
    first, second = await load(store, engine, key), await load(store, engine, key)
    assert first is not None and second is not None and second.version == 1
    async with atomic(engine) as uow:
        await store.update(key, Changes([("append", "order_ids", 1)]), uow, current=first)

    calls: list[str] = []
    compare_and_set, read = store.compare_and_set, store.read

    async def counted_compare_and_set(*args: Any) -> bool:
        calls.append("compare-and-set")
        return await compare_and_set(*args)

    async def counted_read(*args: Any) -> SessionRecord | None:
        calls.append("read")
        return await read(*args)

    monkeypatch.setattr(store, "compare_and_set", counted_compare_and_set)
    monkeypatch.setattr(store, "read", counted_read)
    async with atomic(engine) as uow:
        saved = await store.update(key, Changes([("append", "order_ids", 2)]), uow, current=second)
    assert calls == ["compare-and-set"]
    assert saved is not None and saved.data == {"order_ids": [1, 2]} and saved.version == 3
    monkeypatch.undo()
    record = await load(store, engine, key)
    assert record is not None and record.data == {"order_ids": [1, 2]} and record.version == 3


async def test_writes_alternating_between_processes_are_each_seen_by_the_other(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
) -> None:
    """Each process caches its own writes; the other's newer version must still evict them."""
    stores, engine = two_processes
    key = await cached_in_reader(stores[0], stores[1], engine, make_record("10", n=0))
    for n in range(1, 9):
        writer, reader = stores[n % 2], stores[(n + 1) % 2]
        async with atomic(engine) as uow:
            assert await writer.update(key, Changes([("set", "n", n)]), uow) is not None

        async def sees_n(reader: WebSessionStore = reader, n: int = n) -> bool:
            record = await load(reader, engine, key)
            return record is not None and record.data == {"n": n}

        await eventually(sees_n)
        record = await load(writer, engine, key)
        assert record is not None and record.data == {"n": n}


async def test_a_write_rolled_back_after_it_was_written_is_not_cached_by_the_writer(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
) -> None:
    (writer, _), engine = two_processes
    key = await stored(writer, engine, make_record("11", a=1))
    await run_in_unit_of_work(
        engine, lambda uow: writer.update(key, Changes([("set", "a", 2)]), uow), commit=False
    )
    await asyncio.sleep(0.05)
    for _ in range(2):
        record = await load(writer, engine, key)
        assert record is not None and record.data == {"a": 1}


async def test_the_writer_stops_serving_a_session_it_deleted_at_once(
    two_processes: tuple[list[WebSessionStore], AsyncEngine],
) -> None:
    """No waiting for the message: the logout's own process answers 401 right away."""
    (writer, _), engine = two_processes
    key = await stored(writer, engine, make_record("12"))
    assert await load(writer, engine, key) is not None
    async with atomic(engine) as uow:
        await writer.delete(key, uow)
    assert await load(writer, engine, key) is None


async def test_the_trigger_says_which_version_a_change_made(
    postgres_engine: AsyncEngine, sessions_table: Table
) -> None:
    """The payloads the SQL store's feed reads: "<key> <version>", "<key> -", the bare key."""
    await with_table(postgres_engine, trigger=True)
    store = SqlStore(sessions_table, notify="trigger")
    url = postgres_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    import asyncpg  # type: ignore[import-untyped]

    listener = await asyncpg.connect(url)
    received: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(
        notify_channel(sessions_table), lambda _c, _p, _ch, payload: received.put_nowait(payload)
    )
    try:
        key = new_key()
        async with atomic(postgres_engine) as uow:
            await store.create(key, make_record("13"), uow)
            await store.update(key, Changes([("set", "a", 1)]), uow)
        assert await asyncio.wait_for(received.get(), 5) == f"{key} 2"
        async with postgres_engine.begin() as connection:  # by hand, the version left alone
            await connection.execute(
                text(f"UPDATE {sessions_table.name} SET expires_at = 0 WHERE key = :key"),
                {"key": key},
            )
        assert await asyncio.wait_for(received.get(), 5) == key
        async with atomic(postgres_engine) as uow:
            await store.delete(key, uow)
        assert await asyncio.wait_for(received.get(), 5) == f"{key} -"
        await run_in_unit_of_work(
            postgres_engine, lambda uow: store.create(key, make_record("13"), uow), commit=False
        )
        await asyncio.sleep(0.05)
        assert received.empty(), "an insert that rolled back said something"
    finally:
        await listener.close()
