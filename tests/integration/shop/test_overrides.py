"""app.dependency_overrides reaches the shop's collaborators: FastAPI's own test seam.

(The ``gateway`` fixture that most money tests use installs its fake the same way.)
"""

from __future__ import annotations

from fastapi import FastAPI
from shop_testing import NewShopper, Shopper, client_for

from shop.api.deps import SessionUser, current_user, get_login_throttle
from shop.services.throttle import LoginLimits, LoginThrottle


async def test_overriding_the_current_user_skips_logging_in(
    app: FastAPI, new_shopper: NewShopper
) -> None:
    shopper: Shopper = await new_shopper()
    app.dependency_overrides[current_user] = lambda: SessionUser(
        id=shopper.user_id, name="Overridden", email=shopper.email, roles=("customer",)
    )
    async with client_for(app) as anonymous:
        accounts = await anonymous.get("/api/accounts")
    assert accounts.status_code == 200, accounts.text
    assert accounts.json() == [{"id": shopper.account_id, "balance": 0}]


async def test_overriding_the_login_throttle(app: FastAPI, new_shopper: NewShopper) -> None:
    shopper: Shopper = await new_shopper()
    strict = LoginThrottle(
        app.state.engine,
        LoginLimits(per_email_and_address=1, per_email=100, per_address=100, window=60),
    )
    app.dependency_overrides[get_login_throttle] = lambda: strict
    wrong = {"email": shopper.email, "password": "not the password"}
    async with client_for(app) as browser:
        assert (await browser.post("/api/session", json=wrong)).status_code == 401
        assert (await browser.post("/api/session", json=wrong)).status_code == 429


async def test_a_bug_is_a_json_500_that_closes_the_connection(app: FastAPI) -> None:
    """Nothing a client sends should cause one; if a bug does, the answer is still JSON, and
    says the connection closes (the server closes it after an unhandled exception)."""

    def broken() -> LoginThrottle:
        raise RuntimeError("a bug")

    app.dependency_overrides[get_login_throttle] = broken
    wrong = {"email": "someone@example.com", "password": "not the password"}
    async with client_for(app) as browser:
        response = await browser.post("/api/session", json=wrong, headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500
    assert response.headers["connection"] == "close"
    assert response.headers["x-request-id"] == "bug-1"
    assert response.json() == {"detail": "Internal error; it was logged under request id bug-1."}
