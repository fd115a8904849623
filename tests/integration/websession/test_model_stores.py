"""The web-session state machine on the real stores: SQL (SQLite, PostgreSQL) and Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from redis.asyncio import Redis
from session_tables import SESSIONS, drop_table, with_table
from websession_model import WebSessionMachine

from fastapi_atomic import create_engine
from fastapi_atomic.websession import RedisStore, SqlStore

SETTINGS = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_sql_store_against_the_model(
    request: pytest.FixtureRequest, database: str, tmp_path: Path
) -> None:
    if database == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'model.db'}"
    else:
        url = request.getfixturevalue("postgres_database")

    async def make_table(drop: bool = False) -> None:
        engine = create_engine(url)
        await (drop_table(engine) if drop else with_table(engine))
        await engine.dispose()

    class SqlMachine(WebSessionMachine):
        make_store = staticmethod(lambda: SqlStore(SESSIONS))
        make_engine = staticmethod(lambda: create_engine(url))

    asyncio.run(make_table())
    try:
        run_state_machine_as_test(SqlMachine, settings=SETTINGS)
    finally:
        asyncio.run(make_table(drop=True))


def test_redis_store_against_the_model(redis_url: str) -> None:
    prefix = f"test:model:{uuid.uuid4().hex[:8]}:"

    class RedisMachine(WebSessionMachine):
        make_store = staticmethod(lambda: RedisStore(Redis.from_url(redis_url), prefix=prefix))
        make_engine = staticmethod(lambda: create_engine("sqlite+aiosqlite://"))

        def teardown(self) -> None:
            async def clean() -> None:
                redis = Redis.from_url(redis_url)
                keys = [key async for key in redis.scan_iter(f"{prefix}*")]
                if keys:
                    await redis.delete(*keys)
                await redis.aclose()
                await self.manager.store.aclose()  # type: ignore[attr-defined]

            self.loop.run_until_complete(clean())
            super().teardown()

    run_state_machine_as_test(RedisMachine, settings=SETTINGS)
