"""The invalidation feeds of :class:`.cache.RecordCache`: LISTEN on PostgreSQL, SUBSCRIBE on Redis.

Each runs in the background, reconnecting, and tells its cache what changed; while it is down
the cache is dark (serves nothing). See :mod:`.cache` for the rules the messages follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from .cache import RecordCache

logger = logging.getLogger("fastapi_atomic.websession")


class TriggerMissing(Exception):
    """The table has no change trigger: nothing would tell the cache of a change."""


class InvalidationFeed:
    """Runs a subscription in the background, reconnecting, and evicts what it is told."""

    heartbeat = 5.0
    reconnect_delay = 1.0
    #: seconds between looks for a trigger found missing (a migration not run yet)
    missing_trigger_delay = 60.0

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
            except TriggerMissing as exc:
                logger.warning("web-session cache off: %s", exc)
                self.cache.go_dark()
                await asyncio.sleep(self.missing_trigger_delay)
                continue
            except Exception as exc:
                logger.warning("web-session cache feed lost (%s); reading the store meanwhile", exc)
            finally:
                self.cache.go_dark()
            await asyncio.sleep(self.reconnect_delay)

    def _subscribe(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[str]]:
        raise NotImplementedError


class PostgresFeed(InvalidationFeed):
    """LISTEN on its own asyncpg connection (outside the app's pool) for the trigger's NOTIFYs.

    It goes live only once it has found the trigger, checked on every (re)connection: the
    database may not answer when the app starts, and a cache without the trigger's messages
    would serve sessions that changed.
    """

    def __init__(self, cache: RecordCache, engine: AsyncEngine, channel: str, trigger: str) -> None:
        super().__init__(cache)
        self.channel = channel
        self.trigger = trigger
        url = engine.url.set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)

    @contextlib.asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[AsyncIterator[str]]:
        import asyncpg  # type: ignore[import-untyped]  # PostgreSQL only, where it is the driver

        raw = await asyncpg.connect(self._dsn, timeout=self.heartbeat)
        try:
            query = "SELECT count(*) FROM pg_trigger WHERE tgname = $1"
            if not await raw.fetchval(query, self.trigger):
                raise TriggerMissing(
                    f"trigger {self.trigger} is missing: create it in a migration "
                    "(postgres_notify_trigger); the cache stays off until it is there"
                )
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
    """SUBSCRIBE to the channel the Redis store's scripts PUBLISH changed keys on.

    A quiet subscription says nothing of a hung server (one that accepts and answers nothing,
    or a network gone without a reset): the feed PINGs on it when nothing came for a while, and
    counts it lost when Redis was not heard from for ``timeout`` seconds. That bounds how long
    the cache serves from memory while nothing can reach it (a logout in another process).
    """

    #: the payload of the feed's PINGs (any answer counts as a sign of life)
    PING = "fastapi-atomic-feed"

    def __init__(
        self, cache: RecordCache, redis: Any, channel: str, *, timeout: float = 3.0
    ) -> None:
        super().__init__(cache)
        self.channel = channel
        self.timeout = timeout
        self._redis = redis

    @contextlib.asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[AsyncIterator[str]]:
        pubsub = self._redis.pubsub()
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await pubsub.subscribe(self.channel)
                    while (message := await pubsub.get_message(timeout=self.timeout)) is None:
                        pass
            except TimeoutError:
                raise ConnectionError(
                    f"Redis did not confirm the SUBSCRIBE within {self.timeout:g} s"
                ) from None
            if message["type"] != "subscribe":
                raise ConnectionError(f"unexpected first message {message['type']!r}")
            yield self._messages(pubsub)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _messages(self, pubsub: Any) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        # PINGed after a third of the timeout without a word, again after two thirds: one lost
        # answer does not end a healthy subscription.
        quiet = self.timeout / 3
        heard = pinged = loop.time()
        while True:
            # The deadline also bounds what redis-py does inside (a reconnection, by a client
            # whose retry policy has one, to a server that hangs in the handshake).
            try:
                async with asyncio.timeout_at(heard + self.timeout):
                    if loop.time() - max(heard, pinged) >= quiet:
                        await pubsub.ping(self.PING)
                        pinged = loop.time()
                    message = await pubsub.get_message(timeout=quiet)
            except TimeoutError:
                raise ConnectionError(f"Redis did not answer for {self.timeout:g} s") from None
            if message is None:
                continue
            heard = loop.time()
            if message["type"] == "message":
                data = message["data"]
                yield data.decode() if isinstance(data, bytes) else str(data)
            elif message["type"] in ("subscribe", "unsubscribe"):
                # redis-py subscribed again on a new connection by itself (a client that
                # retries on a ConnectionError): what was published in between is lost.
                raise ConnectionError("the subscription was renewed; changes may have been lost")
