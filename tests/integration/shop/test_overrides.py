"""app.dependency_overrides reaches the shop's collaborators: FastAPI's own test seam.

(The ``gateway`` fixture that most money tests use installs its fake the same way.)
"""

from __future__ import annotations

from fastapi import FastAPI
from shop_testing import NewShopper, Shopper, client_for

from shop.api.deps import SessionUser, current_user, get_login_throttle
from shop.services.throttle import LoginThrottle


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
    strict = LoginThrottle(per_email=1, per_address=100, window=60)
    app.dependency_overrides[get_login_throttle] = lambda: strict
    wrong = {"email": shopper.email, "password": "not the password"}
    async with client_for(app) as browser:
        assert (await browser.post("/api/session", json=wrong)).status_code == 401
        assert (await browser.post("/api/session", json=wrong)).status_code == 429
