"""A body FastAPI cannot parse is a 422 like any other malformed body, never a 400 or a 500.

JSON that is not UTF-8, nested deeper than the parser goes, or with an integer of more digits
than Python converts fails in FastAPI's body parsing before validation; the answer is FastAPI's
validation-error list all the same, without the input. Also: a method a path does not take is
a 405 that lists all the path's methods.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from shop.db.models import User

JSON = {"content-type": "application/json"}


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """Body parsing happens before any database is asked: SQLite is enough."""
    return sqlite_url


async def customers(database_url: str) -> int:
    """Users but the administrator the settings create."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            query = select(func.count()).select_from(User).where(User.role != "admin")
            return int((await connection.execute(query)).scalar_one())
    finally:
        await engine.dispose()


def assert_validation_error(response: httpx.Response) -> list[dict[str, Any]]:
    """A 422 whose body is FastAPI's shape: ``{"detail": [{type, loc, msg, ...}]}``."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail"} and body["detail"], body
    for error in body["detail"]:
        assert {"type", "loc", "msg"} <= set(error) <= {"type", "loc", "msg", "input", "ctx"}
        assert error["loc"][0] == "body"
    json.dumps(body, allow_nan=False)
    errors: list[dict[str, Any]] = body["detail"]
    return errors


@pytest.mark.parametrize(
    "content",
    [
        b'{"name":"\xff"}',
        b'{"name": "Ada", "email": "ada@example.com", "password": "caf\xe9 au lait"}',
        b"\xff" * 64,
    ],
    ids=["latin-1-byte", "latin-1-password", "no-text-at-all"],
)
async def test_a_body_that_is_not_utf8_is_a_422(
    client: httpx.AsyncClient, database_url: str, content: bytes
) -> None:
    response = await client.post("/api/users", content=content, headers=JSON)
    [error] = assert_validation_error(response)
    assert error["type"] == "json_invalid"
    assert "input" not in error
    assert await customers(database_url) == 0


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
async def test_json_nested_100k_deep_is_a_422(client: httpx.AsyncClient, opening: bytes) -> None:
    response = await client.post("/api/users", content=opening * 100_000, headers=JSON)
    [error] = assert_validation_error(response)
    assert error["type"] == "json_invalid"


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "Ada", "email": "ada@example.com", "password": ' + b"7" * 5000 + b"}",
        b"-" + b"9" * 5000,
        b"[" + b"1" * 5000 + b"]",
    ],
    ids=["in-a-field", "the-whole-body", "in-a-list"],
)
async def test_an_integer_of_5000_digits_is_a_422(
    client: httpx.AsyncClient, database_url: str, body: bytes
) -> None:
    response = await client.post("/api/users", content=body, headers=JSON)
    [error] = assert_validation_error(response)
    assert error["type"] == "json_invalid"
    assert "input" not in error
    assert await customers(database_url) == 0


async def test_the_same_bodies_are_a_422_where_a_user_is_needed_too(
    client: httpx.AsyncClient,
) -> None:
    # The body is parsed before the session is looked at: malformed is malformed, for anyone.
    for content in (b"\xfe\xff\xfe", b"[" * 100_000, b"1" * 5000):
        response = await client.post("/api/transfers", content=content, headers=JSON)
        assert_validation_error(response)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/session", "DELETE, GET, POST"),
        ("PATCH", "/api/orders", "GET, POST"),
        ("DELETE", "/api/products", "GET, POST"),
        ("GET", "/api/accounts/1/deposits", "POST"),
        ("POST", "/api/products/1", "PATCH"),
    ],
)
async def test_a_method_the_path_does_not_take_is_a_405_listing_the_paths_methods(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json() == {"detail": "Method Not Allowed"}
