"""Databases for the store suites: a table of the library's own (session_tables), in a SQLite
file of the test or in the test run's PostgreSQL database; two cached apps on one SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from session_tables import SESSIONS, drop_table, with_table
from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import create_engine
from fastapi_atomic.websession import SqlStore, sqlite_change_log


@pytest.fixture
def sessions_table() -> Table:
    return SESSIONS


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}")
    await with_table(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def postgres_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url)
    await with_table(engine)
    yield engine
    await drop_table(engine)
    await engine.dispose()


async def with_change_log(engine: AsyncEngine, table: Table = SESSIONS) -> None:
    """The change log and its triggers, as a migration would make them (SQLite)."""
    async with engine.begin() as connection:
        for statement in sqlite_change_log(table):
            await connection.execute(text(statement))


@pytest.fixture
def shared_sqlite_url(tmp_path: Path) -> str:
    """One SQLite file, shared by the two apps of :func:`sqlite_apps`."""
    return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"


@pytest.fixture
async def sqlite_apps(shared_sqlite_url: str) -> AsyncIterator[list[tuple[AsyncEngine, SqlStore]]]:
    """Two apps on one SQLite file, each with its own engine (pool) and cached store (feed):
    two processes, in one."""
    engines = [create_engine(shared_sqlite_url) for _ in "ab"]
    await with_table(engines[0])
    await with_change_log(engines[0])
    apps = [(engine, SqlStore(SESSIONS, cache=True)) for engine in engines]
    for engine, store in apps:
        await store.start(engine)
    yield apps
    for engine, store in apps:
        await store.aclose()
        await engine.dispose()
