"""RecordCache's rules, with a fake clock: what it may serve and what it must refuse."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

from fastapi_atomic.testing import FakeUnitOfWork
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
    cache.fill("k", b"{}", 1, cache.epoch)
    assert cache.get("k") == b"{}"
    assert (cache.hits, cache.misses) == (1, 0)


def test_a_read_that_raced_with_a_change_is_not_cached(cache: RecordCache) -> None:
    epoch = cache.epoch  # a read of "k" begins
    cache.on_message("k 2")  # version 2 commits somewhere meanwhile
    cache.fill("k", b"v1", 1, epoch)  # the read ends with the version before it
    assert cache.get("k") is None
    cache.fill("k", b"v2", 2, cache.epoch)  # reading again finds version 2
    assert cache.get("k") == b"v2"


def test_a_change_of_another_key_does_not_stop_a_fill(cache: RecordCache) -> None:
    epoch = cache.epoch
    cache.on_message("other-key 5")
    cache.fill("k", b"v1", 1, epoch)
    assert cache.get("k") == b"v1"


def test_a_message_without_a_version_refuses_every_fill_in_flight(cache: RecordCache) -> None:
    epoch = cache.epoch
    cache.on_message("other-key")  # a hand-written UPDATE, an undo: versions say nothing
    cache.fill("k", b"v1", 1, epoch)
    assert cache.get("k") is None


def test_a_newer_version_evicts_an_older_entry(cache: RecordCache) -> None:
    cache.fill("k", b"v1", 1, cache.epoch)
    cache.on_message("k 2")
    assert cache.get("k") is None


def test_the_writers_own_message_leaves_what_it_cached(cache: RecordCache) -> None:
    """The process that wrote version 3 cached it at COMMIT; the NOTIFY of version 3 follows."""
    cache.fill("k", b"v3", 3, cache.epoch)
    cache.on_message("k 2")  # late, and older
    cache.on_message("k 3")
    assert cache.get("k") == b"v3"


def test_an_entry_is_only_ever_replaced_by_a_newer_version(cache: RecordCache) -> None:
    cache.fill("k", b"v3", 3, cache.epoch)
    cache.fill("k", b"v2", 2, cache.epoch)  # a slow read of the version before
    cache.fill("k", b"other v3", 3, cache.epoch)
    assert cache.get("k") == b"v3"
    cache.fill("k", b"v4", 4, cache.epoch)
    assert cache.get("k") == b"v4"


def test_a_deleted_key_is_never_cached_again(cache: RecordCache) -> None:
    epoch = cache.epoch
    cache.fill("k", b"v1", 1, epoch)
    cache.on_message("k -")
    assert cache.get("k") is None
    cache.fill("k", b"v1", 1, epoch)  # a read that began before the logout
    cache.fill("k", b"v9", 9, cache.epoch)
    assert cache.get("k") is None and len(cache) == 0


def test_a_bare_key_evicts(cache: RecordCache) -> None:
    cache.fill("k", b"v1", 1, cache.epoch)
    cache.on_message("k")
    assert cache.get("k") is None
    cache.fill("k", b"v1", 1, cache.epoch)  # what the store holds now, read after the message
    assert cache.get("k") == b"v1"


@pytest.mark.parametrize("garbage", ["k x", "k 1.5", "k  3", "k -1"])
def test_a_message_it_cannot_read_evicts_like_a_bare_key(cache: RecordCache, garbage: str) -> None:
    epoch = cache.epoch
    cache.fill("k", b"v9", 9, epoch)
    cache.on_message(garbage)
    assert cache.get("k") is None and cache.epoch != epoch


def test_nothing_is_cached_while_the_feed_is_down(cache: RecordCache) -> None:
    cache.fill("k", b"v", 1, cache.epoch)
    cache.go_dark()
    assert cache.get("k") is None and len(cache) == 0
    cache.fill("k", b"v", 1, cache.epoch)
    assert len(cache) == 0


def test_entries_are_reread_after_max_age(cache: RecordCache, clock: Clock) -> None:
    epoch = cache.epoch
    cache.fill("k", b"v2", 2, epoch)
    clock.now += 61
    assert cache.get("k") is None
    assert len(cache) == 0
    cache.fill("k", b"v1", 1, epoch)  # an older read, finishing late, does not come back
    assert cache.get("k") is None
    cache.fill("k", b"v2", 2, cache.epoch)  # the re-read
    assert cache.get("k") == b"v2"


def test_the_oldest_fill_makes_room(cache: RecordCache) -> None:
    for key in "abcd":
        cache.fill(key, key.encode(), 1, cache.epoch)
    assert len(cache) == 3
    assert cache.get("a") is None and cache.get("d") == b"d"


def test_making_room_refuses_fills_in_flight(cache: RecordCache) -> None:
    """A dropped entry's version is forgotten: a read that began before could be older."""
    epoch = cache.epoch
    for key in "abcd":
        cache.fill(key, key.encode(), 1, cache.epoch)
    cache.fill("e", b"e", 1, epoch)
    assert cache.get("e") is None


async def test_what_a_request_wrote_is_cached_once_it_commits(cache: RecordCache) -> None:
    uow = FakeUnitOfWork()
    cache.keep_on_commit(uow, "k", replace(RECORD, version=4))
    assert cache.get("k") is None  # not before the COMMIT: it might roll back
    await uow.commit()
    frozen = cache.get("k")
    assert frozen is not None
    assert SessionRecord(**pickle.loads(frozen)) == replace(RECORD, version=4)


async def test_a_write_overtaken_before_its_commit_returned_is_not_cached(
    cache: RecordCache,
) -> None:
    uow = FakeUnitOfWork()
    cache.keep_on_commit(uow, "k", replace(RECORD, version=4))
    cache.on_message("k 5")  # another process wrote version 5 right after ours committed
    await uow.commit()
    assert cache.get("k") is None


def test_a_write_that_never_commits_is_never_cached(cache: RecordCache) -> None:
    cache.keep_on_commit(FakeUnitOfWork(), "k", RECORD)
    assert cache.get("k") is None and len(cache) == 0


async def test_a_deletion_stops_the_cache_serving_once_it_commits(cache: RecordCache) -> None:
    cache.fill("k", b"v1", 1, cache.epoch)
    uow = FakeUnitOfWork()
    cache.drop_on_commit(uow, "k")
    assert cache.get("k") == b"v1"  # still the committed truth until the COMMIT
    await uow.commit()
    assert cache.get("k") is None
    cache.fill("k", b"v1", 1, cache.epoch)
    assert cache.get("k") is None


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

    async def read(self) -> SessionRecord:
        self.reads += 1
        return SessionRecord.from_json(RECORD.to_json())


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


async def test_newer_gives_a_save_the_version_this_process_committed_since(
    cache: RecordCache,
) -> None:
    uow = FakeUnitOfWork()
    cache.keep_on_commit(uow, "k", replace(RECORD, version=4))
    assert cache.newer("k", 3) is None  # not before the COMMIT
    await uow.commit()
    newer, again = cache.newer("k", 3), cache.newer("k", 3)
    assert newer == again == replace(RECORD, version=4)
    assert newer is not None and again is not None and newer.data is not again.data  # own copies
    assert cache.newer("k", 4) is None  # what the request loaded is as new
    assert cache.newer("k", 5) is None  # newer than what is cached
    assert cache.newer("other", 0) is None


def test_newer_never_gives_a_deleted_record_or_one_from_a_dark_cache(cache: RecordCache) -> None:
    cache.fill("k", pickle.dumps(vars(replace(RECORD, version=4))), 4, cache.epoch)
    cache.on_message("k -")
    assert cache.newer("k", 3) is None
    cache.fill("j", pickle.dumps(vars(replace(RECORD, version=4))), 4, cache.epoch)
    assert cache.newer("j", 3) is not None
    cache.go_dark()
    assert cache.newer("j", 3) is None
