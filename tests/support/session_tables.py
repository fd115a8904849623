"""The SQL web-session store's table for the library's own tests: nothing of the shop."""

from __future__ import annotations

from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic.websession import postgres_notify_trigger, web_sessions_table
from fastapi_atomic.websession.stores.sql_trigger import trigger_name

SESSIONS = web_sessions_table(MetaData(), name="store_test_sessions")


async def with_table(engine: AsyncEngine, *, trigger: bool = False) -> None:
    """The table, empty; on PostgreSQL with ``trigger``, the change trigger too (for a
    ``SqlStore(notify="trigger")``: by default the store sends its own notifications)."""
    async with engine.begin() as connection:
        await connection.run_sync(SESSIONS.drop, checkfirst=True)
        await connection.run_sync(SESSIONS.create)
        if trigger and connection.dialect.name == "postgresql":
            for statement in postgres_notify_trigger(SESSIONS):
                await connection.execute(text(statement))


async def drop_table(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(SESSIONS.drop, checkfirst=True)
        if connection.dialect.name == "postgresql":
            await connection.execute(text(f"DROP FUNCTION IF EXISTS {trigger_name(SESSIONS)}()"))
