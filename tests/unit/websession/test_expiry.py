"""The absolute timeout counts from the session's start, whatever happened to its id since."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from fastapi_atomic import AtomicMiddleware, create_engine
from fastapi_atomic.websession import MemoryStore, WebSessionDep, WebSessionManager


async def test_regenerating_does_not_restart_the_absolute_clock() -> None:
    """Found by the state-machine test: an anonymous session regenerated every few minutes
    outlived its absolute timeout, because the new id got a new start time."""
    now = [1_000_000.0]
    manager = WebSessionManager(
        MemoryStore(),
        ["k" * 32],
        idle_timeout=100,
        absolute_timeout=250,
        touch_interval=0,
        secure=False,
        clock=lambda: now[0],
    )
    engine = create_engine("sqlite+aiosqlite://")
    app = FastAPI()
    app.add_middleware(AtomicMiddleware, engine=engine, websessions=manager)

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
