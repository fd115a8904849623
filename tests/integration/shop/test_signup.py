"""Sign-up: the user and their account are created together or not at all."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
from shop_testing import make_settings, running
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from shop.db.models import Account, User
from shop.services import accounts as accounts_service

VALID = {"name": "Ada Lovelace", "email": "Ada@Example.com", "password": "correct horse"}


async def count_rows(database_url: str) -> tuple[int, int]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            # The administrator from the settings exists from start-up: count the others.
            users = (
                await connection.execute(
                    select(func.count()).select_from(User).where(User.role != "admin")
                )
            ).scalar_one()
            accounts = (
                await connection.execute(
                    select(func.count()).select_from(Account).join(User).where(User.role != "admin")
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    return users, accounts


async def test_sign_up_creates_user_and_account(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/users", json=VALID)
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "Ada Lovelace"
    assert body["email"] == "ada@example.com"
    assert isinstance(body["id"], int)
    assert [set(account) for account in body["accounts"]] == [{"id", "balance"}]
    assert body["accounts"][0]["balance"] == 0
    assert "password" not in response.text


async def test_duplicate_email_is_409_whatever_its_case(
    client: httpx.AsyncClient, database_url: str
) -> None:
    assert (await client.post("/api/users", json=VALID)).status_code == 201
    again = await client.post("/api/users", json={**VALID, "email": "ADA@example.COM"})
    assert again.status_code == 409
    assert again.json() == {"detail": "That e-mail address is already registered."}
    assert await count_rows(database_url) == (1, 1)


async def test_failure_after_the_user_row_leaves_nothing(
    client: httpx.AsyncClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_account(**_kwargs: Any) -> Account:
        raise RuntimeError("injected: the account could not be created")

    monkeypatch.setattr(accounts_service, "Account", broken_account)
    response = await client.post("/api/users", json=VALID)
    assert response.status_code == 500
    assert "injected" not in response.text
    assert await count_rows(database_url) == (0, 0)


async def test_concurrent_duplicate_sign_ups_yield_exactly_one_201(
    client: httpx.AsyncClient, database_url: str
) -> None:
    responses = await asyncio.gather(
        *(client.post("/api/users", json={**VALID, "name": f"n{i}"}) for i in range(20))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 19
    assert await count_rows(database_url) == (1, 1)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "A", "email": "a@example.com"},
        {"name": "A", "email": "not-an-email", "password": "long enough"},
        {"name": "A", "email": "a@example.com", "password": "short"},
        {"name": "", "email": "a@example.com", "password": "long enough"},
        {"name": "   ", "email": "a@example.com", "password": "long enough"},
        {"name": "A" * 101, "email": "a@example.com", "password": "long enough"},
        {"name": 5, "email": "a@example.com", "password": "long enough"},
        {"name": "A", "email": "a@example.com", "password": "x" * 129},
        {"name": "A", "email": "a@example.com", "password": "long enough", "role": "admin"},
        [],
        "text",
        None,
    ],
)
async def test_bad_bodies_are_422_and_change_nothing(
    client: httpx.AsyncClient, database_url: str, body: Any
) -> None:
    response = await client.post("/api/users", json=body)
    assert response.status_code == 422
    assert "detail" in response.json()
    assert await count_rows(database_url) == (0, 0)


@pytest.mark.parametrize(
    "content", [b"{", b"\xff\xfe", b'{"name": "A", "email": "a@example.com", "password": 1']
)
async def test_malformed_json_is_422(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(
        "/api/users", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert "database" in ready.json()["checks"]


async def test_metrics_count_commits_and_rollbacks(client: httpx.AsyncClient) -> None:
    await client.post("/api/users", json=VALID)
    await client.post("/api/users", json=VALID)
    text = (await client.get("/metrics")).text
    assert 'atomic_requests_total{outcome="committed"}' in text
    assert 'atomic_rollbacks_total{reason="error_status"}' in text


async def test_workers_starting_together_all_come_up(postgres_url: str) -> None:
    # `shop serve --workers N` starts N processes at once, each making sure the admin exists.
    settings = make_settings(postgres_url, admin_email="together@example.com")
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.gather(*(stack.enter_async_context(running(settings)) for _ in range(4)))


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "A\\u0000B", "email": "nul@example.com", "password": "a good password"}',
        '{"name": "\\ud800", "email": "sur@example.com", "password": "a good password"}',
        '{"name": "A", "email": "pw@example.com", "password": "a good \\udfff password"}',
    ],
    ids=["nul", "lone-surrogate", "surrogate-in-password"],
)
async def test_text_no_database_can_keep_is_a_422(client: httpx.AsyncClient, body: str) -> None:
    response = await client.post(
        "/api/users",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert "detail" in response.json()
