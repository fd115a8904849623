"""The log-in throttle shared through the database: two apps on one database (two processes,
or two hosts) count the same failures, on SQLite and PostgreSQL, through the API and the pages.

The client's address is the ASGI ``client`` the transport gives, as uvicorn's proxy-headers
middleware would set it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from shop_testing import make_settings, running
from sqlalchemy import func, select
from storefront_forms import Browser, cheap_passwords

from shop.api.deps import get_login_throttle
from shop.db.models import LoginFailure
from shop.services.throttle import LoginLimits, LoginThrottle

PASSWORD = "a good password"
BLOCKED = {"detail": "Too many failed log-in attempts; try again later."}

Apps = Callable[..., Any]


@pytest.fixture(autouse=True)
def _cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap_passwords(monkeypatch)


@pytest.fixture
async def two_apps(database_url: str) -> AsyncIterator[Apps]:
    """Two apps, each with its own engine, on the test's one database."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> tuple[FastAPI, FastAPI]:
            settings = make_settings(database_url, **overrides)
            first = await stack.enter_async_context(running(settings))
            second = await stack.enter_async_context(running(settings))
            return first, second

        yield start


class Clients:
    """httpx clients of an app, each from its own client address."""

    def __init__(self) -> None:
        self._clients: list[httpx.AsyncClient] = []

    def __call__(self, app: FastAPI, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(
            app=app, raise_app_exceptions=False, client=(address, 40000)
        )
        self._clients.append(httpx.AsyncClient(transport=transport, base_url="http://shop.test"))
        return self._clients[-1]

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


@pytest.fixture
async def client_from() -> AsyncIterator[Clients]:
    clients = Clients()
    yield clients
    await clients.aclose()


async def sign_up(client: httpx.AsyncClient, email: str) -> None:
    body = {"name": "Ada", "email": email, "password": PASSWORD}
    assert (await client.post("/api/users", json=body)).status_code == 201


async def log_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/session", json={"email": email, "password": password})


async def test_failures_in_one_app_count_in_the_other(two_apps: Apps, client_from: Clients) -> None:
    first, second = await two_apps()
    here_first, here_second = client_from(first, "10.0.0.1"), client_from(second, "10.0.0.1")
    await sign_up(here_first, "ada@example.com")
    for n in range(5):
        failed = await log_in((here_first, here_second)[n % 2], "ada@example.com", "wrong one")
        assert failed.status_code == 401
    blocked = await log_in(here_second, "ada@example.com", PASSWORD)
    assert blocked.status_code == 429
    assert blocked.json() == BLOCKED
    assert 890 <= int(blocked.headers["retry-after"]) <= 900
    assert (await log_in(here_first, "ada@example.com", PASSWORD)).status_code == 429
    # The owner, from elsewhere, is not locked out by a guesser at 10.0.0.1.
    elsewhere = client_from(second, "10.0.0.2")
    assert (await log_in(elsewhere, "ada@example.com", PASSWORD)).status_code == 200


async def test_twenty_emails_from_one_address_lock_out_no_one_elsewhere(
    two_apps: Apps, client_from: Clients
) -> None:
    """The reported defect: everyone behind one proxy failing (the proxy's address for all,
    when it is not trusted) locked every user out."""
    first, second = await two_apps(login_max_failures_per_address=20)
    await sign_up(client_from(first, "10.0.0.9"), "ada@example.com")
    behind_proxy = (client_from(first, "10.0.0.1"), client_from(second, "10.0.0.1"))
    for n in range(20):
        failed = await log_in(behind_proxy[n % 2], f"user{n}@example.com", "wrong one")
        assert failed.status_code == 401
    assert (await log_in(behind_proxy[0], "new@example.com", "wrong one")).status_code == 429
    for app in (first, second):
        ada = client_from(app, "10.0.0.2")
        assert (await log_in(ada, "ada@example.com", PASSWORD)).status_code == 200


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


def frozen_throttles(apps: tuple[FastAPI, ...], clock: Clock) -> None:
    """Each app's throttle, on a clock the test moves (FastAPI's override seam)."""

    def on_the_clock(app: FastAPI) -> Callable[[], LoginThrottle]:
        throttle = LoginThrottle(
            app.state.engine,
            LoginLimits(per_email_and_address=5, per_email=50, per_address=100, window=900),
            clock=clock,
        )
        return lambda: throttle

    for app in apps:
        app.dependency_overrides[get_login_throttle] = on_the_clock(app)


async def test_a_block_ends_after_the_window_however_often_it_is_knocked_on(
    two_apps: Apps, client_from: Clients
) -> None:
    clock = Clock()
    first, second = apps = await two_apps()
    frozen_throttles(apps, clock)
    here = (client_from(first, "10.0.0.1"), client_from(second, "10.0.0.1"))
    await sign_up(here[0], "ada@example.com")
    for n in range(5):
        assert (await log_in(here[n % 2], "ada@example.com", "wrong one")).status_code == 401
    for elapsed in (100, 500, 899):
        clock.now = 2_000_000.0 + elapsed
        for client in here:
            for password in ("wrong one", PASSWORD):  # refused whatever the password
                blocked = await log_in(client, "ada@example.com", password)
                assert blocked.status_code == 429
                assert blocked.headers["retry-after"] == str(900 - elapsed)
    clock.now = 2_000_000.0 + 900
    assert (await log_in(here[1], "ada@example.com", PASSWORD)).status_code == 200


async def test_a_success_forgets_the_failures_before_it(
    two_apps: Apps, client_from: Clients
) -> None:
    first, second = await two_apps()
    here = (client_from(first, "10.0.0.1"), client_from(second, "10.0.0.1"))
    await sign_up(here[0], "ada@example.com")
    for _ in range(2):
        for n in range(4):
            assert (await log_in(here[n % 2], "ada@example.com", "wrong")).status_code == 401
        assert (await log_in(here[1], "ada@example.com", PASSWORD)).status_code == 200


async def test_concurrent_failures_in_two_apps_are_all_counted(
    two_apps: Apps, client_from: Clients
) -> None:
    first, second = await two_apps()
    attempts = [
        log_in(client_from((first, second)[n % 2], f"10.0.3.{n}"), "ada@example.com", "wrong")
        for n in range(20)
    ]
    answers = await asyncio.gather(*attempts)
    assert [answer.status_code for answer in answers] == [401] * 20
    async with first.state.engine.connect() as connection:
        written = await connection.scalar(select(func.count()).select_from(LoginFailure))
    assert written == 20


async def test_the_log_in_page_says_when_to_try_again(two_apps: Apps, client_from: Clients) -> None:
    first, second = await two_apps()
    await sign_up(client_from(first, "10.0.0.1"), "ada@example.com")
    browser = Browser(client_from(second, "10.0.0.1"))
    credentials = {"email": "ada@example.com", "password": "wrong one"}
    for _ in range(5):
        failed = await browser.submit("/login", "/login", credentials)
        assert failed.status_code == 401
        assert "retry-after" not in failed.headers
    blocked = await browser.submit("/login", "/login", {**credentials, "password": PASSWORD})
    assert blocked.status_code == 429
    assert "text/html" in blocked.headers["content-type"]
    assert 890 <= int(blocked.headers["retry-after"]) <= 900
