"""RecordCache's rules, with a fake clock: what it may serve and what it must refuse."""

from __future__ import annotations

import pytest

from fastapi_atomic.websession import RecordCache


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
    cache.fill("k", "{}", cache.epoch)
    assert cache.get("k") == "{}"
    assert (cache.hits, cache.misses) == (1, 0)


def test_a_read_that_raced_with_an_invalidation_is_not_cached(cache: RecordCache) -> None:
    epoch = cache.epoch  # the read begins
    cache.invalidate("other-key")  # a write commits somewhere meanwhile
    cache.fill("k", "old", epoch)  # the read ends with what may be the old record
    assert cache.get("k") is None


def test_an_invalidated_key_is_gone(cache: RecordCache) -> None:
    cache.fill("k", "v1", cache.epoch)
    cache.invalidate("k")
    assert cache.get("k") is None


def test_nothing_is_cached_while_the_feed_is_down(cache: RecordCache) -> None:
    cache.fill("k", "v", cache.epoch)
    cache.go_dark()
    assert cache.get("k") is None and len(cache) == 0
    cache.fill("k", "v", cache.epoch)
    assert len(cache) == 0


def test_entries_are_reread_after_max_age(cache: RecordCache, clock: Clock) -> None:
    cache.fill("k", "v", cache.epoch)
    clock.now += 61
    assert cache.get("k") is None
    assert len(cache) == 0


def test_the_oldest_fill_makes_room(cache: RecordCache) -> None:
    for key in "abcd":
        cache.fill(key, key, cache.epoch)
    assert len(cache) == 3
    assert cache.get("a") is None and cache.get("d") == "d"


async def test_read_through_reads_once_then_serves_from_memory(cache: RecordCache) -> None:
    reads = 0

    async def read() -> str:
        nonlocal reads
        reads += 1
        return "record"

    assert await cache.read_through("k", read) == "record"
    assert await cache.read_through("k", read) == "record"
    assert reads == 1


async def test_read_through_never_caches_a_missing_record(cache: RecordCache) -> None:
    async def read() -> None:
        return None

    assert await cache.read_through("k", read) is None
    assert len(cache) == 0
