"""Logging in and out on every store: fixation, tampering, replay, expiry, rotation, revocation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from shop_testing import (
    Shopper,
    add_product,
    client_for,
    from_account,
    log_in,
    make_settings,
    order,
    running,
)

from shop.settings import Settings

STORES = ["sql-sqlite", "sql-postgres", "redis", "memory"]


def settings_for(request: pytest.FixtureRequest, store: str, **overrides: Any) -> Settings:
    if store == "sql-postgres":
        return make_settings(request.getfixturevalue("postgres_url"), **overrides)
    database = request.getfixturevalue("sqlite_url")
    if store == "redis":
        request.getfixturevalue("redis_url")
        return make_settings(database, session_store="redis", **overrides)
    if store == "memory":
        return make_settings(database, session_store="memory", **overrides)
    return make_settings(database, **overrides)


@pytest.fixture(params=STORES)
def settings(request: pytest.FixtureRequest) -> Settings:
    return settings_for(request, request.param)


SettingsFactory = Callable[..., Settings]


@pytest.fixture(params=STORES)
def settings_factory(request: pytest.FixtureRequest) -> SettingsFactory:
    """Settings for one store, with overrides (fixtures resolved before the test's loop runs)."""
    settings_for(request, request.param)
    return lambda **overrides: settings_for(request, request.param, **overrides)


@pytest.fixture(params=["sql-sqlite", "redis"])
def rotation_settings(request: pytest.FixtureRequest) -> SettingsFactory:
    """Settings of one deployment restarted with other keys: same database, same Redis prefix."""
    prefix = settings_for(request, request.param).redis_prefix
    return lambda **overrides: settings_for(
        request, request.param, redis_prefix=prefix, **overrides
    )


COOKIE = "shop_session"


def session_cookie(client: httpx.AsyncClient) -> str:
    return client.cookies[COOKIE]


async def test_login_returns_the_user_and_a_csrf_token(new_shopper: Callable[..., Any]) -> None:
    shopper: Shopper = await new_shopper("Ada")
    session = (await shopper.get("/api/session")).json()
    assert session["user"]["name"] == "Ada"
    assert session["user"]["roles"] == ["customer"]
    assert session["csrf_token"] == shopper.csrf
    assert session["order_ids"] == []
    assert session["expires_at"].endswith("Z") or "+00:00" in session["expires_at"]


async def test_login_cookie_flags(app: FastAPI, new_shopper: Callable[..., Any]) -> None:
    shopper: Shopper = await new_shopper()
    async with client_for(app) as browser:
        response = await browser.post(
            "/api/session", json={"email": shopper.email, "password": shopper.password}
        )
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert response.headers["cache-control"] == "no-store"


async def test_reading_the_session_sets_no_cookie(new_shopper: Callable[..., Any]) -> None:
    shopper: Shopper = await new_shopper()
    response = await shopper.get("/api/session")
    assert "set-cookie" not in response.headers


async def test_wrong_password_and_unknown_email_look_the_same(
    app: FastAPI, new_shopper: Callable[..., Any]
) -> None:
    shopper: Shopper = await new_shopper()
    async with client_for(app) as browser:
        wrong = await browser.post(
            "/api/session", json={"email": shopper.email, "password": "not the password"}
        )
        unknown = await browser.post(
            "/api/session", json={"email": "nobody@example.com", "password": "whatever1"}
        )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "set-cookie" not in wrong.headers


async def test_fixation_a_planted_session_never_becomes_the_victims(
    app: FastAPI, new_shopper: Callable[..., Any]
) -> None:
    attacker: Shopper = await new_shopper()
    victim: Shopper = await new_shopper()
    planted = session_cookie(attacker.client)
    async with client_for(app) as browser:
        browser.cookies.set(COOKIE, domain="shop.test", value=planted)
        response = await browser.post(
            "/api/session", json={"email": victim.email, "password": victim.password}
        )
        assert response.status_code == 200
        assert session_cookie(browser) != planted
        assert (await browser.get("/api/session")).json()["user"]["email"] == victim.email
    async with client_for(app) as replay:
        replay.cookies.set(COOKIE, domain="shop.test", value=planted)
        assert (await replay.get("/api/session")).status_code == 401


async def test_tampered_cookies_are_401_never_500(
    app: FastAPI, new_shopper: Callable[..., Any]
) -> None:
    shopper: Shopper = await new_shopper()
    cookie = session_cookie(shopper.client)
    variants = {cookie[:-1], cookie[:10], "", cookie + "x", cookie * 40, "%00", "a.b"}
    for position in range(len(cookie)):
        flipped = "A" if cookie[position] != "A" else "B"
        variants.add(cookie[:position] + flipped + cookie[position + 1 :])
    async with client_for(app) as browser:
        for variant in variants:
            response = await browser.get(
                "/api/session", headers={"cookie": f"shop_session={variant}"}
            )
            assert response.status_code == 401, variant
    assert (await shopper.get("/api/session")).status_code == 200


async def test_logout_kills_the_session_on_the_server(
    app: FastAPI, new_shopper: Callable[..., Any]
) -> None:
    shopper: Shopper = await new_shopper()
    cookie = session_cookie(shopper.client)
    response = await shopper.delete("/api/session")
    assert response.status_code == 204
    assert response.headers["clear-site-data"] == '"cookies"'
    async with client_for(app) as replay:
        replay.cookies.set(COOKIE, domain="shop.test", value=cookie)
        assert (await replay.get("/api/session")).status_code == 401
        assert (await replay.delete("/api/session")).status_code == 401


async def test_logging_in_as_someone_else_starts_with_none_of_their_orders(
    app: FastAPI, admin: Shopper, new_shopper: Callable[..., Any]
) -> None:
    ada: Shopper = await new_shopper()
    bob: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 0, 5)
    assert (await order(ada, [(mug, 1)], from_account(ada))).status_code == 201
    adas_cookie = session_cookie(ada.client)
    # Bob logs in on Ada's browser: nothing of her session is his, and hers is over.
    response = await ada.client.post(
        "/api/session", json={"email": bob.email, "password": bob.password}
    )
    assert response.status_code == 200
    session = (await ada.client.get("/api/session")).json()
    assert session["user"]["email"] == bob.email and session["order_ids"] == []
    async with client_for(app) as replay:
        replay.cookies.set(COOKIE, domain="shop.test", value=adas_cookie)
        assert (await replay.get("/api/session")).status_code == 401
    # Logging in again as the same user keeps the session's data.
    assert (await order(bob, [(mug, 1)], from_account(bob))).status_code == 201
    await bob.login_again()
    assert len((await bob.get("/api/session")).json()["order_ids"]) == 1


async def test_logout_needs_the_csrf_token(new_shopper: Callable[..., Any]) -> None:
    shopper: Shopper = await new_shopper()
    missing = await shopper.client.delete("/api/session")
    wrong = await shopper.client.delete("/api/session", headers={"X-CSRF-Token": "nope"})
    assert missing.status_code == wrong.status_code == 403
    assert (await shopper.get("/api/session")).status_code == 200


async def test_sessions_list_and_log_out_others(
    app: FastAPI, new_shopper: Callable[..., Any]
) -> None:
    shopper: Shopper = await new_shopper()
    laptop, _ = await log_in(app, shopper.email, shopper.password)
    listed = (await shopper.get("/api/sessions")).json()
    assert len(listed) == 2
    assert sum(item["current"] for item in listed) == 1
    cookie = session_cookie(shopper.client)
    assert all(item["id"] not in cookie for item in listed)
    assert (await shopper.delete("/api/sessions/others")).status_code == 204
    assert (await laptop.get("/api/session")).status_code == 401
    assert len((await shopper.get("/api/sessions")).json()) == 1
    await laptop.aclose()


async def test_repeated_failures_are_throttled(
    app: FastAPI, new_shopper: Callable[..., Any]
) -> None:
    shopper: Shopper = await new_shopper()
    async with client_for(app) as browser:
        for _ in range(5):
            failed = await browser.post(
                "/api/session", json={"email": shopper.email, "password": "wrong password"}
            )
            assert failed.status_code == 401
        blocked = await browser.post(
            "/api/session", json={"email": shopper.email, "password": shopper.password}
        )
    assert blocked.status_code == 429


async def test_idle_timeout(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(session_idle_timeout=1)
    async with running(settings) as app, client_for(app) as browser:
        await browser.post(
            "/api/users", json={"name": "I", "email": "i@x.io", "password": "password1"}
        )
        await browser.post("/api/session", json={"email": "i@x.io", "password": "password1"})
        assert (await browser.get("/api/session")).status_code == 200
        # The idle allowance is the timeout plus one touch interval (half the timeout here).
        await asyncio.sleep(1.6)
        assert (await browser.get("/api/session")).status_code == 401


async def test_absolute_timeout_ends_even_a_busy_session(settings_factory: SettingsFactory) -> None:
    # The idle allowance is 1.5 s (timeout plus touch interval). The absolute clock may start at
    # sign-up, so the margins leave room for argon2 on a loaded machine: 2.5 s of reads ends
    # well inside 5 s of sign-up, and the last read waits for 5 s after log-in has answered.
    settings = settings_factory(session_idle_timeout=1, session_absolute_timeout=5)
    loop = asyncio.get_running_loop()
    async with running(settings) as app, client_for(app) as browser:
        await browser.post(
            "/api/users", json={"name": "A", "email": "a@x.io", "password": "password1"}
        )
        await browser.post("/api/session", json={"email": "a@x.io", "password": "password1"})
        logged_in = loop.time()
        for _ in range(5):
            await asyncio.sleep(0.5)
            assert (await browser.get("/api/session")).status_code == 200  # kept busy
        assert loop.time() - logged_in > 2.0  # past the idle allowance, so only reads kept it
        await asyncio.sleep(max(0.0, logged_in + 5.2 - loop.time()))
        assert (await browser.get("/api/session")).status_code == 401


async def test_key_rotation_across_a_restart(rotation_settings: SettingsFactory) -> None:
    old, new = "old-key-" + "o" * 40, "new-key-" + "n" * 40
    async with (
        running(rotation_settings(secret_keys=[old])) as app,
        client_for(app) as browser,
    ):
        await browser.post(
            "/api/users", json={"name": "R", "email": "r@x.io", "password": "password1"}
        )
        await browser.post("/api/session", json={"email": "r@x.io", "password": "password1"})
        cookie = session_cookie(browser)
    async with (
        running(rotation_settings(secret_keys=[new, old])) as app,
        client_for(app) as browser,
    ):
        browser.cookies.set(COOKIE, domain="shop.test", value=cookie)
        response = await browser.get("/api/session")
        assert response.status_code == 200
        resigned = session_cookie(browser)
        assert resigned != cookie  # re-signed with the current key
    async with (
        running(rotation_settings(secret_keys=[new])) as app,
        client_for(app) as browser,
    ):
        browser.cookies.set(COOKIE, domain="shop.test", value=resigned)
        assert (await browser.get("/api/session")).status_code == 200
        browser.cookies.set(COOKIE, domain="shop.test", value=cookie)
        assert (await browser.get("/api/session")).status_code == 401


async def test_redis_down_is_a_clear_503(sqlite_url: str) -> None:
    settings = make_settings(
        sqlite_url,
        session_store="redis",
        redis_url="redis://127.0.0.1:1/0",
    )
    async with running(settings) as app, client_for(app) as browser:
        signup = await browser.post(
            "/api/users", json={"name": "D", "email": "d@x.io", "password": "password1"}
        )
        assert signup.status_code == 201  # needs no session
        login = await browser.post(
            "/api/session", json={"email": "d@x.io", "password": "password1"}
        )
        assert login.status_code == 503
        assert "session store" in login.json()["detail"]
        browser.cookies.set(COOKIE, domain="shop.test", value="x" * 87)
        ready = await browser.get("/readyz")
        assert ready.status_code == 503
        assert "session store" in ready.json()["detail"]


async def test_responses_that_depend_on_the_session_are_never_cached(
    app: FastAPI, new_shopper: Callable[..., Any]
) -> None:
    shopper: Shopper = await new_shopper()
    for response in (
        await shopper.get("/api/session"),  # the CSRF token is in it
        await shopper.get("/api/orders"),
        await shopper.get("/api/accounts"),
    ):
        assert response.headers["cache-control"] == "no-store", response.request.url
        assert response.headers["vary"] == "Cookie"
    async with client_for(app) as anonymous:
        refused = await anonymous.get("/api/orders")  # a 401 depends on the cookie too
        assert refused.status_code == 401
        assert refused.headers["cache-control"] == "no-store"
        assert refused.headers["vary"] == "Cookie"
        catalogue = await anonymous.get("/api/products")  # the same for everyone
        assert "vary" not in catalogue.headers and "cache-control" not in catalogue.headers
