"""SQLite statements run on the event loop, not in a thread.

aiosqlite runs each call (every statement, every fetch, BEGIN and COMMIT) in a thread of its
own and hands the result back through the event loop: one wake-up of the loop per call, and
under load a wait behind every other ready callback before the request sees its answer. A
transfer is about ten such calls, and the one writer connection is held through all of them,
so the writer's hold, and with it every write's wait, grows with the load on the loop.

A SQLite statement on a small database takes microseconds, less than the hop. So here a call
runs where it is made, on the loop, and only what may wait goes to the thread:

- a statement that finds the file locked by another connection (``SQLITE_BUSY``: another
  process's writer, a checkpoint) is not left to block the loop in SQLite's busy handler. The
  connection's busy timeout is 0, so SQLite answers BUSY at once, and the same call is made
  again in the connection's thread with the busy timeout set, where it waits as before;
- calls that can be long by nature (``backup``, ``executescript``, ``iterdump``) always run in
  the thread;
- a commit never runs a checkpoint (the copy of the write-ahead log into the database, with its
  ``fsync``) on the loop: automatic checkpoints are off on these connections, and a
  :class:`Checkpointer` thread per database file and process runs a passive one every
  fraction of a second, which never blocks a reader or a writer.

Only one task uses a pooled connection at a time, and while its call waits in the thread the
task waits too, so the connection is never used by the loop and the thread at once.

SQLAlchemy reaches aiosqlite through an adapter whose cursor makes three or four awaited calls
per statement (open the cursor, execute under a lock, fetch, close), each a switch out of
SQLAlchemy's greenlet and back. With the statements on the loop, only the execution itself may
have to wait, so :class:`InlineCursor` wraps the ``sqlite3`` cursor directly and awaits once
per statement, for the execution (which goes to the thread when the file is locked).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, cast

import aiosqlite
from sqlalchemy import event
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.engine import Engine
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

log = logging.getLogger(__name__)

#: the primary result code of "database is locked" and its extended codes
SQLITE_BUSY = 5
#: the extended code of a write refused because the transaction's snapshot is stale: waiting
#: cannot help (the transaction must start again), so it is not retried in the thread
SQLITE_BUSY_SNAPSHOT = 517
#: calls that may take long whatever the load: never on the loop
_LONG_CALLS = frozenset({"backup", "executescript", "iterdump"})
#: how often the checkpointer copies the write-ahead log into the database
CHECKPOINT_INTERVAL_S = 0.2


def is_busy(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's "database is locked", which waiting may resolve."""
    code = getattr(error, "sqlite_errorcode", None)
    return (
        isinstance(error, sqlite3.OperationalError)
        and code is not None
        and code & 0xFF == SQLITE_BUSY
        and code != SQLITE_BUSY_SNAPSHOT
    )


@contextlib.contextmanager
def waiting_for_locks(connection: sqlite3.Connection, busy_timeout_ms: float) -> Iterator[None]:
    """SQLite's busy handler on ``connection`` for a while: waiting up to ``busy_timeout_ms``
    for a lock, then back to 0 (these connections never wait otherwise)."""
    connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    try:
        yield
    finally:
        connection.execute("PRAGMA busy_timeout = 0")


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run on the event loop; see the module's docstring.

    ``busy_timeout_ms`` is how long a call that found the file locked then waits in the
    thread; the connection's own busy timeout must be 0."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], busy_timeout_ms: int) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self.busy_timeout_ms = busy_timeout_ms

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        if getattr(fn, "__name__", "") in _LONG_CALLS:
            return await super()._execute(fn, *args, **kwargs)  # type: ignore[no-untyped-call]
        try:
            return fn(*args, **kwargs)
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise
        return await super()._execute(  # type: ignore[no-untyped-call]
            self._waiting, partial(fn, *args, **kwargs)
        )

    def _waiting(self, call: Callable[[], Any]) -> Any:
        """In the connection's thread: ``call`` again, with SQLite's busy handler waiting."""
        with waiting_for_locks(self._conn, self.busy_timeout_ms):
            return call()


class InlineCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor, on the ``sqlite3`` cursor of an :class:`InlineConnection`:
    one await per statement, none to open, fetch or close."""

    __slots__ = ()
    _awaitable_cursor_close = False
    #: the ``sqlite3.Cursor`` itself, not aiosqlite's
    _cursor: Any

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        try:
            self._cursor = cast(InlineConnection, self._connection)._conn.cursor()
        except Exception as error:  # a closed connection: the DBAPI's error, as SQLAlchemy's
            adapt_connection._handle_exception(error)
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        connection = cast(InlineConnection, self._connection)
        cursor: sqlite3.Cursor = self._cursor
        try:
            await_(connection._execute(cursor.execute, operation, parameters or ()))
            if cursor.description:
                self._rows = collections.deque(cursor.fetchall())
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        return cursor

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        connection = cast(InlineConnection, self._connection)
        try:
            return await_(
                connection._execute(self._cursor.executemany, operation, seq_of_parameters)
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)


class InlineAdaptedConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = InlineCursor


class InlineDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module SQLAlchemy's aiosqlite dialect is given (``module=``) for inline
    connections: its connections' cursors are :class:`InlineCursor`."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> InlineAdaptedConnection:
        creator = kw.pop("async_creator_fn")
        return InlineAdaptedConnection(self, await_(creator(*arg, **kw)))


def inline_creator(
    database: str, connect_args: dict[str, Any], busy_timeout_ms: int
) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``: inline connections to ``database``."""
    connect_args = connect_args | {"check_same_thread": False}

    async def create() -> InlineConnection:
        connection = InlineConnection(
            partial(sqlite3.connect, database, **connect_args), busy_timeout_ms
        )
        connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite's own
        await connection
        return connection

    return create


def install_inline(engine: Engine, checkpointer: Checkpointer) -> None:
    """Turn off automatic checkpoints on ``engine``'s connections, and have ``checkpointer``
    (one per database file, shared by the file's engines) run from the engine's first
    connection until it is disposed of."""

    @event.listens_for(engine, "connect")
    def _no_checkpoint_on_commit(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA wal_autocheckpoint = 0")
        finally:
            cursor.close()
        checkpointer.start()  # again after the engine was disposed of and is used anew

    @event.listens_for(engine, "engine_disposed")
    def _stop(_engine: Engine) -> None:
        checkpointer.stop()

    weakref.finalize(engine, checkpointer.stop)


class Checkpointer:
    """A thread that copies the write-ahead log into the database file now and then.

    Passive: it copies what no reader still needs and never waits for a lock, so it delays no
    one; a checkpoint another process is running meanwhile is simply left to that process.

    A passive checkpoint alone lets the log grow without bound under steady load: SQLite
    starts the log over only when a writer begins right after a checkpoint that copied all of
    it, and with commits every few milliseconds one always lands during the copy. So once the
    log holds more than ``truncate_frames`` pages, the checkpointer makes a ``TRUNCATE``
    checkpoint: it waits up to ``truncate_wait_ms`` for the readers still using the log to
    finish (holding the writers back meanwhile, who wait in their connection's thread, as for
    any lock), then empties the file. If it cannot, it tries again at the next round.
    """

    #: pages in the write-ahead log (4 KB each by default) past which it is emptied
    truncate_frames = 4096
    #: how long an emptying waits for readers (and holds writers back) before giving up
    truncate_wait_ms = 100

    def __init__(self, database: str, connect_args: dict[str, Any]) -> None:
        self.database = database
        self.connect_args = connect_args | {"check_same_thread": False}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start the thread, unless it runs."""
        with self._lock:
            if self._thread is not None and not self._stopping.is_set():
                return
            self._stopping = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(self._stopping,),
                name=f"sqlite-checkpoint {self.database}",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Have the thread make a last checkpoint and end."""
        with self._lock:
            self._stopping.set()

    def checkpoint(self, connection: sqlite3.Connection) -> None:
        try:
            _, pages, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise
            return
        if pages <= self.truncate_frames:
            return
        try:
            with waiting_for_locks(connection, self.truncate_wait_ms):
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise

    def _run(self, stopping: threading.Event) -> None:
        try:
            connection = sqlite3.connect(self.database, **self.connect_args)
        except sqlite3.Error:
            log.exception("the checkpointer of %s could not connect", self.database)
            return
        try:
            connection.execute("PRAGMA busy_timeout = 0")
            while not stopping.wait(CHECKPOINT_INTERVAL_S):
                try:
                    self.checkpoint(connection)
                except sqlite3.Error:
                    log.exception("checkpoint of %s failed", self.database)
            self.checkpoint(connection)  # what the last commits wrote, before the process ends
        finally:
            connection.close()
