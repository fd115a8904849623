"""The invalidation feeds of :class:`.cache.RecordCache`: LISTEN on PostgreSQL, a change log
watched on SQLite, SUBSCRIBE on Redis.

Each runs in the background, reconnecting, and tells its cache what changed; while it is down
the cache is dark (serves nothing). See :mod:`.cache` for the rules the messages follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ..sqlite import is_busy
from .cache import DELETED, RecordCache, message

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
        #: set once the feed subscribed, or found the trigger missing: nothing to wait for
        self._settled = asyncio.Event()

    async def start(self, wait: float = 1.0) -> None:
        """Start listening; wait up to ``wait`` seconds for the first subscription (or for the
        news that the trigger is missing: then there is nothing to wait for).

        Never longer: an app whose Redis is down must still start (and answer 503 where it
        needs the session); its cache stays dark until the feed connects.
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{type(self).__name__}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._settled.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            # Twice: a cancellation that lands as a timeout inside the task expires is taken
            # for that timeout (asyncio.timeout on Python 3.11), and the task goes on.
            for _ in range(2):
                self._task.cancel()
                done, _ = await asyncio.wait({self._task}, timeout=1.0)
                if done:
                    break
            else:
                logger.warning("web-session cache feed did not stop within 2 s; left behind")
            self._task = None
        self.cache.go_dark()

    async def _run(self) -> None:
        while True:
            try:
                async with self._subscribe() as messages:
                    self._resync()  # anything cached before this subscription is suspect
                    self._settled.set()
                    async for change in messages:
                        self.cache.on_message(change)
            except asyncio.CancelledError:
                raise
            except TriggerMissing as exc:
                logger.warning("web-session cache off: %s", exc)
                self.cache.go_dark()
                self._settled.set()
                await asyncio.sleep(self.missing_trigger_delay)
                continue
            except Exception as exc:
                logger.warning("web-session cache feed lost (%s); reading the store meanwhile", exc)
            finally:
                self.cache.go_dark()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # asked to stop while a timeout of ours expired: its error hid the request
                raise asyncio.CancelledError
            await asyncio.sleep(self.reconnect_delay)

    def _resync(self) -> None:
        """Every change from now on will be heard: empty the cache and serve again."""
        self.cache.go_dark()
        self.cache.live = True

    def _subscribe(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[str]]:
        raise NotImplementedError


def asyncpg_connect_arguments(
    engine: AsyncEngine, url: str | URL | None, timeout: float
) -> tuple[list[Any], dict[str, Any]]:
    """What ``asyncpg.connect`` takes for ``url`` (default: the engine's), read by the
    engine's dialect: several hosts and ``target_session_attrs`` included, which a URL
    rendered back to a DSN would lose."""
    arguments, options = engine.dialect.create_connect_args(
        make_url(url) if url is not None else engine.url
    )
    connect_options = dict(options)
    for adapter_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        connect_options.pop(adapter_only, None)
    connect_options.setdefault("timeout", timeout)
    return list(arguments), connect_options


class PostgresFeed(InvalidationFeed):
    """LISTEN on its own asyncpg connection (outside the app's pool) for the NOTIFYs of
    :class:`PostgresPublisher` or of the trigger.

    With a ``trigger`` named, it goes live only once it has found the trigger, checked on
    every (re)connection: the database may not answer when the app starts, and a cache
    without the trigger's messages would serve sessions that changed.
    """

    def __init__(
        self,
        cache: RecordCache,
        engine: AsyncEngine,
        channel: str,
        trigger: str | None,
        *,
        url: str | URL | None = None,
    ) -> None:
        super().__init__(cache)
        self.channel = channel
        self.trigger = trigger
        self._connect_arguments = asyncpg_connect_arguments(engine, url, self.heartbeat)

    @contextlib.asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[AsyncIterator[str]]:
        import asyncpg  # type: ignore[import-untyped]  # PostgreSQL only, where it is the driver

        arguments, options = self._connect_arguments
        raw = await asyncpg.connect(*arguments, **options)
        try:
            query = "SELECT count(*) FROM pg_trigger WHERE tgname = $1"
            if self.trigger is not None and not await raw.fetchval(query, self.trigger):
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


class PostgresPublisher:
    """Sends the SQL store's change messages on PostgreSQL, in transactions of its own, on a
    connection of its own (outside the app's pool, past any pooler).

    A NOTIFY takes a lock that every notifying transaction holds through its COMMIT: sent from
    the writing transaction (a trigger), it makes every COMMIT that writes a web session wait
    for every other one, WAL flush included. Sent here instead, the writing transaction never
    takes that lock; the messages of concurrent requests go out together, in one transaction
    that does not wait for its WAL flush (``synchronous_commit = off``: a NOTIFY has nothing to
    keep, and a server that crashes drops every listener anyway).

    The store publishes *before* the writing transaction commits, so no crash can commit a
    change whose message was never sent. A message that arrives before its change commits is
    harmless: it evicts, and leaves a tombstone that refuses the older record a reader may
    still find (see :mod:`.cache`); if that transaction rolls back, the key merely goes
    uncached until its next change.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        *,
        url: str | URL | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        self._connect_arguments = asyncpg_connect_arguments(engine, url, timeout)
        self._connection: Any = None
        self._waiting: list[tuple[list[str], asyncio.Future[None]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def publish(self, messages: Sequence[str]) -> None:
        """Send ``messages``; return once the server has them (raise if it does not answer
        within ``timeout``)."""
        if not messages:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(messages), done))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all(), name="PostgresPublisher")
        await asyncio.shield(done)

    async def _send_all(self) -> None:
        """Everything waiting, a batch per round trip: what came in meanwhile goes next."""
        while self._waiting:
            batch, self._waiting = self._waiting, []
            messages = [message for messages, _ in batch for message in messages]
            try:
                async with asyncio.timeout(self.timeout):
                    await self._send(messages)
            except BaseException as exc:
                self._drop_connection()
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc if isinstance(exc, Exception) else ConnectionError())
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _send(self, messages: list[str]) -> None:
        import asyncpg  # PostgreSQL only, where it is the driver

        if self._connection is None or self._connection.is_closed():
            arguments, options = self._connect_arguments
            self._connection = await asyncpg.connect(*arguments, **options)
        # One round trip, in the simple protocol (no prepared statement, no session setting:
        # the URL may be a pooler's in transaction mode), the messages as literals.
        notifies = ", ".join(
            f"pg_notify({_literal(self.channel)}, {_literal(m)})" for m in messages
        )
        await self._connection.execute(
            f"BEGIN; SET LOCAL synchronous_commit TO off; SELECT {notifies}; COMMIT"
        )

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    async def aclose(self) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.wait({self._sender}, timeout=1.0)
        self._drop_connection()


def _literal(text: str) -> str:
    """A SQL string literal (``standard_conforming_strings``, PostgreSQL's default since 9.1:
    a quote is doubled, a backslash is itself)."""
    if "\x00" in text:
        raise ValueError("a NUL cannot be sent in a notification")
    return "'" + text.replace("'", "''") + "'"


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


class _Changes(NamedTuple):
    """What the poller read from the change log, in order."""

    messages: list[str]
    #: rows between the last one read and these were deleted unread: trust nothing cached
    missed: bool


#: what the poller hands over: its first word (None: watching), changes, or why it stopped
_Report = _Changes | BaseException | None


def sqlite_database(url: URL) -> str | None:
    """The file a SQLite URL names, made absolute; None for a database in memory (no other
    connection, and so no feed, can see it)."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        return None
    if "mode=memory" in database or url.query.get("mode") == "memory":
        return None
    if _is_uri(url):
        return database
    return os.path.abspath(database)


def _is_uri(url: URL) -> bool:
    return str(url.query.get("uri", "")).lower() in ("1", "true", "yes")


class SqliteFeed(InvalidationFeed):
    """Watches a SQLite file for commits, from the event loop, and reads the change log.

    SQLite has no NOTIFY. The triggers of :func:`.stores.sql_trigger.sqlite_change_log` write
    every change of a session into a log table, in the writing transaction; this feed keeps one
    connection of its own (a plain ``sqlite3`` one, outside the app's pool) and, every
    ``poll_interval`` seconds, asks ``PRAGMA data_version``, which moves when any other
    connection, of this process or another, committed to the file. Only then does it read the
    log rows it has not seen and hand them to the cache as messages.

    The polls run on the event loop, as the app's own SQLite statements do (see
    :mod:`fastapi_atomic.sqlite`): each is one query SQLite answers from shared memory, and
    the connection's busy timeout is 0, so a look that finds the file locked returns at once
    and is made again at the next poll. A thread of its own has to take the interpreter's lock
    from the loop at every wake-up, and under load every request paid for that.

    - Polls slow down to ``idle_poll_interval`` once the file has not changed for
      ``idle_after`` seconds, and speed up at the first commit.
    - It goes live only once it found the log and its triggers and read the newest id: every
      later change has a larger id. A schema change is checked again (a migration that rebuilt
      the table dropped its triggers): without them the cache goes dark.
    - Every ``purge_interval`` seconds it deletes the log's rows beyond the newest
      ``keep_changes``, never the newest one, and only if the file is not being written then.
      Ids are consecutive (an AUTOINCREMENT key, and a rolled-back insert gives its id back):
      a process that finds the next id it expected gone (deleted unread) empties its cache.
    - A poller that has not looked at the file for ``heartbeat`` seconds (stopped, or finding
      it locked all that time) counts as a dropped feed.
    """

    #: seconds between two looks at the file while it changes
    poll_interval = 0.002
    #: seconds between two looks once nothing changed for ``idle_after`` seconds
    idle_poll_interval = 0.02
    idle_after = 1.0
    #: the log's rows kept for feeds that fall behind
    keep_changes = 10_000
    purge_interval = 10.0

    def __init__(
        self,
        cache: RecordCache,
        database: str,
        *,
        change_log: str,
        table: str,
        triggers: Sequence[str],
        uri: bool = False,
        poll_interval: float | None = None,
    ) -> None:
        super().__init__(cache)
        self.database = database
        self.change_log = change_log
        self.table = table
        self.triggers = tuple(triggers)
        self.uri = uri
        if poll_interval is not None:
            self.poll_interval = poll_interval
        #: the poller watching the file now, if any
        self.poller: _Poller | None = None

    @classmethod
    def for_engine(
        cls,
        cache: RecordCache,
        engine: AsyncEngine,
        *,
        change_log: str,
        table: str,
        triggers: Sequence[str],
        poll_interval: float | None = None,
    ) -> SqliteFeed | None:
        """The feed of the file ``engine`` uses; None for a database in memory."""
        database = sqlite_database(engine.url)
        if database is None:
            return None
        return cls(
            cache,
            database,
            change_log=change_log,
            table=table,
            triggers=triggers,
            uri=_is_uri(engine.url),
            poll_interval=poll_interval,
        )

    @contextlib.asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[AsyncIterator[str]]:
        queue: asyncio.Queue[_Report] = asyncio.Queue()
        poller = _Poller(self, queue)
        self.poller = poller
        task = asyncio.create_task(poller.run(), name=f"SqliteFeed {self.table}")
        try:
            async with asyncio.timeout(self.heartbeat):
                first = await queue.get()
            if isinstance(first, BaseException):
                raise first
            yield self._messages(poller, queue)
        finally:
            poller.stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _messages(self, poller: _Poller, queue: asyncio.Queue[_Report]) -> AsyncIterator[str]:
        while True:
            try:
                async with asyncio.timeout(self.heartbeat):
                    report = await queue.get()
            except TimeoutError:
                if time.monotonic() - poller.polled_at > self.heartbeat:
                    raise ConnectionError(
                        f"the SQLite feed did not look at {self.database} for {self.heartbeat:g} s"
                    ) from None
                continue
            if isinstance(report, BaseException):
                raise report
            if report is None:
                continue
            if report.missed:
                logger.info("web-session changes were deleted before this process read them")
                self._resync()
            for change in report.messages:
                yield change


class _Poller:
    """The task of a :class:`SqliteFeed`: its connection, its polls, and what it found."""

    def __init__(self, feed: SqliteFeed, queue: asyncio.Queue[_Report]) -> None:
        self.feed = feed
        self.queue = queue
        #: set to stop it (it stops at its next look)
        self.stop = asyncio.Event()
        #: when it last looked at the file (time.monotonic)
        self.polled_at = time.monotonic()
        #: its connection, once open
        self.connection: sqlite3.Connection | None = None

    def report(self, report: _Report) -> None:
        self.queue.put_nowait(report)

    async def run(self) -> None:
        try:
            feed = self.feed
            # Busy timeout 0: a look never waits on the loop for a file being written.
            self.connection = connection = sqlite3.connect(
                feed.database, uri=feed.uri, timeout=0, isolation_level=None
            )
            connection.execute("PRAGMA synchronous = NORMAL")  # its purges need no fsync
            await self.watch(connection)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # told to the feed, which reconnects
            self.report(exc)
        finally:
            if self.connection is not None:
                self.connection.close()

    async def watch(self, connection: sqlite3.Connection) -> None:
        feed = self.feed
        poll = connection.cursor()
        data_version = await self._first_look(lambda: self._scalar(poll, "PRAGMA data_version"))
        schema_version = await self._first_look(lambda: self._check_triggers(connection))
        last = await self._first_look(
            lambda: self._scalar(connection, f"SELECT coalesce(max(id), 0) FROM {feed.change_log}")
        )
        self.report(None)
        interval, changed_at, purge_at = feed.poll_interval, time.monotonic(), 0.0
        idle_interval = max(feed.poll_interval, feed.idle_poll_interval)
        while True:
            await asyncio.sleep(interval)
            if self.stop.is_set():
                return
            now = time.monotonic()
            try:
                version = self._scalar(poll, "PRAGMA data_version")
                if version == data_version:
                    if now - changed_at >= feed.idle_after:
                        interval = idle_interval
                else:
                    if self._scalar(connection, "PRAGMA schema_version") != schema_version:
                        schema_version = self._check_triggers(connection)
                    rows = connection.execute(
                        f"SELECT id, key, version FROM {feed.change_log} WHERE id > ? ORDER BY id",
                        (last,),
                    ).fetchall()
                    data_version, interval, changed_at = version, feed.poll_interval, now
                    if rows:
                        missed = rows[0][0] > last + 1
                        last = rows[-1][0]
                        self.report(_Changes([_message(key, v) for _, key, v in rows], missed))
                if now >= purge_at:
                    self._purge(connection)
                    purge_at = now + feed.purge_interval
            except sqlite3.OperationalError as error:
                if not is_busy(error):
                    raise
                continue  # the file is locked right now: look again at the next poll
            self.polled_at = now

    async def _first_look(self, look: Callable[[], int]) -> int:
        """``look`` once it finds the file unlocked (a start while another process writes)."""
        while True:
            try:
                return look()
            except sqlite3.OperationalError as error:
                if not is_busy(error):
                    raise
            await asyncio.sleep(self.feed.poll_interval)

    def _check_triggers(self, connection: sqlite3.Connection) -> int:
        """The schema's version, once the log and its triggers are found there."""
        feed = self.feed
        schema_version = self._scalar(connection, "PRAGMA schema_version")
        names = {feed.change_log, *feed.triggers}
        marks = ", ".join("?" for _ in names)
        found = connection.execute(
            f"SELECT count(*) FROM sqlite_master WHERE name IN ({marks}) "
            "AND (type = 'table' OR (type = 'trigger' AND tbl_name = ?))",
            (*names, feed.table),
        ).fetchone()[0]
        if found != len(names):
            raise TriggerMissing(
                f"the change log {feed.change_log} or its triggers on {feed.table} are missing: "
                "create them in a migration (sqlite_change_log); the cache stays off until "
                "they are there"
            )
        return schema_version

    def _purge(self, connection: sqlite3.Connection) -> None:
        """Delete the log's oldest rows, if there are too many and nobody is writing (the
        connection's busy timeout is 0: a file being written is left for next time)."""
        log, keep = self.feed.change_log, max(1, self.feed.keep_changes)
        oldest, newest = connection.execute(f"SELECT min(id), max(id) FROM {log}").fetchone()
        if newest is None or newest - oldest < keep:
            return
        try:
            connection.execute(f"DELETE FROM {log} WHERE id <= ?", (newest - keep,))
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise

    @staticmethod
    def _scalar(connection: sqlite3.Connection | sqlite3.Cursor, query: str) -> int:
        return int(connection.execute(query).fetchone()[0])


def _message(key: str, version: int | None) -> str:
    """A change-log row as the message the cache reads (see :mod:`.stores.sql_trigger`)."""
    if version is None:
        return message(key, DELETED)
    return message(key, version if version > 0 else None)
