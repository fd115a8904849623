"""The shop's migration 0006 (the SQLite change log of the session cache): it goes down and up
again on SQLite, installs what the library's sqlite_change_log() says, and does nothing on
PostgreSQL; the models still agree with the migrated schema."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from shop_testing import migrate
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from fastapi_atomic.websession import sqlite_change_log
from fastapi_atomic.websession.stores.sql_trigger import (
    change_log_name,
    sqlite_trigger_names,
    trigger_name,
)
from shop.db.migrate import upgrade
from shop.db.models import Base, web_sessions

LOG = change_log_name(web_sessions)


async def sqlite_objects(engine: AsyncEngine) -> dict[str, str]:
    """The change log's table and triggers in the file: name -> DDL, whitespace folded."""
    names = (LOG, *sqlite_trigger_names(web_sessions))
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT name, sql FROM sqlite_master WHERE name IN (:a, :b, :c)"),
            dict(zip("abc", names, strict=True)),
        )
        return {name: " ".join(sql.split()) for name, sql in rows}


async def test_0006_creates_the_change_log_on_sqlite_and_goes_down_and_up(sqlite_url: str) -> None:
    engine = create_async_engine(sqlite_url)
    try:
        at_head = await sqlite_objects(engine)
        assert sorted(at_head) == sorted([LOG, *sqlite_trigger_names(web_sessions)])
        await migrate(engine, sqlite_url, "downgrade", "0005")
        assert await sqlite_objects(engine) == {}
        await migrate(engine, sqlite_url, "upgrade", "head")
        assert await sqlite_objects(engine) == at_head
    finally:
        await engine.dispose()


async def test_0006_installs_what_the_library_says_today(sqlite_url: str) -> None:
    engine = create_async_engine(sqlite_url)
    try:
        at_head = await sqlite_objects(engine)
        async with engine.begin() as connection:
            # Dropped, or CREATE TABLE IF NOT EXISTS would keep the migration's.
            await connection.execute(text(f"DROP TABLE {LOG}"))
            for statement in sqlite_change_log(web_sessions):
                await connection.execute(text(statement))
        assert await sqlite_objects(engine) == at_head
    finally:
        await engine.dispose()


async def test_0006_changes_nothing_on_postgres(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)

    async def state() -> tuple[Any, ...]:
        async with engine.connect() as connection:
            log = await connection.scalar(text("SELECT to_regclass(:name)"), {"name": LOG})
            source = await connection.scalar(
                text("SELECT prosrc FROM pg_proc WHERE proname = :name"),
                {"name": trigger_name(web_sessions)},
            )
            triggers = await connection.scalar(
                text("SELECT count(*) FROM pg_trigger WHERE tgname = :name"),
                {"name": trigger_name(web_sessions)},
            )
        return log, source, triggers

    try:
        at_head = await state()
        await migrate(engine, postgres_url, "downgrade", "0006")
        at_0006 = await state()
        assert at_0006[0] is None and at_0006[2] == 1  # the trigger, no change log
        await migrate(engine, postgres_url, "downgrade", "0005")
        assert await state() == at_0006
    finally:
        await upgrade(postgres_url)
        assert await state() == at_head
        await engine.dispose()


async def test_0008_drops_the_notify_trigger_on_postgres_and_its_downgrade_restores_it(
    postgres_url: str,
) -> None:
    """The store sends the notifications since 0008: no trigger may send them twice."""
    engine = create_async_engine(postgres_url)

    async def trigger_and_function() -> tuple[int, int]:
        async with engine.connect() as connection:
            name = {"name": trigger_name(web_sessions)}
            triggers = await connection.scalar(
                text("SELECT count(*) FROM pg_trigger WHERE tgname = :name"), name
            )
            functions = await connection.scalar(
                text("SELECT count(*) FROM pg_proc WHERE proname = :name"), name
            )
        return int(triggers or 0), int(functions or 0)

    try:
        assert await trigger_and_function() == (0, 0)
        await migrate(engine, postgres_url, "downgrade", "0007")
        assert await trigger_and_function() == (1, 1)
    finally:
        await upgrade(postgres_url)
        assert await trigger_and_function() == (0, 0)
        await engine.dispose()


def _not_the_change_log(
    item: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """The change log is the cache feed's, made by a migration like a trigger: no model."""
    return not (type_ == "table" and name == LOG)


async def test_the_models_agree_with_the_migrated_schema(database_url: str) -> None:
    engine = create_async_engine(database_url)

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": _not_the_change_log}
        )
        return list(compare_metadata(context, Base.metadata))

    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()
