"""Migrations 0003 (the session cache's trigger) and 0004 (its versioned messages) go down and
up again on PostgreSQL."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from fastapi_atomic.websession.cache import trigger_name
from shop.db.migrate import alembic_config, upgrade
from shop.db.models import web_sessions


async def downgrade(engine: AsyncEngine, url: str, revision: str) -> None:
    def run(connection: Connection) -> None:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def test_the_cache_trigger_migration_downgrades_and_upgrades(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)

    async def triggers() -> int:
        async with engine.connect() as connection:
            found = await connection.scalar(
                text("SELECT count(*) FROM pg_trigger WHERE tgname = :name"),
                {"name": trigger_name(web_sessions)},
            )
        return int(found or 0)

    try:
        assert await triggers() == 1
        await downgrade(engine, postgres_url, "0002")
        assert await triggers() == 0
    finally:
        await upgrade(postgres_url)
        assert await triggers() == 1
        await engine.dispose()


async def test_the_versioned_notifications_migration_downgrades_and_upgrades(
    postgres_url: str,
) -> None:
    """0004 makes the trigger say the new version; going back to 0003 says the key alone."""
    engine = create_async_engine(postgres_url)

    async def says_the_version() -> bool:
        async with engine.connect() as connection:
            source = await connection.scalar(
                text("SELECT prosrc FROM pg_proc WHERE proname = :name"),
                {"name": trigger_name(web_sessions)},
            )
        return "NEW.version" in str(source)

    try:
        assert await says_the_version()
        await downgrade(engine, postgres_url, "0003")
        assert not await says_the_version()
    finally:
        await upgrade(postgres_url)
        assert await says_the_version()
        await engine.dispose()
