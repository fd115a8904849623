"""What a request's access line and the metrics say, on PostgreSQL: a commit, a read, a
rollback, an exception, a request re-run after a serialization failure, and the pool's gauges.

A database of its own (made here, dropped at the end) and an app of its own: the library's
middleware with the shop's access log around it, each counting into a registry of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from postgres_admin import create_database, drop_database
from prometheus_client import CollectorRegistry
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import (
    AtomicMetrics,
    AtomicMiddleware,
    Backoff,
    DBDep,
    PoolMetrics,
    create_engine,
    isolation_level,
)
from shop.logs import AccessLogMiddleware, HttpMetrics, JsonFormatter
from shop.request_ids import RequestIdFilter, RequestIdMiddleware

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False, unique=True),
    Column("grp", String(20), nullable=False, default="a"),
)


@pytest.fixture
def own_database(postgres_server: str) -> Iterator[str]:
    name = f"test_operations_{uuid.uuid4().hex[:10]}"
    url = asyncio.run(create_database(postgres_server, name))
    try:
        yield url
    finally:
        asyncio.run(drop_database(postgres_server, name))


@dataclass
class Shop:
    engine: AsyncEngine
    client: httpx.AsyncClient
    atomic: AtomicMetrics
    http: HttpMetrics
    pools: PoolMetrics
    barrier: asyncio.Barrier
    gate: asyncio.Event

    def count(self, metric: Any, *labels: str) -> float:
        return float((metric.labels(*labels) if labels else metric)._value.get())


@pytest.fixture
async def shop(own_database: str) -> AsyncIterator[Shop]:
    engine = create_engine(own_database, pool_size=2, pool_timeout=5)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    shop = Shop(
        engine=engine,
        client=None,  # type: ignore[arg-type]
        atomic=AtomicMetrics.create(CollectorRegistry()),
        http=HttpMetrics.create(CollectorRegistry()),
        pools=PoolMetrics.create(CollectorRegistry()),
        barrier=asyncio.Barrier(2),
        gate=asyncio.Event(),
    )
    shop.pools.watch(engine, "default")
    app = FastAPI()
    first_attempts: set[str] = set()

    @app.post("/items/{name}")
    async def add(name: str, db: DBDep) -> dict[str, str]:
        await db.execute(insert(items).values(name=name))
        return {"name": name}

    @app.get("/items")
    async def names(db: DBDep) -> list[str]:
        return list(await db.scalars(select(items.c.name).order_by(items.c.id)))

    @app.post("/refuse/{name}")
    async def refuse(name: str, db: DBDep) -> None:
        await db.execute(insert(items).values(name=name))
        raise HTTPException(409, "refused after a write")

    @app.post("/crash/{name}")
    async def crash(name: str, db: DBDep) -> None:
        await db.execute(insert(items).values(name=name))
        raise RuntimeError("a bug after a write")

    @app.post("/skew/{name}", dependencies=[Depends(isolation_level("SERIALIZABLE"))])
    async def skew(name: str, db: DBDep) -> dict[str, int]:
        # Write skew: both count the group, both insert; SERIALIZABLE aborts one, re-run once.
        seen = await db.scalar(select(func.count()).select_from(items).where(items.c.grp == "g"))
        if name not in first_attempts:
            first_attempts.add(name)
            await asyncio.wait_for(shop.barrier.wait(), timeout=10)
        await db.execute(insert(items).values(name=name, grp="g"))
        return {"seen": int(seen or 0)}

    @app.get("/hold")
    async def hold(db: DBDep) -> None:
        await db.execute(select(1))  # takes a connection, keeps it until the gate opens
        await asyncio.wait_for(shop.gate.wait(), timeout=10)

    app.add_middleware(
        AtomicMiddleware,
        engine=engine,
        backoff=Backoff(attempts=4, base=0.001, cap=0.005),
        metrics=shop.atomic,
    )
    app.add_middleware(AccessLogMiddleware, metrics=shop.http)
    app.add_middleware(RequestIdMiddleware)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        shop.client = client
        yield shop
    await engine.dispose()


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Any:
    """The access line of a request id, as its JSON object."""
    caplog.set_level(logging.INFO, logger="shop.access")
    caplog.handler.addFilter(RequestIdFilter())

    def line(rid: str) -> dict[str, Any]:
        found = [r for r in caplog.records if r.name == "shop.access" and r.request_id == rid]
        assert len(found) == 1, found
        return dict(json.loads(JsonFormatter().format(found[0])))

    return line


async def send(shop: Shop, method: str, path: str, rid: str) -> int:
    response = await shop.client.request(method, path, headers={"X-Request-ID": rid})
    return response.status_code


def outcome_of(line: dict[str, Any]) -> tuple[Any, ...]:
    return (line["outcome"], line["rollback_reason"], line["retries"], line["retry_reasons"])


async def test_commit_read_rollback_and_exception(shop: Shop, lines: Any) -> None:
    assert await send(shop, "POST", "/items/a", "commit") == 200
    assert outcome_of(lines("commit")) == ("committed", None, 0, [])
    assert await send(shop, "GET", "/items", "read") == 200
    assert outcome_of(lines("read")) == ("read_only", None, 0, [])
    assert await send(shop, "POST", "/refuse/b", "refuse") == 409
    assert outcome_of(lines("refuse")) == ("rolled_back", "error_status", 0, [])
    assert await send(shop, "POST", "/crash/c", "crash") == 500
    assert outcome_of(lines("crash")) == ("rolled_back", "exception", 0, [])
    assert lines("crash")["route"] == "/crash/{name}"

    assert (await shop.client.get("/items")).json() == ["a"]  # b and c were rolled back
    assert shop.count(shop.atomic.requests, "committed") == 3  # a write and two reads
    assert shop.count(shop.atomic.commits) == 3
    assert shop.count(shop.atomic.rollbacks, "error_status") == 1
    assert shop.count(shop.atomic.requests, "error") == 1
    assert shop.http.latency.labels("POST", "/items/{name}", "2xx")._sum.get() > 0
    assert shop.http.latency.labels("POST", "/refuse/{name}", "4xx")._sum.get() > 0
    assert shop.http.latency.labels("POST", "/crash/{name}", "5xx")._sum.get() > 0
    assert shop.count(shop.pools.in_use, "default") == 0  # every connection went back


async def test_a_request_re_run_after_a_serialization_failure(shop: Shop, lines: Any) -> None:
    first, second = await asyncio.gather(
        send(shop, "POST", "/skew/first", "first"), send(shop, "POST", "/skew/second", "second")
    )
    assert (first, second) == (200, 200)
    outcomes = sorted([outcome_of(lines("first")), outcome_of(lines("second"))])
    assert outcomes == [
        ("committed", None, 0, []),
        ("committed", None, 1, ["serialization_failure"]),
    ]
    assert shop.count(shop.atomic.retries, "serialization_failure") == 1
    assert shop.count(shop.atomic.requests, "committed") == 2


async def test_the_pool_gauges_follow_connections_and_waiters(shop: Shop) -> None:
    held = [asyncio.create_task(shop.client.get("/hold")) for _ in range(3)]  # a pool of 2
    for _ in range(500):  # two connect (and are checked out), the third waits
        if (
            shop.count(shop.pools.waiting, "default")
            == 1
            == shop.count(shop.pools.in_use, "default") - 1
        ):
            break
        await asyncio.sleep(0.01)
    assert shop.count(shop.pools.in_use, "default") == 2
    assert shop.count(shop.pools.waiting, "default") == 1
    shop.gate.set()
    assert [(await request).status_code for request in held] == [200, 200, 200]
    assert shop.count(shop.pools.in_use, "default") == 0
    assert shop.count(shop.pools.waiting, "default") == 0
