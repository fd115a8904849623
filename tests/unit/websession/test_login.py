"""Logging in keeps a guest's data and the same user's, and never hands one user's to another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import AtomicMiddleware, create_engine
from fastapi_atomic.websession import MemoryStore, WebSessionDep, WebSessionManager


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    engine = create_engine("sqlite+aiosqlite://")
    manager = WebSessionManager(MemoryStore(), ["k" * 32], secure=False)
    app = FastAPI()
    app.add_middleware(AtomicMiddleware, engine=engine, websessions=manager)

    @app.post("/cart/{item}")
    async def add(item: str, websession: WebSessionDep) -> None:
        websession.append("cart", item)

    @app.post("/login/{user}")
    async def login(user: str, websession: WebSessionDep) -> None:
        websession.login(user)

    @app.post("/logout")
    async def logout(websession: WebSessionDep) -> None:
        websession.invalidate()
        websession["flash"] = "You are logged out."  # for the next page, in a new session

    @app.get("/")
    async def read(websession: WebSessionDep) -> dict[str, Any]:
        return {"user": websession.user_id, "data": dict(websession)}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client
    await engine.dispose()


async def test_a_guests_cart_survives_logging_in(browser: httpx.AsyncClient) -> None:
    await browser.post("/cart/mug")
    guest_cookie = browser.cookies["session"]
    await browser.post("/login/ada")
    assert browser.cookies["session"] != guest_cookie  # a new id: no fixation
    assert (await browser.get("/")).json() == {"user": "ada", "data": {"cart": ["mug"]}}


async def test_logging_in_again_as_the_same_user_keeps_the_data(
    browser: httpx.AsyncClient,
) -> None:
    await browser.post("/login/ada")
    await browser.post("/cart/mug")
    await browser.post("/login/ada")
    assert (await browser.get("/")).json() == {"user": "ada", "data": {"cart": ["mug"]}}


async def test_another_user_logging_in_starts_with_nothing_of_the_first(
    browser: httpx.AsyncClient,
) -> None:
    await browser.post("/login/ada")
    await browser.post("/cart/mug")
    adas_cookie = browser.cookies["session"]
    await browser.post("/login/bob")
    assert (await browser.get("/")).json() == {"user": "bob", "data": {}}
    browser.cookies.set("session", adas_cookie)
    assert (await browser.get("/")).json() == {"user": None, "data": {}}  # ada's is over


async def test_a_message_written_after_logging_out_does_not_keep_the_old_session(
    browser: httpx.AsyncClient,
) -> None:
    await browser.post("/login/ada")
    await browser.post("/cart/mug")
    adas_cookie = browser.cookies["session"]
    await browser.post("/logout")
    assert browser.cookies["session"] != adas_cookie
    assert (await browser.get("/")).json() == {
        "user": None,
        "data": {"flash": "You are logged out."},
    }
    browser.cookies.set("session", adas_cookie)
    assert (await browser.get("/")).json() == {"user": None, "data": {}}  # ended on the server


async def test_the_store_starts_and_stops_with_the_app() -> None:
    """The middleware runs the store's start and aclose on the ASGI lifespan."""
    calls: list[str] = []

    class Store(MemoryStore):
        async def start(self, engine: AsyncEngine) -> None:
            calls.append("start")

        async def aclose(self) -> None:
            calls.append("aclose")

    engine = create_engine("sqlite+aiosqlite://")
    app = FastAPI()
    app.add_middleware(
        AtomicMiddleware, engine=engine, websessions=WebSessionManager(Store(), ["k" * 32])
    )
    async with LifespanManager(app):
        assert calls == ["start"]
    assert calls == ["start", "aclose"]
    await engine.dispose()
