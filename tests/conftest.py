"""Fixtures shared by every test group: throw-away databases and Redis, on demand.

PostgreSQL and Redis are looked for on 127.0.0.1 (override with TEST_POSTGRES_URL and
TEST_REDIS_URL). When one is missing its tests are skipped, with the reason repeated at the very
end of the run; under CI=true they fail instead, because CI must test the real servers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from postgres_admin import create_database, drop_database
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]

_not_run: Counter[str] = Counter()


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    """Skip (or, in CI, fail) the calling test when ``name`` does not answer at ``url``."""
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it (start it, see README)", pytrace=False)
    pytest.skip(message)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2]).removeprefix("Skipped: ")
        if "is not reachable" in message or "is not installed" in message:
            _not_run[message] += 1


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _not_run:
        return
    terminalreporter.section("suites that did not run")
    for reason, count in _not_run.items():
        terminalreporter.write_line(f"{count} tests skipped: {reason}")
    terminalreporter.write_line(
        "Start the servers (see README) or set TEST_POSTGRES_URL / TEST_REDIS_URL."
    )


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server's URL, for a test that makes (and drops) databases of its own."""
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The Redis server's URL, for a fixture wider than a test (``redis_url`` is per test)."""
    require_service("Redis", REDIS_URL, 6379)
    return REDIS_URL


# --- PostgreSQL: one throw-away database per test run, emptied between tests -------------


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    name = f"test_{RUN_ID}"
    database_url = asyncio.run(create_database(POSTGRES_URL, name))
    from shop.db.migrate import upgrade_sync

    upgrade_sync(database_url)
    yield database_url
    asyncio.run(drop_database(POSTGRES_URL, name))


async def truncate_all(database_url: str) -> None:
    from shop.db.models import Base

    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            names = [f'"{table.name}"' for table in Base.metadata.sorted_tables]
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text(f"TRUNCATE {', '.join(names)} RESTART IDENTITY CASCADE")
                )
    finally:
        await engine.dispose()


@pytest.fixture
async def postgres_url(postgres_database: str) -> AsyncIterator[str]:
    await truncate_all(postgres_database)
    yield postgres_database


# --- SQLite: a migrated template file copied per test --------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shop.db.migrate import upgrade_sync

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade_sync(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "shop.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The shop's schema, empty, on each database the shop supports."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


# --- Redis: a key prefix per test run ----------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    return f"test:{RUN_ID}:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def own_redis(redis_url: str, redis_prefix: str) -> AsyncIterator[Redis]:
    """A Redis client of the test's own, outside any fault it injects; at the end it deletes
    the test's keys (those under its prefix), and only those."""
    client = Redis.from_url(redis_url)
    yield client
    keys = [key async for key in client.scan_iter(f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
