"""The memory store against the shared contract (no database is touched)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import create_engine
from fastapi_atomic.testing import WebSessionStoreContract, make_record, new_key, unit_of_work
from fastapi_atomic.websession import MemoryStore


class TestMemoryStore(WebSessionStoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()

    @pytest.fixture
    async def engine(self) -> AsyncIterator[AsyncEngine]:
        engine = create_engine("sqlite+aiosqlite://")
        yield engine
        await engine.dispose()


async def test_purge_removes_only_expired_sessions() -> None:
    store = MemoryStore()
    store.configure(idle_timeout=10, absolute_timeout=100)
    engine = create_engine("sqlite+aiosqlite://")
    old, fresh = make_record("1"), make_record("1")
    old.last_seen_at -= 11
    async with unit_of_work(engine) as uow:
        await store.create(k_old := new_key(), old, uow)
        await store.create(k_fresh := new_key(), fresh, uow)
    assert await store.purge_expired() == 1
    async with unit_of_work(engine) as uow:
        assert await store.load(k_old, uow) is None
        assert await store.load(k_fresh, uow) is not None
    await engine.dispose()


async def test_what_a_request_loads_shares_nothing_with_the_store() -> None:
    # Records are copied shallowly elsewhere (values are replaced, never changed in place), so
    # the memory store isolates itself: a handler changing a list in place changes only its own.
    store = MemoryStore()
    engine = create_engine("sqlite+aiosqlite://")
    key = new_key()
    async with unit_of_work(engine) as uow:
        await store.create(key, make_record("1", order_ids=[1]), uow)
        loaded = await store.load(key, uow)
        assert loaded is not None
        loaded.data["order_ids"].append(2)
        again = await store.load(key, uow)
    await engine.dispose()
    assert again is not None and again.data["order_ids"] == [1]
