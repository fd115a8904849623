"""A process-local read cache of session records, kept honest by an invalidation feed.

Reading a web session is the hottest path of an app: every authenticated request does it, and
almost every time the record has not changed. The cache answers those reads from memory, and
each store feeds it the keys that changed anywhere, in any process:

- the SQL store on PostgreSQL: a trigger NOTIFYs the key of every updated or deleted row
  (:func:`postgres_notify_trigger`); NOTIFY is transactional, so the message goes out when the
  writing transaction commits, never for one that rolled back;
- the Redis store: the write and a PUBLISH of the key run in one Lua script.

Rules that make it safe:

- The cache serves only while its feed is connected and subscribed. When the feed drops, the
  cache is emptied and every read goes to the store until the feed is back (messages sent
  meanwhile are lost, so nothing cached before can be trusted).
- A read that raced with an invalidation is not cached: every invalidation bumps an epoch, and a
  record read from the store is only put in the cache if the epoch did not move meanwhile.
- The process that wrote evicts its own entries the moment its COMMIT returns, before the
  response is sent, so its next request never sees the old record; other processes evict when
  the message arrives (the revocation window: a few milliseconds, measured by ``make bench``).
- Entries are re-read after ``max_age`` seconds whatever the feed says, a bound on the damage
  of a message lost without the connection dropping.
- The cache holds each record frozen (pickled), never a live object: every read thaws a copy
  of its own, so no request can change what another sees. Thawing is about a quarter of what
  parsing the JSON cost (bench/README.md). The pickles are made here, from records this process
  parsed, and never leave it: nothing from outside is ever unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from .record import SessionRecord

if TYPE_CHECKING:
    from ..unit_of_work import UnitOfWork

logger = logging.getLogger("fastapi_atomic.websession")


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
        #: key -> (the record, pickled; when it was filled)
        self._entries: dict[str, tuple[bytes, float]] = {}
        #: moves on every invalidation; a read that saw it move is not cached
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
        if entry is None:
            self.misses += 1
            return None
        frozen, filled_at = entry
        if self._clock() - filled_at > self.max_age:
            del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return frozen

    def fill(self, key: str, frozen: bytes, epoch: int) -> None:
        """Cache what a read that began at ``epoch`` found, unless anything changed since."""
        if not self.live or epoch != self.epoch:
            return
        if len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest fill
        self._entries[key] = (frozen, self._clock())

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
            self.fill(key, pickle.dumps(vars(record), pickle.HIGHEST_PROTOCOL), epoch)
        return record

    def evict_on_commit(self, uow: UnitOfWork, key: str) -> None:
        """``key`` is being written by ``uow``: evict it now and again when COMMIT returns."""
        self.invalidate(key)
        uow.right_after_commit(lambda: self.invalidate(key))

    def invalidate(self, key: str) -> None:
        self.epoch += 1
        self._entries.pop(key, None)

    def go_dark(self) -> None:
        """The feed is gone: trust nothing cached, cache nothing until it is back."""
        self.live = False
        self.epoch += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


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
                    async for key in messages:
                        self.cache.invalidate(key)
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

            def on_notify(_connection: Any, _pid: int, _channel: str, key: str) -> None:
                queue.put_nowait(key)

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
                    key = await queue.get()
            except TimeoutError:
                # A half-open connection delivers nothing and says nothing: ask.
                async with asyncio.timeout(self.heartbeat):
                    await raw.fetchval("SELECT 1")
                continue
            if key is None:
                raise ConnectionError("the LISTEN connection was closed")
            yield key


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

    Run it in a migration after creating the table. Every UPDATE or DELETE of a row, by the
    store or by anything else (a purge, a hand-written query), NOTIFYs its key on commit.
    """
    name, channel = trigger_name(table), notify_channel(table)
    return [
        f"""
        CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{channel}', OLD.key);
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
