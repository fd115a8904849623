"""Idempotency keys on real databases: replay, mismatch, in-flight conflict, release, takeover."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import (
    AtomicMiddleware,
    Backoff,
    DBDep,
    IdempotencyKey,
    IdempotencyKeys,
    UnitOfWorkDep,
    claim_idempotency_key,
    create_engine,
    idempotency_table,
)

metadata = MetaData()
effects = Table(
    "effects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False),
)
keys_table = idempotency_table(metadata, name="test_idempotency_keys")


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    engine: AsyncEngine
    clock: Clock
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    #: the handler answers 503 (a backing service down) while this is set
    unavailable: bool = False

    async def effect_count(self) -> int:
        async with self.engine.connect() as connection:
            return int(
                (await connection.execute(select(func.count()).select_from(effects))).scalar_one()
            )


async def idempotency_key(
    request: Request, x_user: Annotated[str, Header()] = "alice"
) -> IdempotencyKey | None:
    """The app's own dependency: it knows who owns the key (here, a header says)."""
    return await claim_idempotency_key(request, owner=x_user)


Idempotent = Annotated[IdempotencyKey | None, Depends(idempotency_key)]


def build_app(world: World) -> FastAPI:
    keys = IdempotencyKeys(keys_table, lease_seconds=30, ttl_seconds=3600, clock=world.clock)
    app = FastAPI()
    app.add_middleware(
        AtomicMiddleware,
        engine=world.engine,
        idempotency_keys=keys,
        backoff=Backoff(attempts=3, base=0.001, cap=0.002),
    )

    @app.post("/effects", status_code=201)
    async def create(body: dict[str, str], db: DBDep, _key: Idempotent) -> dict[str, int | str]:
        result = await db.execute(insert(effects).values(name=body["name"]))
        if body.get("wait"):
            world.entered.set()
            await asyncio.wait_for(world.gate.wait(), 5)
        if body.get("outcome") == "declined":
            raise HTTPException(402, "declined")
        if body.get("outcome") == "conflict":
            raise HTTPException(409, "try again later")
        if world.unavailable:
            raise HTTPException(503, "a service did not answer")
        assert result.inserted_primary_key is not None
        return {"id": int(result.inserted_primary_key[0]), "name": body["name"]}

    @app.post("/phase-then-crash")
    async def phase_then_crash(uow: UnitOfWorkDep, _key: Idempotent) -> None:
        await uow.run_phase(lambda db: db.execute(insert(effects).values(name="phase")))
        raise RuntimeError("crash after the phase")

    return app


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)
    yield World(engine=engine, clock=Clock())
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
    await engine.dispose()


@contextlib.asynccontextmanager
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(world), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def test_repeat_returns_the_first_response_and_does_nothing_more(world: World) -> None:
    async with client(world) as c:
        first = await c.post("/effects", json={"name": "a"}, headers=key("k1"))
        second = await c.post("/effects", json={"name": "a"}, headers=key("k1"))
    assert first.status_code == second.status_code == 201, first.text
    assert first.content == second.content
    assert second.headers["content-type"] == "application/json"
    assert await world.effect_count() == 1


async def test_without_a_key_every_request_acts(world: World) -> None:
    async with client(world) as c:
        await c.post("/effects", json={"name": "a"})
        await c.post("/effects", json={"name": "a"})
    assert await world.effect_count() == 2


async def test_same_key_other_body_is_422(world: World) -> None:
    async with client(world) as c:
        await c.post("/effects", json={"name": "a"}, headers=key("k1"))
        other = await c.post("/effects", json={"name": "b"}, headers=key("k1"))
    assert other.status_code == 422
    assert "different request" in other.json()["detail"]
    assert await world.effect_count() == 1


async def test_keys_belong_to_their_owner(world: World) -> None:
    async with client(world) as c:
        a = await c.post("/effects", json={"name": "a"}, headers={**key("k"), "X-User": "alice"})
        b = await c.post("/effects", json={"name": "a"}, headers={**key("k"), "X-User": "bob"})
    assert a.json()["id"] != b.json()["id"]
    assert await world.effect_count() == 2


async def test_repeat_while_the_first_runs_is_409_or_waits(world: World) -> None:
    async with client(world) as c:
        first = asyncio.create_task(
            c.post("/effects", json={"name": "a", "wait": "1"}, headers=key("k1"))
        )
        await asyncio.wait_for(world.entered.wait(), 5)
        repeat = asyncio.create_task(
            c.post("/effects", json={"name": "a", "wait": "1"}, headers=key("k1"))
        )
        # PostgreSQL answers the repeat while the first still runs: wait for that answer
        # rather than a fixed time that a loaded machine may not keep. On SQLite the repeat
        # waits for the writer, whatever the time given.
        sqlite = world.engine.dialect.name == "sqlite"
        await asyncio.wait({repeat}, timeout=0.2 if sqlite else 4)
        world.gate.set()
        first_response, repeat_response = await first, await repeat
    assert first_response.status_code == 201
    if world.engine.dialect.name == "sqlite":
        # One writer at a time: the repeat waits for the first to commit, then replays it.
        assert repeat_response.content == first_response.content
    else:
        assert repeat_response.status_code == 409
        assert "in progress" in repeat_response.json()["detail"]
        assert repeat_response.headers["retry-after"] == "30"  # the lease, on a frozen clock
    assert await world.effect_count() == 1


async def test_a_decline_is_final_and_replayed(world: World) -> None:
    async with client(world) as c:
        first = await c.post(
            "/effects", json={"name": "a", "outcome": "declined"}, headers=key("d")
        )
        again = await c.post(
            "/effects", json={"name": "a", "outcome": "declined"}, headers=key("d")
        )
    assert first.status_code == again.status_code == 402
    assert first.json() == again.json() == {"detail": "declined"}


async def test_a_conflict_releases_the_key(world: World) -> None:
    async with client(world) as c:
        first = await c.post(
            "/effects", json={"name": "a", "outcome": "conflict"}, headers=key("c")
        )
        assert first.status_code == 409
        # The body is the same, so the key must be free again and the handler runs again.
        again = await c.post(
            "/effects", json={"name": "a", "outcome": "conflict"}, headers=key("c")
        )
    assert again.status_code == 409
    assert await world.effect_count() == 0


async def test_a_request_that_failed_after_a_phase_is_taken_over_at_once(world: World) -> None:
    """It ended: its retry need not wait for the lease (it used to be 409 for the whole lease)."""
    async with client(world) as c:
        crashed = await c.post("/phase-then-crash", headers=key("p"))
        assert crashed.status_code == 500
        taken_over = await c.post("/phase-then-crash", headers=key("p"))
    assert taken_over.status_code == 500  # the handler ran again (and crashed again)
    assert await world.effect_count() == 2


async def test_a_key_held_by_a_process_that_died_says_when_to_retry(world: World) -> None:
    """Nothing ended the lease: the repeat is a 409 with Retry-After, then takes over."""
    fingerprint = hashlib.sha256(b"POST\x00/phase-then-crash\x00\x00").hexdigest()
    async with world.engine.begin() as connection:
        await connection.execute(
            insert(keys_table).values(
                owner="alice",
                key="dead",
                fingerprint=fingerprint,
                locked_by="a-request-of-a-dead-process",
                locked_until=world.clock.now + 12.5,
                created_at=world.clock.now,
                expires_at=world.clock.now + 3600,
            )
        )
    async with client(world) as c:
        blocked = await c.post("/phase-then-crash", headers=key("dead"))
        assert blocked.status_code == 409
        assert blocked.headers["retry-after"] == "13"
        world.clock.now += 13
        taken_over = await c.post("/phase-then-crash", headers=key("dead"))
    assert taken_over.status_code == 500  # it ran
    assert await world.effect_count() == 1


async def test_a_5xx_that_changed_nothing_is_not_kept(world: World) -> None:
    """A 503 says "try again": replaying it for a day would make that a lie."""
    world.unavailable = True
    async with client(world) as c:
        first = await c.post("/effects", json={"name": "a"}, headers=key("u"))
        assert first.status_code == 503
        world.unavailable = False
        again = await c.post("/effects", json={"name": "a"}, headers=key("u"))
    assert again.status_code == 201
    assert await world.effect_count() == 1


async def test_keys_expire(world: World) -> None:
    async with client(world) as c:
        await c.post("/effects", json={"name": "a"}, headers=key("e"))
        world.clock.now += 3601
        again = await c.post("/effects", json={"name": "a"}, headers=key("e"))
    assert again.status_code == 201
    assert await world.effect_count() == 2


@pytest.mark.parametrize("bad", ["", "x" * 256, "caf\u00e9"])
async def test_malformed_keys_are_422(world: World, bad: str) -> None:
    async with client(world) as c:
        response = await c.post(
            "/effects",
            json={"name": "a"},
            headers=[(b"Idempotency-Key", bad.encode())],
        )
    assert response.status_code == 422
    assert await world.effect_count() == 0


async def test_the_response_is_stored_with_the_effect(world: World) -> None:
    async with client(world) as c:
        await c.post("/effects", json={"name": "a"}, headers=key("s"))
    async with world.engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT status_code, locked_by FROM test_idempotency_keys")
            )
        ).one()
    assert tuple(row) == (201, None)
