"""Fault tests: each gets a PostgreSQL database of its own, and a proxy between it and the app.

The databases are copies of one migrated template made for these tests (``CREATE DATABASE ...
TEMPLATE``, much quicker than migrating each), next to the test run's own database
(``postgres_database`` says where the server is, and skips, or fails under CI, when it is not
there). Each is dropped afterwards: a fault test cuts connections and leaves payments pending,
which no other test should ever see.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from fault_proxy import FaultProxy
from postgres_admin import administer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError


@pytest.fixture(scope="session")
def fault_template(postgres_database: str) -> Iterator[str]:
    """A migrated database that nothing connects to, copied for each fault test."""
    from shop.db.migrate import upgrade_sync

    server = make_url(postgres_database)
    name = f"{server.database}_fault_template"
    asyncio.run(administer(server, f'CREATE DATABASE "{name}"'))
    try:
        upgrade_sync(server.set(database=name).render_as_string(hide_password=False))
        yield name
    finally:
        asyncio.run(administer(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def own_database(postgres_database: str, fault_template: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone (its URL, straight to the server)."""
    server = make_url(postgres_database)
    name = f"{server.database}_fault_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        for attempt in range(20):
            try:
                await administer(server, f'CREATE DATABASE "{name}" TEMPLATE "{fault_template}"')
                return
            except DBAPIError:  # the template's last connection is still going away
                if attempt == 19:
                    raise
                await asyncio.sleep(0.1)

    asyncio.run(create())
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE ends only connections to this database: the test's own.
        asyncio.run(administer(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def postgres_proxy(own_database: str) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the PostgreSQL server, in the test's event loop."""
    server = make_url(own_database)
    async with FaultProxy(server.host or "127.0.0.1", server.port or 5432) as proxy:
        yield proxy
