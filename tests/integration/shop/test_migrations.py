"""Migrations 0003 (the session cache's trigger), 0004 (its versioned messages) and 0008 (the
trigger dropped: the store sends the messages) go down and up again on PostgreSQL, each
installing its own version of the trigger."""

from __future__ import annotations

from shop_testing import migrate
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from fastapi_atomic.websession import postgres_notify_trigger
from fastapi_atomic.websession.stores.sql_trigger import trigger_name
from shop.db.migrate import upgrade
from shop.db.models import web_sessions


async def downgrade(engine: AsyncEngine, url: str, revision: str) -> None:
    await migrate(engine, url, "downgrade", revision)


async def function_source(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        source = await connection.scalar(
            text("SELECT prosrc FROM pg_proc WHERE proname = :name"),
            {"name": trigger_name(web_sessions)},
        )
    return " ".join(str(source).split())


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
        assert await triggers() == 0  # 0008: the store sends the notifications
        await downgrade(engine, postgres_url, "0007")
        assert await triggers() == 1
        await downgrade(engine, postgres_url, "0002")
        assert await triggers() == 0
        await migrate(engine, postgres_url, "upgrade", "0007")
        assert await triggers() == 1
    finally:
        await upgrade(postgres_url)
        assert await triggers() == 0
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
        await downgrade(engine, postgres_url, "0007")  # the last revision with the trigger
        assert await says_the_version()
        await downgrade(engine, postgres_url, "0003")
        assert not await says_the_version()
        await migrate(engine, postgres_url, "upgrade", "0007")
        assert await says_the_version()
    finally:
        await upgrade(postgres_url)
        await engine.dispose()


async def test_each_migration_installs_its_own_trigger(postgres_url: str) -> None:
    """History does not follow the library: 0003 installs the key-only trigger even now, and
    0007 (the last revision with a trigger) has exactly what the library's
    postgres_notify_trigger() says today."""
    engine = create_async_engine(postgres_url)
    try:
        await downgrade(engine, postgres_url, "0002")
        await migrate(engine, postgres_url, "upgrade", "0003")
        assert "NEW.version" not in await function_source(engine)
        await migrate(engine, postgres_url, "upgrade", "0007")
        at_0007 = await function_source(engine)
        async with engine.begin() as connection:
            for statement in postgres_notify_trigger(web_sessions):
                await connection.execute(text(statement))
        assert await function_source(engine) == at_0007
    finally:
        await upgrade(postgres_url)
        await engine.dispose()
