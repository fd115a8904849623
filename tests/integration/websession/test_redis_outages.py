"""The Redis store and its cache when Redis goes away: restarted, hung, or cut mid-command.

Only what a test made is touched: its own connections (found by a client name of its own and
killed by id), its own keys (a prefix of its own), and a proxy of its own between the store and
Redis, whose faults reach no other client.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import pytest
from fault_proxy import FaultProxy
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import atomic
from fastapi_atomic.exceptions import ServiceUnavailable
from fastapi_atomic.testing import make_record, new_key
from fastapi_atomic.websession import RedisStore
from fastapi_atomic.websession.cache import RecordCache
from fastapi_atomic.websession.feeds import RedisFeed
from fastapi_atomic.websession.record import Changes, SessionRecord
from fastapi_atomic.websession.stores.redis import RECEIPT_TTL_MS

#: the timeouts the tests configure, short so that the bounds they check are quick to see
TIMEOUT = 1.0
FEED_TIMEOUT = 1.0
#: what a bound may be exceeded by: scheduling, a reconnection, a slow CI machine (the work
#: around the wait takes milliseconds). Below TIMEOUT, so that a second wait (a timeout
#: retried) always exceeds TIMEOUT + MARGIN.
MARGIN = 0.9


@pytest.fixture
def client_name() -> str:
    """A name for this test's connections only, to find them among the server's clients."""
    return f"test-outage-{uuid.uuid4().hex}"


@pytest.fixture
def admin(own_redis: Redis) -> Redis:
    """The test's own client, outside any fault (it also deletes the test's keys at the end)."""
    return own_redis


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(redis_url)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as running:
        yield running
        # Held bytes flow, so that each link ends with its client (closed by then), rather than
        # be cancelled by the proxy's stop.
        running.pass_through()
        for _ in range(200):
            if not running.active:
                break
            await asyncio.sleep(0.01)


def through(proxy: FaultProxy, redis_url: str) -> str:
    """``redis_url`` with the proxy in place of the server."""
    return urlsplit(redis_url)._replace(netloc=proxy.url_netloc).geturl()


async def kill_connections(admin: Redis, name: str, kind: str = "normal") -> int:
    """CLIENT KILL, by id, the connections named ``name`` (of ``kind``); how many there were."""
    ids = [
        client["id"] for client in await admin.client_list(_type=kind) if client.get("name") == name
    ]
    for client_id in ids:
        await admin.client_kill_filter(_id=client_id)
    return len(ids)


async def load(store: RedisStore, engine: AsyncEngine, key: str) -> SessionRecord | None:
    async with atomic(engine) as uow:
        return await store.load(key, uow)


async def stored(store: RedisStore, engine: AsyncEngine, record: SessionRecord) -> str:
    key = new_key()
    async with atomic(engine) as uow:
        await store.create(key, record, uow)
    return key


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until ``check`` held; fails after ``within``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not so within {within} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


# --- a connection the server closed --------------------------------------------------------


async def test_a_pooled_connection_the_server_closed_is_retried_on_a_new_one(
    redis_url: str, redis_prefix: str, client_name: str, admin: Redis, sqlite_engine: AsyncEngine
) -> None:
    """As after a Redis restart: every kind of command still gets its answer, no 503."""
    store = RedisStore.from_url(redis_url, prefix=redis_prefix, client_name=client_name)
    store.configure(idle_timeout=600, absolute_timeout=3600)
    try:
        key = await stored(store, sqlite_engine, make_record("u1", n=0))

        assert await kill_connections(admin, client_name) >= 1
        loaded = await load(store, sqlite_engine, key)  # GET
        assert loaded is not None and loaded.data == {"n": 0}

        assert await kill_connections(admin, client_name) >= 1
        async with atomic(sqlite_engine) as uow:  # the compare-and-set script
            saved = await store.update(key, Changes([("increment", "n", 1)]), uow, current=loaded)
        assert saved is not None and saved.version == 2

        assert await kill_connections(admin, client_name) >= 1
        async with atomic(sqlite_engine) as uow:  # SMEMBERS, MGET
            assert [k for k, _ in await store.list_for_user("u1", uow)] == [key]

        assert await kill_connections(admin, client_name) >= 1
        async with atomic(sqlite_engine) as uow:  # GET, DEL in MULTI, SREM
            await store.delete(key, uow)
        assert await admin.exists(f"{redis_prefix}s:{key}") == 0

        assert await kill_connections(admin, client_name) >= 1
        await store.ping()
    finally:
        await store.aclose()


async def test_a_write_whose_answer_was_lost_is_not_written_twice(
    redis_url: str, redis_prefix: str, proxy: FaultProxy, admin: Redis, sqlite_engine: AsyncEngine
) -> None:
    """Redis ran the script, the connection broke before its answer: the retry must report
    the write done, not replay the save's changes on top of it (an increment twice)."""
    store = RedisStore.from_url(through(proxy, redis_url), prefix=redis_prefix)
    store.configure(idle_timeout=600, absolute_timeout=3600)
    try:
        await stored(store, sqlite_engine, make_record())  # the script is loaded from here on

        proxy.cut_on(b"EVALSHA", forward=True, times=1)
        record = make_record(n=0)
        key = await stored(store, sqlite_engine, record)  # no "fresh session id already in use"
        assert proxy.faults["cut_after_forwarding"] == 1

        proxy.cut_on(b"EVALSHA", forward=True, times=1)
        async with atomic(sqlite_engine) as uow:
            saved = await store.update(key, Changes([("increment", "n", 1)]), uow, current=record)
        assert proxy.faults["cut_after_forwarding"] == 2
        assert saved is not None and saved.data == {"n": 1} and saved.version == 2

        raw = await admin.get(f"{redis_prefix}s:{key}")
        assert raw is not None
        in_redis = SessionRecord.from_json(raw)
        assert (in_redis.data, in_redis.version) == ({"n": 1}, 2)
        receipts = [name async for name in admin.scan_iter(f"{redis_prefix}w:*")]
        assert len(receipts) == 3  # one per write, each gone after a while
        for receipt in receipts:
            assert 0 < await admin.pttl(receipt) <= RECEIPT_TTL_MS
    finally:
        await store.aclose()


# --- a hung Redis ----------------------------------------------------------------------------


async def test_a_hung_redis_is_a_503_after_the_timeout_not_a_hang(
    redis_url: str, redis_prefix: str, proxy: FaultProxy, sqlite_engine: AsyncEngine
) -> None:
    """It accepts the connection and answers nothing (not even the handshake)."""
    proxy.hang()
    store = RedisStore.from_url(through(proxy, redis_url), prefix=redis_prefix, timeout=TIMEOUT)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            await load(store, sqlite_engine, new_key())
        assert time.monotonic() - started < TIMEOUT + MARGIN
    finally:
        await store.aclose()


@pytest.mark.usefixtures("admin")  # for its clean-up
async def test_a_redis_that_hangs_under_a_pooled_connection_is_a_503_after_one_timeout(
    redis_url: str, redis_prefix: str, proxy: FaultProxy, sqlite_engine: AsyncEngine
) -> None:
    """A timeout is not retried: that would double the wait for the same 503."""
    store = RedisStore.from_url(through(proxy, redis_url), prefix=redis_prefix, timeout=TIMEOUT)
    store.configure(idle_timeout=600, absolute_timeout=3600)
    try:
        record = make_record()
        key = await stored(store, sqlite_engine, record)
        proxy.hang()
        for attempt in (
            lambda: load(store, sqlite_engine, key),
            lambda: atomic_update(store, sqlite_engine, key, record),
        ):
            started = time.monotonic()
            with pytest.raises(ServiceUnavailable):
                await attempt()
            assert time.monotonic() - started < TIMEOUT + MARGIN
    finally:
        await store.aclose()


async def atomic_update(
    store: RedisStore, engine: AsyncEngine, key: str, current: SessionRecord
) -> None:
    async with atomic(engine) as uow:
        await store.update(key, Changes([("set", "a", 1)]), uow, current=current)


# --- the cache's feed ------------------------------------------------------------------------


async def test_the_cache_stops_serving_from_memory_when_its_feed_hears_nothing(
    redis_url: str, redis_prefix: str, proxy: FaultProxy, admin: Redis, sqlite_engine: AsyncEngine
) -> None:
    """The feed's server hangs (through the proxy) while the store still reaches Redis: a
    logout's message cannot arrive, so within the feed's timeout the cache must stop answering
    from memory, and the deleted session be read from Redis as gone."""
    cache = RecordCache()
    store = RedisStore(
        Redis.from_url(redis_url, **RedisStore.client_options()), prefix=redis_prefix, cache=cache
    )
    feed_client = Redis.from_url(through(proxy, redis_url), **RedisStore.client_options())
    feed = RedisFeed(cache, feed_client, store.channel, timeout=FEED_TIMEOUT)
    try:
        await feed.start(wait=5.0)
        assert cache.live
        key = await stored(store, sqlite_engine, make_record("u2"))
        assert await load(store, sqlite_engine, key) is not None
        hits = cache.hits
        assert await load(store, sqlite_engine, key) is not None
        assert cache.hits == hits + 1  # served from memory

        proxy.hang()
        hung_at = time.monotonic()
        await admin.delete(f"{redis_prefix}s:{key}")  # a logout elsewhere, unheard of here
        assert await load(store, sqlite_engine, key) is not None  # from memory, for now

        async def gone() -> bool:
            return await load(store, sqlite_engine, key) is None

        await eventually(gone, within=FEED_TIMEOUT + MARGIN)
        assert time.monotonic() - hung_at < FEED_TIMEOUT + MARGIN
        assert not cache.live and len(cache) == 0

        proxy.pass_through()

        async def live() -> bool:
            return cache.live

        await eventually(live, within=5.0)
        assert await load(store, sqlite_engine, key) is None
        other = await stored(store, sqlite_engine, make_record("u3"))
        await load(store, sqlite_engine, other)
        hits = cache.hits
        assert await load(store, sqlite_engine, other) is not None
        assert cache.hits == hits + 1  # serving from memory again
    finally:
        await feed.aclose()
        await feed_client.aclose()
        await store.aclose()


async def test_a_feed_whose_client_reconnected_by_itself_goes_dark(
    redis_url: str, redis_prefix: str, client_name: str, admin: Redis, sqlite_engine: AsyncEngine
) -> None:
    """The store's client retries on a closed connection, and redis-py then subscribes again
    on a new one without a word: what was published in between is lost, so the cache must
    empty itself as for any dropped feed."""
    store = RedisStore.from_url(
        redis_url, prefix=redis_prefix, cache=True, feed_timeout=10.0, client_name=client_name
    )
    cache = store.cache
    assert cache is not None
    try:
        await store.start(sqlite_engine)
        assert cache.live
        key = await stored(store, sqlite_engine, make_record())
        await load(store, sqlite_engine, key)
        assert len(cache) == 1

        assert await kill_connections(admin, client_name, "pubsub") == 1

        async def dark() -> bool:
            return not cache.live

        await eventually(dark, within=2.0)  # at once, not after the feed's timeout
        assert len(cache) == 0

        async def live() -> bool:
            return cache.live

        await eventually(live, within=5.0)
    finally:
        await store.aclose()
