"""Databases for the store suites: a table of the library's own (session_tables), in a SQLite
file of the test or in the test run's PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from session_tables import SESSIONS, drop_table, with_table
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import create_engine


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
