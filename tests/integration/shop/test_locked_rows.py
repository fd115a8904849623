"""A checkout or transfer that waits for a row another transaction is changing, on PostgreSQL.

Each test holds a change to a stock or balance open in its own transaction, starts the request,
waits until PostgreSQL reports the request's statement waiting for that row lock, and commits
the change. The request must then act on the row as committed: its statement's snapshot was
taken before, and PostgreSQL checks CHECK constraints on a row computed from the snapshot's
version before it sees that the row moved on (a 500), and filters on that version (a false
409 or 402). SQLite has one writer; nothing can change a row while a request waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from fastapi import FastAPI
from shop_testing import (
    NewShopper,
    Shopper,
    add_product,
    card,
    deposit,
    from_account,
    make_settings,
    order,
    snapshot,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shop.settings import Settings


@pytest.fixture
def settings(postgres_url: str) -> Settings:
    return make_settings(postgres_url)


async def lock_waiters(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return int(waiting or 0)


async def committed_while_waiting(
    app: FastAPI, change: str, params: dict[str, Any], request: Awaitable[Any]
) -> Any:
    """Run ``request`` while ``change`` holds its rows, commit the change once it waits."""
    engine: AsyncEngine = app.state.engine
    connection: AsyncConnection
    async with engine.connect() as connection:
        await connection.execute(text(change), params)
        pending = asyncio.ensure_future(request)
        for _ in range(500):
            if await lock_waiters(engine):
                break
            assert not pending.done(), f"answered before it waited: {(await pending).text}"
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the request never waited for the row")
        await connection.commit()
    return await pending


@pytest.mark.parametrize("payment", ["card", "account"])
async def test_an_order_for_stock_given_back_meanwhile(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, payment: str
) -> None:
    """The last unit was reserved and is being given back (a declined card, say)."""
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 0)
    await deposit(shopper, 1000)
    response = await committed_while_waiting(
        app,
        "UPDATE products SET stock = stock + 1 WHERE id = :id",
        {"id": mug},
        order(shopper, [(mug, 1)], card() if payment == "card" else from_account(shopper)),
    )
    assert response.status_code == 201, response.text
    assert (await admin.get("/api/products")).json()[0]["stock"] == 0
    balance = (await shopper.get("/api/accounts")).json()[0]["balance"]
    assert balance == (1000 if payment == "card" else 0)


async def test_account_order_paid_by_money_that_arrived_meanwhile(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    response = await committed_while_waiting(
        app,
        "UPDATE accounts SET balance = balance + 1000 WHERE id = :id",
        {"id": shopper.account_id},
        order(shopper, [(mug, 1)], from_account(shopper)),
    )
    assert response.status_code == 201, response.text
    assert (await shopper.get("/api/accounts")).json()[0]["balance"] == 0
    assert (await admin.get("/api/products")).json()[0]["stock"] == 4


async def test_a_balance_drained_while_checkout_waits_for_it_is_402(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper
) -> None:
    """The order saw the old balance; its debit, under the lock, the new one: declined, and
    nothing of the order kept."""
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    await deposit(shopper, 1500)
    before = await snapshot(shopper)
    response = await committed_while_waiting(
        app,
        "UPDATE accounts SET balance = 0 WHERE id = :id",
        {"id": shopper.account_id},
        order(shopper, [(mug, 1)], from_account(shopper)),
    )
    assert response.status_code == 402, response.text
    after = await snapshot(shopper)
    assert after["accounts"] == [{"id": shopper.account_id, "balance": 0}]
    assert {k: v for k, v in after.items() if k != "accounts"} == {
        k: v for k, v in before.items() if k != "accounts"
    }


def transfer(sender: Shopper, receiver: Shopper, amount: int) -> Awaitable[Any]:
    body = {
        "from_account_id": sender.account_id,
        "to_account_id": receiver.account_id,
        "amount": amount,
    }
    return sender.post("/api/transfers", body)


@pytest.mark.parametrize(
    ("deposited", "changed", "change", "status", "balances"),
    [
        pytest.param(0, "sender", 500, 201, (200, 300), id="money-arrived-meanwhile"),
        pytest.param(500, "sender", -400, 409, (100, 0), id="money-left-meanwhile"),
        pytest.param(500, "receiver", 70, 201, (200, 370), id="receiver-credited-meanwhile"),
    ],
)
async def test_transfer_acts_on_the_balances_as_committed_meanwhile(
    new_shopper: NewShopper,
    app: FastAPI,
    deposited: int,
    changed: str,
    change: int,
    status: int,
    balances: tuple[int, int],
) -> None:
    """A transfer of 300 while another transaction changes one of its two balances."""
    alice: Shopper = await new_shopper()
    bob: Shopper = await new_shopper()
    if deposited:
        await deposit(alice, deposited)
    response = await committed_while_waiting(
        app,
        "UPDATE accounts SET balance = balance + :change WHERE id = :id",
        {"id": (alice if changed == "sender" else bob).account_id, "change": change},
        transfer(alice, bob, 300),
    )
    assert response.status_code == status, response.text
    after = [(await s.get("/api/accounts")).json()[0]["balance"] for s in (alice, bob)]
    assert tuple(after) == balances
