"""RecordCache's rules, with a fake clock: what it may serve and what it must refuse."""

from __future__ import annotations

import pytest

from fastapi_atomic.websession import RecordCache
from fastapi_atomic.websession.record import SessionRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> RecordCache:
    cache = RecordCache(max_entries=3, max_age=60, clock=clock)
    cache.live = True
    return cache


def test_serves_what_was_filled(cache: RecordCache) -> None:
    cache.fill("k", b"{}", cache.epoch)
    assert cache.get("k") == b"{}"
    assert (cache.hits, cache.misses) == (1, 0)


def test_a_read_that_raced_with_an_invalidation_is_not_cached(cache: RecordCache) -> None:
    epoch = cache.epoch  # the read begins
    cache.invalidate("other-key")  # a write commits somewhere meanwhile
    cache.fill("k", b"old", epoch)  # the read ends with what may be the old record
    assert cache.get("k") is None


def test_an_invalidated_key_is_gone(cache: RecordCache) -> None:
    cache.fill("k", b"v1", cache.epoch)
    cache.invalidate("k")
    assert cache.get("k") is None


def test_nothing_is_cached_while_the_feed_is_down(cache: RecordCache) -> None:
    cache.fill("k", b"v", cache.epoch)
    cache.go_dark()
    assert cache.get("k") is None and len(cache) == 0
    cache.fill("k", b"v", cache.epoch)
    assert len(cache) == 0


def test_entries_are_reread_after_max_age(cache: RecordCache, clock: Clock) -> None:
    cache.fill("k", b"v", cache.epoch)
    clock.now += 61
    assert cache.get("k") is None
    assert len(cache) == 0


def test_the_oldest_fill_makes_room(cache: RecordCache) -> None:
    for key in "abcd":
        cache.fill(key, key.encode(), cache.epoch)
    assert len(cache) == 3
    assert cache.get("a") is None and cache.get("d") == b"d"


RECORD = SessionRecord(
    data={"user": {"id": 1, "roles": ["customer"]}, "order_ids": [7]},
    created_at=1000.0,
    last_seen_at=1000.0,
    csrf_token="token",
    public_id="public",
    user_id="1",
)


class Store:
    """Reads RECORD, counting."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self) -> str:
        self.reads += 1
        return RECORD.to_json()


async def test_read_record_reads_once_then_serves_from_memory(cache: RecordCache) -> None:
    store = Store()
    assert await cache.read_record("k", store.read) == RECORD
    assert await cache.read_record("k", store.read) == RECORD
    assert store.reads == 1 and (cache.hits, cache.misses) == (1, 1)


async def test_each_read_gets_a_record_of_its_own(cache: RecordCache) -> None:
    """A request that changes a value in place (a list it appends to) changes its own copy."""
    read = Store().read
    first = await cache.read_record("k", read)
    assert first is not None
    first.data["order_ids"].append(8)
    first.data["user"]["roles"].append("admin")
    second = await cache.read_record("k", read)
    third = await cache.read_record("k", read)
    assert second == third == RECORD
    assert second is not None and third is not None
    assert second.data["order_ids"] is not third.data["order_ids"]


async def test_read_record_never_caches_a_missing_record(cache: RecordCache) -> None:
    async def read() -> None:
        return None

    assert await cache.read_record("k", read) is None
    assert len(cache) == 0


async def test_read_record_reads_the_store_while_the_feed_is_down(cache: RecordCache) -> None:
    cache.go_dark()
    store = Store()
    assert await cache.read_record("k", store.read) == RECORD
    assert await cache.read_record("k", store.read) == RECORD
    assert store.reads == 2 and len(cache) == 0
