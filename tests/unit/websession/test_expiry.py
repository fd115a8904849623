"""When a web session ends: the absolute clock, and the idle clock of a session touched only
once per touch interval."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import AtomicMiddleware, create_engine
from fastapi_atomic.websession import MemoryStore, WebSessionDep, WebSessionManager


def session_app(now: list[float], **timeouts: float) -> tuple[FastAPI, AsyncEngine]:
    """An app with web sessions in memory, on a clock the test moves (``now[0]``)."""
    manager = WebSessionManager(
        MemoryStore(), ["k" * 32], secure=False, clock=lambda: now[0], **timeouts
    )
    engine = create_engine("sqlite+aiosqlite://")
    app = FastAPI()
    app.add_middleware(AtomicMiddleware, engine=engine, websessions=manager)
    return app, engine


async def test_regenerating_does_not_restart_the_absolute_clock() -> None:
    """Found by the state-machine test: an anonymous session regenerated every few minutes
    outlived its absolute timeout, because the new id got a new start time."""
    now = [1_000_000.0]
    app, engine = session_app(now, idle_timeout=100, absolute_timeout=250, touch_interval=0)

    @app.post("/write")
    async def write(websession: WebSessionDep) -> None:
        websession["a"] = now[0]

    @app.post("/regenerate")
    async def regenerate(websession: WebSessionDep) -> None:
        websession.regenerate()

    @app.get("/live")
    async def live(websession: WebSessionDep) -> bool:
        return websession.is_live

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post("/write")
        now[0] += 99
        first_id = client.cookies["session"]
        await client.post("/regenerate")
        assert client.cookies["session"] != first_id
        now[0] += 60
        await client.post("/write")  # idle clock touched: 100 s more of idle time
        assert (await client.get("/live")).json() is True
        now[0] += 99  # 258 s after the session began: past the absolute timeout
        assert (await client.get("/live")).json() is False
    await engine.dispose()


IDLE, TOUCH = 100.0, 30.0


@pytest.fixture
async def idle_client() -> AsyncIterator[tuple[httpx.AsyncClient, list[float]]]:
    """A session app whose clock the test moves, with an idle timeout and a touch interval."""
    now = [1_000_000.0]
    app, engine = session_app(now, idle_timeout=IDLE, absolute_timeout=10_000, touch_interval=TOUCH)

    @app.post("/start")
    async def start(websession: WebSessionDep) -> None:
        websession.login("1")

    @app.get("/expires")
    async def expires(websession: WebSessionDep) -> float | None:
        return websession.expires_at

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client, now
    await engine.dispose()


async def _expires(client: httpx.AsyncClient) -> float | None:
    value: float | None = (await client.get("/expires")).json()
    return value


async def test_a_session_lives_its_idle_timeout_after_every_request(
    idle_client: tuple[httpx.AsyncClient, list[float]],
) -> None:
    """A request between two touches writes nothing; the session must still live a full idle
    timeout after it (it ended up to one touch interval early)."""
    client, now = idle_client
    await client.post("/start")
    now[0] += TOUCH - 1  # a request whose touch is not due: last_seen_at stays as stored
    last_request = now[0]
    reported = await _expires(client)
    assert reported is not None and reported >= last_request + IDLE
    now[0] = last_request + IDLE - 0.5
    assert await _expires(client) is not None  # alive a whole idle timeout later


async def test_the_reported_expiry_is_the_one_after_this_requests_touch(
    idle_client: tuple[httpx.AsyncClient, list[float]],
) -> None:
    client, now = idle_client
    await client.post("/start")
    now[0] += TOUCH + 1  # this request's touch is due
    asked_at = now[0]
    reported = await _expires(client)
    assert reported is not None and reported >= asked_at + IDLE
    now[0] = reported + 0.5  # no request meanwhile: it ended when it said it would
    assert await _expires(client) is None
