"""A process-local read cache of session records, kept honest by an invalidation feed.

Reading a web session is the hottest path of an app: every authenticated request does it, and
almost every time the record has not changed. The cache answers those reads from memory, and
each store feeds it the keys that changed anywhere, in any process:

- the SQL store on PostgreSQL: a trigger NOTIFYs every updated or deleted row
  (:func:`postgres_notify_trigger`); NOTIFY is transactional, so the message goes out when the
  writing transaction commits, never for one that rolled back;
- the SQL store on a SQLite file: triggers write every updated or deleted row into a change log
  (:func:`sqlite_change_log`) in the writing transaction, and each process's feed reads the new
  rows when SQLite says another connection committed to the file;
- the Redis store: the write and its PUBLISH run in one Lua script.

Every message names the key and the version the change produced ("<key> <version>"), "<key> -"
for a deleted record, or the bare key for a change whose version says nothing (a hand-written
UPDATE that left it alone, a write undone after a failed COMMIT). Rules that make it safe:

- The cache serves only while its feed is connected and subscribed. When the feed drops, the
  cache is emptied and every read goes to the store until the feed is back (messages sent
  meanwhile are lost, so nothing cached before can be trusted). A feed that hears nothing from
  its server for its timeout (a hung server says nothing, not even that it is gone) counts as
  dropped: :attr:`RecordCache.live` is the one switch, and only the feed moves it.
- Versions only move forward (every write is a compare-and-set from the version before), so an
  entry is only ever replaced by a newer version. A message for version v evicts an entry
  older than v and leaves behind a tombstone that refuses any fill older than v: a read that
  began before the change and ends after the message can never put the old record back. A
  deleted record's tombstone refuses every fill. A bare-key message evicts and, because it says
  nothing about versions, refuses every fill that was in flight (the cache's epoch moves).
- The process that wrote puts what it committed in its cache the moment its COMMIT returns,
  before the response is sent: its next request reads the new record from memory, and the
  write's own message, arriving later for the same version, leaves it there. Other processes
  evict when the message arrives (the revocation window: the delivery time of one message,
  which ``make bench`` measures).
- Entries are re-read after ``max_age`` seconds whatever the feed says, a bound on the damage
  of a message lost without the connection dropping.
- The cache holds each record frozen (pickled), never a live object: every read thaws a copy
  of its own, so no request can change what another sees. Thawing a pickle is cheaper than
  parsing the JSON again. The pickles are made here, from records this process parsed or
  wrote, and never leave it: nothing from outside is ever unpickled.

The feeds are in :mod:`.feeds`; the SQL store's triggers in :mod:`.stores.sql_trigger`.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

from ..unit_of_work import SqlAlchemyUnitOfWork, UnitOfWork
from .record import SessionRecord

if TYPE_CHECKING:
    from .metrics import StoreCounters

#: the version of a deleted record: newer than any, so its tombstone refuses every fill
DELETED = float("inf")


class _Entry(NamedTuple):
    #: the record, pickled; None for a tombstone (a version known to exist, not held here)
    frozen: bytes | None
    version: float
    #: when it was filled (or, for a tombstone, last changed)
    at: float


class RecordCache:
    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        max_age: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        #: moves whenever the cache forgets what it knew of a key's version (a bare-key message,
        #: an entry dropped for room, the feed going down); a fill begun before is refused
        self.epoch = 0
        #: True only while the invalidation feed is subscribed and hearing from its server
        self.live = False
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_option(cls, cache: bool | RecordCache) -> RecordCache | None:
        """What a store's ``cache=`` argument means: a new cache, the one given, or none."""
        if isinstance(cache, RecordCache):
            return cache
        return cls() if cache else None

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry.frozen is None:
            self.misses += 1
            return None
        if self._clock() - entry.at > self.max_age:
            # Re-read it, but remember its version: an older record must not come back.
            self._entries[key] = _Entry(None, entry.version, entry.at)
            self.misses += 1
            return None
        self.hits += 1
        return entry.frozen

    def fill(self, key: str, frozen: bytes, version: int, epoch: int) -> None:
        """Cache version ``version`` of ``key``, as read (or written) since ``epoch``, unless the
        cache knows of a newer one, or forgot what it knew meanwhile."""
        if not self.live or epoch != self.epoch:
            return
        entry = self._entries.get(key)
        if entry is not None:
            newer = version > entry.version or (entry.frozen is None and version == entry.version)
            if newer:
                self._entries[key] = _Entry(frozen, version, self._clock())
            return
        if len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest: its version is forgotten
            self.epoch += 1
        self._entries[key] = _Entry(frozen, version, self._clock())

    async def read_record(
        self,
        key: str,
        read: Callable[[], Awaitable[SessionRecord | None]],
        counters: StoreCounters | None = None,
    ) -> SessionRecord | None:
        """The record under ``key``: thawed from the cache, or what ``read`` finds (frozen into
        the cache if it may be). A load ``read`` answers is a miss, in ``counters`` too, the
        cache live or not: a dark cache answers nothing."""
        if self.live:
            frozen = self.get(key)
            if frozen is not None:
                if counters is not None:
                    counters.hits.inc()
                return _thaw(frozen)
        if counters is not None:
            counters.misses.inc()
        epoch = self.epoch
        record = await read()
        if record is not None and self.live:
            self.fill(key, _freeze(record), record.version, epoch)
        return record

    def newer(self, key: str, version: int) -> SessionRecord | None:
        """The record cached under ``key`` if it is newer than ``version``, else None.

        A save starts from it: a request of the same session that committed since this one
        loaded its record most likely ran in this process, and put what it wrote here. Starting
        from the loaded record instead would fail the compare-and-set, then read the store.
        Nothing depends on it being current: the compare-and-set still checks the version."""
        entry = self._entries.get(key) if self.live else None
        if entry is None or entry.frozen is None or entry.version <= version:
            return None
        return _thaw(entry.frozen)

    def keep_on_commit(self, uow: UnitOfWork, key: str, record: SessionRecord) -> None:
        """``uow`` wrote ``record`` under ``key``: cache it once, and only if, it commits."""
        if not self.live:
            return
        epoch, frozen = self.epoch, _freeze(record)
        _right_after_commit(uow, lambda: self.fill(key, frozen, record.version, epoch))

    def drop_on_commit(self, uow: UnitOfWork, key: str) -> None:
        """``uow`` deleted ``key``: stop serving it the moment the deletion commits."""
        _right_after_commit(uow, lambda: self.invalidate(key, DELETED))

    def invalidate(self, key: str, version: float | None = None) -> None:
        """``key`` changed to ``version`` (:data:`DELETED`; None: to a version nobody knows)."""
        if version is None:
            self.epoch += 1
            self._entries.pop(key, None)
            return
        entry = self._entries.pop(key, None)
        if entry is not None and entry.version >= version:
            self._entries[key] = entry  # already this version or a newer one
            return
        self._entries[key] = _Entry(None, version, self._clock())

    def on_message(self, message: str) -> None:
        """Apply one message of the feed: "<key> <version>", "<key> -" or "<key>"."""
        key, _, version = message.partition(" ")
        if version == "-":
            self.invalidate(key, DELETED)
        elif version.isdigit():
            self.invalidate(key, int(version))
        else:
            self.invalidate(key)

    def go_dark(self) -> None:
        """The feed is gone: trust nothing cached, cache nothing until it is back."""
        self.live = False
        self.epoch += 1
        self._entries.clear()

    def __len__(self) -> int:
        """How many records are held (tombstones are not records)."""
        return sum(1 for entry in self._entries.values() if entry.frozen is not None)


def _right_after_commit(uow: UnitOfWork, hook: Callable[[], None]) -> None:
    if isinstance(uow, SqlAlchemyUnitOfWork):
        uow._right_after_commit(hook)
    else:  # a fake unit of work: its on_commit hooks are the only ones it runs
        uow.on_commit(hook)


def _freeze(record: SessionRecord) -> bytes:
    return pickle.dumps(vars(record), pickle.HIGHEST_PROTOCOL)


def _thaw(frozen: bytes) -> SessionRecord:
    """A record of its own, for one request: nobody else holds its values."""
    return SessionRecord(**pickle.loads(frozen))


def message(key: str, version: float | None) -> str:
    """What a store publishes for a change of ``key`` to ``version`` (see :class:`RecordCache`)."""
    if version is None:
        return key
    return f"{key} -" if version == DELETED else f"{key} {int(version)}"
