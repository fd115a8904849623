"""The high-availability harness (tests/support/ha.py) does what failover tests rely on: a
synchronous standby has every committed row when the primary crashes, and after promotion
clients find it, straight (a multihost URL) or through PgBouncer retargeted at it; a pool
through PgBouncer survives PgBouncer's crash; Sentinel fails a Redis master over to its replica
with the data, and Sentinel clients follow; Patroni, its leader's host killed, promotes the
synchronous standby by itself, with every committed row, and a multihost URL finds it.

Each test runs its own servers on free ports in a temporary directory; the machine's own
PostgreSQL and Redis are not used. Missing packages skip the tests, or, under CI=true, fail
them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from ha import (
    PatroniCluster,
    PgBouncer,
    PostgresPair,
    RedisSentinels,
    patroni_missing,
    pgbouncer_missing,
    postgres_missing,
    redis_missing,
    temporary_workdir,
)
from installed import require_installed
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from fastapi_atomic import create_engine

#: seconds Patroni may take to promote the standby once the leader's host is dead: its leader
#: key outlives the host by up to ``ttl`` (5 s), then a promotion
PATRONI_FAILOVER_BOUND = 15.0


@pytest.fixture
def workdir() -> Iterator[Path]:
    with temporary_workdir("ha-test-") as path:
        yield path


@pytest.fixture
def postgres_stack() -> None:
    require_installed(postgres_missing() or pgbouncer_missing())


async def one(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    """The first column of the first row of ``sql``, in a transaction of its own."""
    async with engine.begin() as connection:
        return (await connection.execute(text(sql), params)).scalar()


@pytest.fixture
async def engines() -> AsyncIterator[list[AsyncEngine]]:
    """Engines the test makes, disposed of at the end."""
    made: list[AsyncEngine] = []
    yield made
    for engine in made:
        await engine.dispose()


async def test_failover_keeps_committed_rows_and_clients_find_the_new_primary(
    postgres_stack: None, workdir: Path, engines: list[AsyncEngine]
) -> None:
    with PostgresPair(workdir) as pair, PgBouncer(workdir, pair.primary_port) as bouncer:
        multihost = create_async_engine(pair.multihost_url(), pool_pre_ping=True)
        pooled = create_engine(bouncer.url(), transaction_pooling=True, pool_pre_ping=True)
        standby = create_async_engine(pair.url(pair.standby_port), poolclass=NullPool)
        engines += [multihost, pooled, standby]

        assert await one(multihost, "SELECT inet_server_port()") == pair.primary_port
        async with multihost.begin() as connection:
            await connection.execute(text("CREATE TABLE notes (note text PRIMARY KEY)"))
            await connection.execute(text("INSERT INTO notes VALUES ('before')"))
        pair.wait_replayed()
        assert await one(standby, "SELECT count(*) FROM notes WHERE note = 'before'") == 1
        assert await one(pooled, "SELECT count(*) FROM notes") == 1

        pair.kill_primary()
        assert pair.promote() == pair.standby_port

        assert await one(multihost, "SELECT inet_server_port()") == pair.standby_port
        assert await one(multihost, "SELECT note FROM notes") == "before"
        await one(multihost, "INSERT INTO notes VALUES ('multihost') RETURNING note")

        bouncer.retarget(pair.standby_port)
        # the same client connections to PgBouncer: only its server connections changed
        assert await one(pooled, "SELECT inet_server_port()") == pair.standby_port
        await one(pooled, "INSERT INTO notes VALUES ('pgbouncer') RETURNING note")
        assert await one(pooled, "SELECT string_agg(note, ',' ORDER BY note) FROM notes") == (
            "before,multihost,pgbouncer"
        )


async def test_a_pool_through_pgbouncer_survives_its_restart(
    postgres_stack: None, workdir: Path, engines: list[AsyncEngine]
) -> None:
    with PostgresPair(workdir) as pair, PgBouncer(workdir, pair.primary_port) as bouncer:
        engine = create_engine(
            bouncer.url(),
            transaction_pooling=True,
            pool_size=10,
            max_overflow=10,
            pool_pre_ping=True,  # finds the connections that PgBouncer's crash cut
        )
        engines.append(engine)
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE hits (n int PRIMARY KEY)"))

        async def hit(n: int) -> None:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO hits VALUES (:n)"), {"n": n})
                await connection.execute(text("SELECT count(*) FROM hits WHERE n <= :n"), {"n": n})

        await asyncio.gather(*(hit(n) for n in range(50)))
        assert await one(engine, "SELECT count(*) FROM hits") == 50

        bouncer.restart()
        await asyncio.gather(*(hit(n) for n in range(50, 100)))
        assert await one(engine, "SELECT count(*) FROM hits") == 100


async def test_sentinel_fails_the_master_over_with_its_data(workdir: Path) -> None:
    require_installed(redis_missing())
    with RedisSentinels(workdir) as redis:
        key, value = f"ha:{uuid.uuid4().hex}", "kept"
        old = redis.master_address()
        async with Redis(host=old[0], port=old[1], decode_responses=True) as master:
            await master.set(key, value)
            assert await master.wait(1, 2000) == 1  # the replica has it

        assert redis.kill_master() == old
        new = redis.wait_for_failover(timeout=15)
        assert new != old
        async with Redis(host=new[0], port=new[1], decode_responses=True) as promoted:
            assert await promoted.get(key) == value

        sentinel = Sentinel(redis.sentinels, socket_timeout=2)
        client = sentinel.master_for(redis.service_name, socket_timeout=2, decode_responses=True)
        try:
            await client.set(f"{key}:after", "written")
            assert await client.get(f"{key}:after") == "written"
            assert await client.get(key) == value
        finally:
            await client.aclose()
            for connection in sentinel.sentinels:
                await connection.aclose()


async def test_patroni_promotes_the_synchronous_standby_when_the_leaders_host_dies(
    workdir: Path, engines: list[AsyncEngine]
) -> None:
    require_installed(patroni_missing() or postgres_missing())
    with PatroniCluster(workdir) as cluster:
        engine = create_engine(cluster.multihost_url(), pool_pre_ping=True)
        engines.append(engine)
        old = cluster.leader()
        assert await one(engine, "SELECT inet_server_port()") == old.port
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE notes (note text PRIMARY KEY)"))
            await connection.execute(text("INSERT INTO notes VALUES ('before')"))
        cluster.wait_replayed()
        for node in cluster.nodes:
            assert cluster.psql(node.port, "SELECT string_agg(note, ',') FROM notes") == "before"

        assert cluster.kill_leader_host() == old
        killed_at = time.monotonic()
        port = cluster.wait_for_new_leader(timeout=PATRONI_FAILOVER_BOUND + 15)
        assert time.monotonic() - killed_at < PATRONI_FAILOVER_BOUND
        assert port != old.port
        assert cluster.leader().port == port

        # the same engine: its connection to the dead leader is found broken and replaced
        assert await one(engine, "SELECT inet_server_port()") == port
        assert await one(engine, "SELECT note FROM notes") == "before"
        await one(engine, "INSERT INTO notes VALUES ('after') RETURNING note")
        assert cluster.psql(port, "SELECT string_agg(note, ',' ORDER BY note) FROM notes") == (
            "after,before"
        )
