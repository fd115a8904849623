from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from shop_testing import ADMIN, Shopper, client_for, log_in, make_settings, running

from shop.api.deps import get_gateway
from shop.payments import FakeGateway
from shop.settings import Settings

_emails = itertools.count()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with running(settings) as application:
        yield application


@pytest.fixture
def gateway(app: FastAPI) -> FakeGateway:
    """The card gateway the app's routes use, swapped in as FastAPI's documentation teaches."""
    fake = FakeGateway()
    app.dependency_overrides[get_gateway] = lambda: fake
    return fake


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


@pytest.fixture
async def new_shopper(app: FastAPI) -> AsyncIterator[Callable[..., Any]]:
    """Sign up and log in a new customer (each with their own browser)."""
    browsers: list[httpx.AsyncClient] = []

    async def make(name: str = "Customer") -> Shopper:
        email, password = f"customer{next(_emails)}@example.com", "a good password"
        async with client_for(app) as anonymous:
            created = await anonymous.post(
                "/api/users", json={"name": name, "email": email, "password": password}
            )
        assert created.status_code == 201, created.text
        browser, csrf = await log_in(app, email, password)
        browsers.append(browser)
        body = created.json()
        return Shopper(browser, body["id"], body["accounts"][0]["id"], email, password, csrf)

    yield make
    for browser in browsers:
        await browser.aclose()


@pytest.fixture
async def admin(app: FastAPI) -> AsyncIterator[Shopper]:
    browser, csrf = await log_in(app, *ADMIN)
    me = (await browser.get("/api/session")).json()["user"]
    yield Shopper(browser, me["id"], 0, ADMIN[0], ADMIN[1], csrf)
    await browser.aclose()
