"""Helpers for tests that drive the shop app in-process."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from alembic import command
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from shop.app import create_app
from shop.db.migrate import alembic_config
from shop.settings import Settings

ADMIN = ("admin@example.com", "admin-password")


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_keys": ["test-key-" + "x" * 40],
        "cookie_secure": False,
        "admin_email": ADMIN[0],
        "admin_password": ADMIN[1],
        "redis_prefix": f"test:{uuid.uuid4().hex[:12]}:",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://shop.test")


@dataclass
class Shopper:
    """A logged-in browser: its own cookie jar and CSRF token."""

    client: httpx.AsyncClient
    user_id: int
    account_id: int
    email: str
    password: str
    csrf: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf, **extra}

    async def post(self, url: str, json: Any = None, **headers: str) -> httpx.Response:
        return await self.client.post(url, json=json, headers=self.headers(**headers))

    async def get(self, url: str) -> httpx.Response:
        return await self.client.get(url)

    async def delete(self, url: str) -> httpx.Response:
        return await self.client.delete(url, headers=self.headers())

    async def login_again(self) -> None:
        response = await self.client.post(
            "/api/session", json={"email": self.email, "password": self.password}
        )
        assert response.status_code == 200, response.text
        self.csrf = response.json()["csrf_token"]


async def log_in(app: FastAPI, email: str, password: str) -> tuple[httpx.AsyncClient, str]:
    browser = client_for(app)
    response = await browser.post("/api/session", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return browser, response.json()["csrf_token"]


# --- money and stock through the API -------------------------------------------------------

OK_CARD = "4242424242424242"
DECLINED = "4000000000000002"
NO_FUNDS = "4000000000009995"
TRANSIENT = "4000000000000119"

NewShopper = Callable[..., Any]


async def add_product(admin: Shopper, sku: str, price: int = 1000, stock: int = 10) -> int:
    response = await admin.post(
        "/api/products", {"sku": sku, "name": sku.title(), "price": price, "stock": stock}
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def deposit(shopper: Shopper, amount: int, card: str = OK_CARD, **headers: str) -> Any:
    return await shopper.post(
        f"/api/accounts/{shopper.account_id}/deposits",
        {"amount": amount, "card_number": card},
        **headers,
    )


def card(number: str = OK_CARD) -> dict[str, str]:
    return {"method": "card", "card_number": number}


def from_account(shopper: Shopper) -> dict[str, Any]:
    return {"method": "account", "account_id": shopper.account_id}


async def order(
    shopper: Shopper, items: list[tuple[int, int]], payment: Any, **headers: str
) -> Any:
    body = {"items": [{"product_id": p, "quantity": q} for p, q in items], "payment": payment}
    return await shopper.post("/api/orders", body, **headers)


async def snapshot(shopper: Shopper) -> dict[str, Any]:
    """What a failed request must leave untouched, as the API shows it."""
    session = (await shopper.get("/api/session")).json()
    return {
        "products": (await shopper.get("/api/products")).json(),
        "accounts": (await shopper.get("/api/accounts")).json(),
        "orders": (await shopper.get("/api/orders")).json(),
        "order_ids": session["order_ids"],
    }


class Deadlocks:
    """Deadlocks PostgreSQL broke while a test ran: retried requests and retried phases.

    A retry hides a deadlock from the client, but each one cost a second (deadlock_timeout)
    and means a lock order is wrong.
    """

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog
        self._requests = self._retried_requests()
        caplog.set_level(logging.INFO, logger="fastapi_atomic")

    @staticmethod
    def _retried_requests() -> float:
        return REGISTRY.get_sample_value("atomic_retries_total", {"reason": "deadlock"}) or 0.0

    def count(self) -> float:
        phases = sum("after deadlock" in r.getMessage() for r in self._caplog.records)
        return self._retried_requests() - self._requests + phases


async def migrate(engine: AsyncEngine, url: str, direction: str, revision: str) -> None:
    """Run an Alembic command (``upgrade``, ``downgrade``) to ``revision`` on ``engine``."""

    def run(connection: Connection) -> None:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        getattr(command, direction)(config, revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)
