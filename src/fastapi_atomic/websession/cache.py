"""A process-local read cache of session records, kept honest by an invalidation feed.

Reading a web session is the hottest path of an app: every authenticated request does it, and
almost every time the record has not changed. The cache answers those reads from memory, and
each store feeds it the keys that changed anywhere, in any process:

- the SQL store on PostgreSQL: a trigger NOTIFYs every updated or deleted row
  (:func:`postgres_notify_trigger`); NOTIFY is transactional, so the message goes out when the
  writing transaction commits, never for one that rolled back;
- the Redis store: the write and its PUBLISH run in one Lua script.

Every message names the key and the version the change produced ("<key> <version>"), "<key> -"
for a deleted record, or the bare key for a change whose version says nothing (a hand-written
UPDATE that left it alone, a write undone after a failed COMMIT). Rules that make it safe:

- The cache serves only while its feed is connected and subscribed. When the feed drops, the
  cache is emptied and every read goes to the store until the feed is back (messages sent
  meanwhile are lost, so nothing cached before can be trusted).
- Versions only move forward (every write is a compare-and-set from the version before), so an
  entry is only ever replaced by a newer version. A message for version v evicts an entry
  older than v and leaves behind a tombstone that refuses any fill older than v: a read that
  began before the change and ends after the message can never put the old record back. A
  deleted record's tombstone refuses every fill. A bare-key message evicts and, because it says
  nothing about versions, refuses every fill that was in flight (the cache's epoch moves).
- The process that wrote puts what it committed in its cache the moment its COMMIT returns,
  before the response is sent: its next request reads the new record from memory, and the
  write's own message, arriving later for the same version, leaves it there. Other processes
  evict when the message arrives (the revocation window: a few milliseconds, measured by
  ``make bench``).
- Entries are re-read after ``max_age`` seconds whatever the feed says, a bound on the damage
  of a message lost without the connection dropping.
- The cache holds each record frozen (pickled), never a live object: every read thaws a copy
  of its own, so no request can change what another sees. Thawing is about a quarter of what
  parsing the JSON cost (bench/README.md). The pickles are made here, from records this process
  parsed or wrote, and never leave it: nothing from outside is ever unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from .record import SessionRecord

if TYPE_CHECKING:
    from ..unit_of_work import UnitOfWork

logger = logging.getLogger("fastapi_atomic.websession")


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
        #: True only while the invalidation feed is connected and subscribed
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
        self, key: str, read: Callable[[], Awaitable[str | bytes | None]]
    ) -> SessionRecord | None:
        """The record under ``key``: thawed from the cache, or parsed from what ``read`` finds
        (and frozen into the cache if it may be)."""
        if self.live:
            frozen = self.get(key)
            if frozen is not None:
                return SessionRecord(**pickle.loads(frozen))
        epoch = self.epoch
        text = await read()
        if text is None:
            return None
        record = SessionRecord.from_json(text)
        if self.live:
            self.fill(key, _freeze(record), record.version, epoch)
        return record

    def keep_on_commit(self, uow: UnitOfWork, key: str, record: SessionRecord) -> None:
        """``uow`` wrote ``record`` under ``key``: cache it once, and only if, it commits."""
        if not self.live:
            return
        epoch, frozen = self.epoch, _freeze(record)
        uow.right_after_commit(lambda: self.fill(key, frozen, record.version, epoch))

    def drop_on_commit(self, uow: UnitOfWork, key: str) -> None:
        """``uow`` deleted ``key``: stop serving it the moment the deletion commits."""
        uow.right_after_commit(lambda: self.invalidate(key, DELETED))

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


def _freeze(record: SessionRecord) -> bytes:
    return pickle.dumps(vars(record), pickle.HIGHEST_PROTOCOL)


def message(key: str, version: float | None) -> str:
    """What a store publishes for a change of ``key`` to ``version`` (see :class:`RecordCache`)."""
    if version is None:
        return key
    return f"{key} -" if version == DELETED else f"{key} {int(version)}"


class InvalidationFeed:
    """Runs a subscription in the background, reconnecting, and evicts what it is told."""

    heartbeat = 5.0
    reconnect_delay = 1.0

    def __init__(self, cache: RecordCache) -> None:
        self.cache = cache
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self, wait: float = 1.0) -> None:
        """Start listening; wait up to ``wait`` seconds for the first subscription.

        Never longer: an app whose Redis is down must still start (and answer 503 where it
        needs the session); its cache stays dark until the feed connects.
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{type(self).__name__}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._connected.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=2.0)
            if not done:
                logger.warning("web-session cache feed did not stop within 2 s; left behind")
            self._task = None
        self.cache.go_dark()

    async def _run(self) -> None:
        while True:
            try:
                async with self._subscribe() as messages:
                    self.cache.go_dark()  # anything cached before this subscription is suspect
                    self.cache.live = True
                    self._connected.set()
                    async for change in messages:
                        self.cache.on_message(change)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("web-session cache feed lost (%s); reading the store meanwhile", exc)
            finally:
                self.cache.go_dark()
            await asyncio.sleep(self.reconnect_delay)

    def _subscribe(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[str]]:
        raise NotImplementedError


class PostgresFeed(InvalidationFeed):
    """LISTEN on its own asyncpg connection (outside the app's pool) for the trigger's NOTIFYs."""

    def __init__(self, cache: RecordCache, engine: AsyncEngine, channel: str) -> None:
        super().__init__(cache)
        self.channel = channel
        url = engine.url.set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)

    @contextlib.asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[AsyncIterator[str]]:
        import asyncpg  # type: ignore[import-untyped]  # PostgreSQL only, where it is the driver

        raw = await asyncpg.connect(self._dsn, timeout=self.heartbeat)
        try:
            queue: asyncio.Queue[str | None] = asyncio.Queue()

            def on_notify(_connection: Any, _pid: int, _channel: str, change: str) -> None:
                queue.put_nowait(change)

            raw.add_termination_listener(lambda _connection: queue.put_nowait(None))
            await raw.add_listener(self.channel, on_notify)
            yield self._messages(raw, queue)
        finally:
            # No await here: a cancelled feed (app shut-down) must not wait on a connection
            # that may be in the middle of a heartbeat. Closing it ends the LISTEN.
            raw.terminate()

    async def _messages(self, raw: Any, queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can turn the task's own
            # cancellation (app shut-down) into a TimeoutError, and the feed would run on.
            try:
                async with asyncio.timeout(self.heartbeat):
                    change = await queue.get()
            except TimeoutError:
                # A half-open connection delivers nothing and says nothing: ask.
                async with asyncio.timeout(self.heartbeat):
                    await raw.fetchval("SELECT 1")
                continue
            if change is None:
                raise ConnectionError("the LISTEN connection was closed")
            yield change


class RedisFeed(InvalidationFeed):
    """SUBSCRIBE to the channel the Redis store's scripts PUBLISH changed keys on."""

    def __init__(self, cache: RecordCache, redis: Any, channel: str) -> None:
        super().__init__(cache)
        self.channel = channel
        self._redis = redis

    @contextlib.asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[AsyncIterator[str]]:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while (message := await pubsub.get_message(timeout=self.heartbeat)) is None:
                pass
            if message["type"] != "subscribe":
                raise ConnectionError(f"unexpected first message {message['type']!r}")
            yield self._messages(pubsub)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _messages(self, pubsub: Any) -> AsyncIterator[str]:
        idle_since = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                if time.monotonic() - idle_since > self.heartbeat:
                    await pubsub.ping()  # raises if the connection is gone
                    idle_since = time.monotonic()
                continue
            idle_since = time.monotonic()
            if message["type"] == "message":
                data = message["data"]
                yield data.decode() if isinstance(data, bytes) else str(data)


def notify_channel(table: Table) -> str:
    """The channel the SQL store's trigger NOTIFYs on and its feed LISTENs to."""
    return f"{table.name}_changed"


def trigger_name(table: Table) -> str:
    """The trigger's name, and its function's."""
    return f"{table.name}_notify_change"


def postgres_notify_trigger(table: Table) -> list[str]:
    """DDL for the trigger that feeds the SQL store's cache (PostgreSQL only).

    Run it in a migration after creating the table (running it again replaces an older
    version). Every UPDATE or DELETE of a row, by the store or by anything else (a purge, a
    hand-written query), NOTIFYs on commit: "<key> <new version>" for an update that moved the
    version forward, "<key> -" for a delete, the bare key for any other change.
    """
    name, channel = trigger_name(table), notify_channel(table)
    return [
        f"""
        CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('{channel}', OLD.key || ' -');
            ELSIF NEW.key = OLD.key AND NEW.version > OLD.version THEN
                PERFORM pg_notify('{channel}', NEW.key || ' ' || NEW.version);
            ELSE
                PERFORM pg_notify('{channel}', OLD.key);
                PERFORM pg_notify('{channel}', NEW.key);
            END IF;
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """,
        f"DROP TRIGGER IF EXISTS {name} ON {table.name}",
        f"""
        CREATE TRIGGER {name}
        AFTER UPDATE OR DELETE ON {table.name}
        FOR EACH ROW EXECUTE FUNCTION {name}()
        """,
    ]
