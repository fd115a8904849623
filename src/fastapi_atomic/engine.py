"""Engines that serve a unit of work per request well, on SQLite and PostgreSQL alike.

The pool. A fixed size and no overflow: an overflow connection is closed when it comes back to
a full pool and opened again at the next burst (a backend to start, authentication, the
driver's type introspection), so a load that hovers above the pool size reconnects all the
time. No pre-ping: a round trip on every checkout, where a connection found dead before COMMIT
makes the middleware re-run the request on a fresh one anyway. And waiting requests are served
in the order they came (:mod:`.pool`). Size the pool for the concurrency the database can
serve; a request waits at most ``pool_timeout`` seconds for a connection, then gets a 503.

SQLite needs three things to serve concurrent requests: WAL (readers never block the writer),
a busy timeout (a writer waits instead of failing at once) and ``BEGIN IMMEDIATE`` for
transactions that will write (so two writers never both hold a read lock and deadlock on the
upgrade, which no busy timeout can resolve). The driver's own transaction handling is turned
off so that SAVEPOINTs work, as the SQLAlchemy documentation recommends.

SQLite has one writer at a time, and a writer that finds the file locked waits in SQLite's
busy handler, which sleeps and looks again: not in the order the writers came, so under load
some wait many times longer than the rest. On a SQLite file, transactions that write therefore
take the one connection of a writer engine of their own (:func:`writer_engine`): a process's
writers queue for it in arrival order, in the fair pool, and the busy handler is left to the
rare case of two processes on one file.

Behind a pooler in transaction mode (PgBouncer's ``pool_mode = transaction``), each
transaction may run on a different server connection, so nothing may outlive one: asyncpg's
and SQLAlchemy's prepared-statement caches are turned off and each statement SQLAlchemy
prepares gets a name of its own (``transaction_pooling=True``), as the SQLAlchemy asyncpg
documentation describes. A statement is then parsed once per execution: the price of the
pooler, paid on the database server's CPU.

Bound values never reach a log: ``hide_parameters`` is on, so a failed statement's error (and
its traceback in the server log) shows the SQL, not the e-mail or password hash it carried.
"""

from __future__ import annotations

import uuid
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from .pool import FairAsyncAdaptedQueuePool, TurnTakingPool
from .sqlite import Checkpointer, InlineDBAPI, inline_creator, install_inline

#: execution option read by the SQLite ``begin`` listener: "IMMEDIATE" or "DEFERRED"
SQLITE_BEGIN_OPTION = "fastapi_atomic_sqlite_begin"

#: the writer engine of each SQLite file engine made by :func:`create_engine`
_WRITERS: weakref.WeakKeyDictionary[Engine, AsyncEngine] = weakref.WeakKeyDictionary()
#: the engines made with ``transaction_pooling=True``
_TRANSACTION_POOLED: weakref.WeakSet[Engine] = weakref.WeakSet()


def transaction_pooled(engine: AsyncEngine) -> bool:
    """Whether ``engine`` reaches its server through a pooler in transaction mode: then no
    statement may run outside a transaction, where the pooler may prepare it on one server
    connection and execute it on another."""
    return engine.sync_engine in _TRANSACTION_POOLED


def writer_engine(engine: AsyncEngine) -> AsyncEngine:
    """The engine for transactions that write: ``engine`` itself, except for a SQLite file
    engine made by :func:`create_engine`, whose writers share one connection in turn."""
    return _WRITERS.get(engine.sync_engine, engine)


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 0,
    pool_timeout: float = 10,
    pool_pre_ping: bool = False,
    sqlite_busy_timeout_ms: int = 5000,
    sqlite_inline: bool = True,
    transaction_pooling: bool = False,
    **kwargs: Any,
) -> AsyncEngine:
    """SQLAlchemy's ``create_async_engine`` with the defaults above; any argument it takes can
    be given. A ``poolclass`` given replaces the fair pool; the pool settings apply to queue
    pools (an in-memory SQLite database keeps SQLAlchemy's single-connection pool).
    ``sqlite_inline``: on a SQLite file with aiosqlite, statements run on the event loop
    (:mod:`.sqlite`) unless an ``async_creator`` is given. ``transaction_pooling``: the
    PostgreSQL server is reached through a pooler in transaction mode (asyncpg only)."""
    parsed = make_url(url)
    if transaction_pooling:
        if parsed.get_driver_name() != "asyncpg":
            raise ValueError("transaction_pooling=True is for postgresql+asyncpg URLs")
        kwargs["connect_args"] = _unprepared_connect_args() | kwargs.get("connect_args", {})
    in_memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
    inline = (
        sqlite_inline
        and not in_memory
        and parsed.get_driver_name() == "aiosqlite"
        and "async_creator" not in kwargs
        and "creator" not in kwargs
    )
    if inline:
        (database, *_), options = parsed.get_dialect()().create_connect_args(parsed)
        connect_args = dict(options)
        kwargs["async_creator"] = inline_creator(database, connect_args, sqlite_busy_timeout_ms)
        kwargs.setdefault("module", InlineDBAPI())
    if not in_memory:
        kwargs.setdefault("poolclass", FairAsyncAdaptedQueuePool)
    if issubclass(kwargs.get("poolclass", type(None)), QueuePool):
        kwargs.update(
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_pre_ping=pool_pre_ping,
        )
    kwargs.setdefault("hide_parameters", True)
    engine = create_async_engine(url, **kwargs)
    if transaction_pooling:
        _TRANSACTION_POOLED.add(engine.sync_engine)
    if engine.dialect.name == "sqlite":
        # an inline connection waits for a lock in its thread, never in SQLite's busy handler
        busy_timeout_ms = 0 if inline else sqlite_busy_timeout_ms
        configure_sqlite(engine, busy_timeout_ms=busy_timeout_ms)
        if inline:
            checkpointer = Checkpointer(database, connect_args)
            install_inline(engine.sync_engine, checkpointer)
        if not in_memory and issubclass(kwargs.get("poolclass", type(None)), QueuePool):
            writer_options = kwargs | {"pool_size": 1, "max_overflow": 0}
            if inline and kwargs["poolclass"] is FairAsyncAdaptedQueuePool:
                # its transactions run without yielding: one per turn of the loop
                writer_options["poolclass"] = TurnTakingPool
            writer = create_async_engine(url, **writer_options)
            configure_sqlite(writer, busy_timeout_ms=busy_timeout_ms)
            if inline:
                install_inline(writer.sync_engine, checkpointer)
            _WRITERS[engine.sync_engine] = writer

            @event.listens_for(engine.sync_engine, "engine_disposed")
            def _dispose_writer(_engine: Engine) -> None:
                writer.sync_engine.dispose()

    return engine


def _unprepared_connect_args() -> dict[str, Any]:
    return {
        "statement_cache_size": 0,  # asyncpg's own cache
        "prepared_statement_cache_size": 0,  # SQLAlchemy's adapter's cache
        "prepared_statement_name_func": _statement_name,
    }


def _statement_name() -> str:
    """Unique across every client of the pooler: a name asyncpg numbers per connection would
    collide on a server connection another client prepared it on."""
    return f"__atomic_{uuid.uuid4().hex}__"


def configure_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int = 5000) -> None:
    """Install WAL, busy timeout, foreign keys and explicit BEGIN on a SQLite engine."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver from emitting its own BEGIN; our "begin" listener does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA synchronous = NORMAL")
            if engine.url.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        mode = options.get(SQLITE_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")
