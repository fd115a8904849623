"""The memory store against the shared contract (no database is touched)."""

from __future__ import annotations

import pytest

from fastapi_atomic.testing import (
    FakeUnitOfWork,
    WebSessionStoreContract,
    make_record,
    new_key,
)
from fastapi_atomic.websession import MemoryStore


class TestMemoryStore(WebSessionStoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()


async def test_what_a_request_loads_shares_nothing_with_the_store() -> None:
    # Records are copied shallowly elsewhere (values are replaced, never changed in place), so
    # the memory store isolates itself: a handler changing a list in place changes only its own.
    store, uow, key = MemoryStore(), FakeUnitOfWork(), new_key()
    await store.create(key, make_record("1", order_ids=[1]), uow)
    loaded = await store.load(key, uow)
    assert loaded is not None
    loaded.data["order_ids"].append(2)
    again = await store.load(key, uow)
    assert again is not None and again.data["order_ids"] == [1]


async def test_a_rollback_undoes_the_stores_writes() -> None:
    store, uow, key = MemoryStore(), FakeUnitOfWork(), new_key()
    await store.create(key, make_record("1"), uow)
    await uow.rollback()
    assert await store.load(key, FakeUnitOfWork()) is None
