"""Helpers for tests that drive the shop app in-process."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from shop.app import create_app
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
