"""Idempotency keys while PostgreSQL is away (a FaultProxy between the app and the server):

- a key that cannot be claimed because the database refuses connections is a 503 ("try
  again"), not a 409 ("still in progress"): nothing is in progress;
- a request that fails while the database is away cannot release its key as it ends: the
  release is retried in the background, so once the database is back the client's retry runs
  at once instead of meeting a 409 for the rest of the lease (a minute).

A small app of its own (a table of effects, a table of keys) keeps these about the library.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fault_proxy import FaultProxy
from shop_faults import direct_engine, through
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import (
    AtomicMiddleware,
    Backoff,
    DBDep,
    IdempotencyKey,
    IdempotencyKeys,
    claim_idempotency_key,
    create_engine,
    idempotency_table,
)

pytestmark = pytest.mark.postgres

metadata = MetaData()
effects = Table(
    "outage_effects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
)
keys_table = idempotency_table(metadata, name="outage_idempotency_keys")

#: the keys' lease: how long a client's retry would meet a 409 if the key stayed locked
LEASE_SECONDS = 60.0
#: how soon after the database is back the key must be free (the background release backs
#: off 0.25 s, 0.5 s, 1 s, ...; the database comes back here about a second after the failure)
RECOVERY_BOUND = 3.0


async def idempotency_key(request: Request) -> IdempotencyKey | None:
    return await claim_idempotency_key(request, owner="alice")


Idempotent = Annotated[IdempotencyKey | None, Depends(idempotency_key)]


@dataclass
class World:
    keys: IdempotencyKeys
    #: past the proxy, to see what the server holds whatever the proxy does
    direct: AsyncEngine
    proxy: FaultProxy
    client: httpx.AsyncClient = field(init=False)
    #: set by a handler told to wait, once it claimed its key and wrote; it waits for ``gate``
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def key_row(self, key: str) -> dict[str, Any] | None:
        async with self.direct.connect() as connection:
            found = await connection.execute(select(keys_table).where(keys_table.c.key == key))
            row = found.mappings().first()
        return dict(row) if row is not None else None

    async def effect_count(self) -> int:
        async with self.direct.connect() as connection:
            found = await connection.scalar(select(func.count()).select_from(effects))
        return int(found or 0)


def build_app(world: World, engine: AsyncEngine) -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        AtomicMiddleware,
        engine=engine,
        idempotency_keys=world.keys,
        backoff=Backoff(attempts=3, base=0.001, cap=0.002),
    )

    @app.post("/effects", status_code=201)
    async def create(body: dict[str, str], db: DBDep, _key: Idempotent) -> dict[str, Any]:
        made = await db.scalar(insert(effects).values(name=body["name"]).returning(effects.c.id))
        if body.get("wait"):
            world.entered.set()
            await asyncio.wait_for(world.gate.wait(), 10)
        await db.execute(text("SELECT 1"))  # fails if the database went away meanwhile
        return {"id": made, "name": body["name"]}

    return app


@pytest.fixture
async def world(own_database: str, postgres_proxy: FaultProxy) -> AsyncIterator[World]:
    """The app, its engine through the proxy; its tables made on the test's own database."""
    async with direct_engine(own_database) as direct:
        async with direct.begin() as connection:
            await connection.run_sync(metadata.create_all)
        engine = create_engine(through(own_database, postgres_proxy))
        keys = IdempotencyKeys(keys_table, lease_seconds=LEASE_SECONDS)
        world = World(keys=keys, direct=direct, proxy=postgres_proxy)
        transport = httpx.ASGITransport(app=build_app(world, engine), raise_app_exceptions=False)
        world.client = httpx.AsyncClient(transport=transport, base_url="http://t")
        try:
            yield world
        finally:
            postgres_proxy.pass_through()
            # a release still trying (a test that failed early) must not outlive the test
            for task in list(keys._deferred):
                task.cancel()
            await asyncio.gather(*keys._deferred, return_exceptions=True)
            await world.client.aclose()
            await engine.dispose()


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until ``check`` held; fails after ``within``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def refuse(proxy: FaultProxy) -> None:
    """Connections are refused: the claim's first attempt fails to connect, an OSError that
    is not retried (this was a 503 before the change too)."""
    proxy.refuse()


def cut_every_claim(proxy: FaultProxy) -> None:
    """Connections are made, and each is lost as its claim reaches the server (a server going
    down and up, a failover under way): every claim attempt fails as a lost connection, which
    is retryable, so all five are tried. It used to end as a 409 "still in progress"."""
    proxy.cut_on(keys_table.name.encode(), forward=False)


@pytest.mark.parametrize("fault", [refuse, cut_every_claim], ids=["refused", "cut"])
async def test_a_key_that_cannot_be_claimed_is_503_not_409(
    world: World, fault: Callable[[FaultProxy], None]
) -> None:
    """The database cannot be reached for the claim: that is an outage (503, Retry-After),
    not a request in progress (409); nothing is claimed, and once the database is back the
    same request runs."""
    fault(world.proxy)
    response = await world.client.post("/effects", json={"name": "a"}, headers=key("away"))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert "in progress" not in response.text
    faults = world.proxy.faults
    if fault is cut_every_claim:
        # five claim attempts in each of the middleware's three attempts at the request; the
        # releases tried in the background (a lost claim may have landed) are cut too, as
        # many as had started by now
        assert faults["cut_before_forwarding"] >= 15, faults
    else:
        assert faults["refused"] >= 1, faults

    world.proxy.pass_through()
    assert await world.key_row("away") is None  # nothing claimed
    again = await world.client.post("/effects", json={"name": "a"}, headers=key("away"))
    assert again.status_code == 201, again.text
    assert await world.effect_count() == 1


async def test_a_claim_that_landed_unseen_is_freed_once_the_database_is_back(world: World) -> None:
    """The claim's COMMIT reaches the server, and the connection is lost before its answer
    comes back; the server then refuses connections. The request cannot run (503), but the key
    is locked by it: once the database is back the release tried in the background frees it,
    and the client's retry runs instead of meeting a 409 for the rest of the lease."""
    world.proxy.cut_on(b"COMMIT", forward=True, times=1, and_refuse=True)
    failed = await world.client.post("/effects", json={"name": "a"}, headers=key("unseen"))
    assert failed.status_code == 503, failed.text

    async def landed() -> bool:
        return await world.key_row("unseen") is not None

    # The server got the COMMIT before the cut, but the 503 can come back before the server's
    # backend has run it (a loaded machine): the claim lands unseen, a moment later.
    await eventually(landed, within=10)
    held = await world.key_row("unseen")
    assert held is not None and held["locked_by"] is not None  # the claim landed, unseen
    assert held["locked_until"] > time.time() + LEASE_SECONDS - 5

    world.proxy.pass_through()

    async def released() -> bool:
        return await world.key_row("unseen") is None

    await eventually(released, within=RECOVERY_BOUND)
    retried = await world.client.post("/effects", json={"name": "a"}, headers=key("unseen"))
    assert retried.status_code == 201, retried.text
    assert await world.effect_count() == 1


async def test_a_key_the_rollback_could_not_release_is_freed_once_the_database_is_back(
    world: World,
) -> None:
    """The request claimed its key and wrote; then the database went away (connections cut,
    new ones refused): the request fails, and its rollback cannot release the key. While the
    database stays away the key stays locked, for the lease; once it is back, the release
    tried in the background frees it, and the client's retry runs."""
    body = {"name": "a", "wait": "1"}
    first = asyncio.create_task(world.client.post("/effects", json=body, headers=key("cut")))
    await asyncio.wait_for(world.entered.wait(), 10)
    claimed = await world.key_row("cut")
    assert claimed is not None and claimed["locked_by"] is not None

    world.proxy.refuse()
    assert world.proxy.cut_all() >= 1  # the request's own connection among them
    world.gate.set()
    failed = await asyncio.wait_for(first, 10)
    assert failed.status_code == 503, failed.text

    # The counterfactual: while the database refuses, the release cannot land, and the key
    # stays locked (a retry now would be refused for the lease).
    await asyncio.sleep(0.5)  # a background attempt or two failed meanwhile
    held = await world.key_row("cut")
    assert held is not None
    assert held["locked_by"] == claimed["locked_by"]
    assert held["locked_until"] > time.time() + LEASE_SECONDS - 5
    assert held["status_code"] is None

    world.proxy.pass_through()
    back = time.monotonic()

    async def released() -> bool:
        return await world.key_row("cut") is None  # nothing was committed: the key is deleted

    try:
        await eventually(released, within=RECOVERY_BOUND)
    except AssertionError:
        refused = await world.client.post("/effects", json=body, headers=key("cut"))
        pytest.fail(
            f"the key is still locked {RECOVERY_BOUND} s after the database came back; "
            f"a retry gets {refused.status_code} {refused.text}"
        )
    freed_after = time.monotonic() - back
    retried = await world.client.post("/effects", json=body, headers=key("cut"))
    assert retried.status_code == 201, retried.text
    assert await world.effect_count() == 1  # the first attempt's insert was rolled back
    stored = await world.key_row("cut")
    assert stored is not None
    assert (stored["status_code"], stored["locked_by"], stored["locked_until"]) == (201, None, None)
    assert not world.keys._deferred
    print(f"\nkey freed {freed_after:.2f} s after the database was back")
