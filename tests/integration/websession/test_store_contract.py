"""Every store against the same contract, on real SQLite, PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import atomic
from fastapi_atomic.testing import WebSessionStoreContract, make_record, new_key
from fastapi_atomic.websession import RedisStore, SqlStore


class TestSqlStoreOnSqlite(WebSessionStoreContract):
    @pytest.fixture
    def store(self, sessions_table: Table) -> SqlStore:
        return SqlStore(sessions_table)

    @pytest.fixture
    def engine(self, sqlite_engine: AsyncEngine) -> AsyncEngine:
        return sqlite_engine


class TestCachedSqlStoreOnSqlite(WebSessionStoreContract):
    """Served from memory, fed by the change log (a second app on the file keeps it busy)."""

    @pytest.fixture
    def store(self, sqlite_apps: list[tuple[AsyncEngine, SqlStore]]) -> SqlStore:
        return sqlite_apps[0][1]

    @pytest.fixture
    def engine(self, sqlite_apps: list[tuple[AsyncEngine, SqlStore]]) -> AsyncEngine:
        return sqlite_apps[0][0]

    async def test_the_cache_is_live(self, store: SqlStore) -> None:
        assert store.cache is not None and store.cache.live


class TestSqlStoreOnPostgres(WebSessionStoreContract):
    @pytest.fixture
    def store(self, sessions_table: Table) -> SqlStore:
        return SqlStore(sessions_table)

    @pytest.fixture
    def engine(self, postgres_engine: AsyncEngine) -> AsyncEngine:
        return postgres_engine


class TestRedisStore(WebSessionStoreContract):
    @pytest.fixture
    async def store(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
        store = RedisStore(Redis.from_url(redis_url), prefix=redis_prefix)
        yield store
        keys = [key async for key in store.redis.scan_iter(f"{redis_prefix}*")]
        if keys:
            await store.redis.delete(*keys)
        await store.aclose()


async def test_redis_sessions_carry_a_ttl(
    redis_url: str, redis_prefix: str, sqlite_engine: AsyncEngine
) -> None:
    """Redis expires a session by itself, at the time the store computed."""
    store = RedisStore(Redis.from_url(redis_url), prefix=redis_prefix)
    store.configure(idle_timeout=30, absolute_timeout=100)
    key = new_key()
    async with atomic(sqlite_engine) as uow:
        await store.create(key, make_record("1"), uow)
    ttl = await store.redis.pttl(f"{redis_prefix}s:{key}")
    assert 25_000 < ttl <= 30_000
    await store.redis.delete(*[name async for name in store.redis.scan_iter(f"{redis_prefix}*")])
    await store.aclose()
