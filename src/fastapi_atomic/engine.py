"""Engines that behave the same on SQLite and PostgreSQL under a unit of work.

SQLite needs three things to serve concurrent requests well: WAL (readers never block the
writer), a busy timeout (a writer waits instead of failing at once) and ``BEGIN IMMEDIATE`` for
transactions that will write (so two writers never both hold a read lock and deadlock on the
upgrade, which no busy timeout can resolve). The driver's own transaction handling is turned off
so that SAVEPOINTs work, as the SQLAlchemy documentation recommends.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from .pool import FairAsyncAdaptedQueuePool

#: execution option read by the SQLite ``begin`` listener: "IMMEDIATE" or "DEFERRED"
SQLITE_BEGIN_OPTION = "fastapi_atomic_sqlite_begin"


def create_engine(url: str, *, sqlite_busy_timeout_ms: int = 5000, **kwargs: Any) -> AsyncEngine:
    """``create_async_engine`` plus the SQLite set-up above, and a pool that serves waiting
    requests in arrival order (:mod:`.pool`) wherever SQLAlchemy would use its asyncio queue
    pool; a ``poolclass`` given is kept."""
    engine = create_async_engine(url, **kwargs)
    if "poolclass" not in kwargs and type(engine.sync_engine.pool) is AsyncAdaptedQueuePool:
        engine = create_async_engine(url, poolclass=FairAsyncAdaptedQueuePool, **kwargs)
    if engine.dialect.name == "sqlite":
        configure_sqlite(engine, busy_timeout_ms=sqlite_busy_timeout_ms)
    return engine


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
