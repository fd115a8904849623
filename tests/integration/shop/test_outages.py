"""A database that does not answer is a 503 with Retry-After (JSON, or a page for a browser),
never a 500."""

from __future__ import annotations

import pytest
from shop_testing import client_for, make_settings, running

from fastapi_atomic.retry import database_unavailable


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://shop@127.0.0.1:1/shop",  # nothing listens: refused
        "sqlite+aiosqlite:////nonexistent-folder/shop.db",  # cannot be opened
    ],
    ids=["postgres-refused", "sqlite-unopenable"],
)
async def test_every_database_route_answers_503_with_retry_after(url: str) -> None:
    settings = make_settings(url, admin_email=None, admin_password=None)
    async with running(settings) as app, client_for(app) as client:
        for method, path in (("GET", "/api/products"), ("POST", "/api/users")):
            body = {"name": "A", "email": "a@example.com", "password": "a good password"}
            response = await client.request(method, path, json=body if method == "POST" else None)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"] == "1"
            assert response.json() == {"detail": "The database did not answer; try again."}
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        # A browser's page gets the outage as a page, with the same status and Retry-After.
        page = await client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 503
        assert page.headers["retry-after"] == "1"
        assert page.headers["content-type"].startswith("text/html")
        assert "The database did not answer" in page.text and "<h1>" in page.text


class _FakeOrig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "unavailable"),
    [("57P03", True), ("57P01", True), ("08006", True), ("40001", False), ("23505", False)],
)
def test_which_errors_say_the_database_is_not_there(sqlstate: str, unavailable: bool) -> None:
    from sqlalchemy.exc import DBAPIError

    error = DBAPIError("SELECT 1", {}, _FakeOrig(sqlstate))
    assert database_unavailable(error) is unavailable
