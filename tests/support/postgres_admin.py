"""Databases a test makes and drops on the PostgreSQL server: statements that cannot run in a
transaction (CREATE and DROP DATABASE), sent from the server's maintenance database."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine


async def administer(server: str | URL, statement: str) -> None:
    """Run ``statement`` in autocommit on the server of ``server`` (a URL of any database)."""
    engine = create_async_engine(
        make_url(server).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def database_url(server: str | URL, name: str) -> str:
    """The URL of database ``name`` on the server of ``server``, password included."""
    return make_url(server).set(database=name).render_as_string(hide_password=False)


async def create_database(server: str | URL, name: str) -> str:
    await administer(server, f'CREATE DATABASE "{name}"')
    return database_url(server, name)


async def drop_database(server: str | URL, name: str) -> None:
    """Drop it, ending whatever is still connected to it."""
    await administer(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
