"""Money and stock through the API, on SQLite and PostgreSQL: every failure path is read back.

After a failed request, stock, balances, orders and the session must be exactly as before, so
most tests take a snapshot first and compare.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from fastapi import FastAPI
from shop_testing import (
    DECLINED,
    NO_FUNDS,
    OK_CARD,
    TRANSIENT,
    Deadlocks,
    NewShopper,
    Shopper,
    add_product,
    card,
    client_for,
    deposit,
    from_account,
    order,
    snapshot,
)
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from fastapi_atomic.engine import writer_engine
from shop.db.models import Order, Payment
from shop.payments import FakeGateway, GatewayTimeout
from shop.reconcile import reconcile
from shop.services import orders

# --- catalogue ---------------------------------------------------------------------------


async def test_catalogue_admin_only(app: FastAPI, admin: Shopper, new_shopper: NewShopper) -> None:
    customer: Shopper = await new_shopper()
    product_id = await add_product(admin, "mug")
    assert (
        await admin.post("/api/products", {"sku": "mug", "name": "x", "price": 1, "stock": 1})
    ).status_code == 409
    forbidden = await customer.post(
        "/api/products", {"sku": "t", "name": "t", "price": 1, "stock": 1}
    )
    assert forbidden.status_code == 403
    patched = await admin.client.patch(
        f"/api/products/{product_id}", json={"price": 1500}, headers=admin.headers()
    )
    assert patched.json()["price"] == 1500 and patched.json()["stock"] == 10
    missing = await admin.client.patch(
        "/api/products/999", json={"stock": 1}, headers=admin.headers()
    )
    assert missing.status_code == 404
    negative = await admin.client.patch(
        f"/api/products/{product_id}", json={"stock": -1}, headers=admin.headers()
    )
    assert negative.status_code == 422
    listed = (await customer.get("/api/products")).json()
    assert [(p["sku"], p["price"], p["stock"]) for p in listed] == [("mug", 1500, 10)]
    async with client_for(app) as anonymous:
        assert (await anonymous.get("/api/products")).status_code == 200
        assert (await anonymous.post("/api/products", json={"sku": "a"})).status_code in (401, 422)


# --- deposits ----------------------------------------------------------------------------


async def test_deposit_charges_and_raises_the_balance(
    app: FastAPI,
    new_shopper: NewShopper,
    gateway: FakeGateway,
) -> None:
    shopper: Shopper = await new_shopper()
    response = await deposit(shopper, 5000)
    assert response.status_code == 201
    assert response.json()["amount"] == 5000
    assert (await shopper.get("/api/accounts")).json()[0]["balance"] == 5000
    assert gateway.total_charged == 5000


@pytest.mark.parametrize(("number", "status"), [(DECLINED, 402), (NO_FUNDS, 402), (TRANSIENT, 503)])
async def test_failed_deposit_changes_nothing(
    app: FastAPI,
    new_shopper: NewShopper,
    number: str,
    status: int,
    gateway: FakeGateway,
) -> None:
    shopper: Shopper = await new_shopper()
    before = await snapshot(shopper)
    response = await deposit(shopper, 5000, number)
    assert response.status_code == status
    assert await snapshot(shopper) == before
    assert gateway.total_charged == 0


async def test_deposit_into_someone_elses_account_is_404(new_shopper: NewShopper) -> None:
    alice: Shopper = await new_shopper()
    bob: Shopper = await new_shopper()
    response = await alice.post(
        f"/api/accounts/{bob.account_id}/deposits", {"amount": 100, "card_number": OK_CARD}
    )
    assert response.status_code == 404
    assert (await bob.get("/api/accounts")).json()[0]["balance"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 0, "card_number": OK_CARD},
        {"amount": -5, "card_number": OK_CARD},
        {"amount": 1.5, "card_number": OK_CARD},
        {"amount": 100, "card_number": "4242-4242"},
        {"amount": 100},
    ],
)
async def test_bad_deposits_are_422(new_shopper: NewShopper, body: dict[str, Any]) -> None:
    shopper: Shopper = await new_shopper()
    response = await shopper.post(f"/api/accounts/{shopper.account_id}/deposits", body)
    assert response.status_code == 422


async def test_deposit_needs_the_csrf_token(
    app: FastAPI, new_shopper: NewShopper, gateway: FakeGateway
) -> None:
    shopper: Shopper = await new_shopper()
    response = await shopper.client.post(
        f"/api/accounts/{shopper.account_id}/deposits", json={"amount": 100, "card_number": OK_CARD}
    )
    assert response.status_code == 403
    assert gateway.total_charged == 0


async def test_deposit_replayed_with_its_key_charges_once(
    app: FastAPI,
    new_shopper: NewShopper,
    gateway: FakeGateway,
) -> None:
    shopper: Shopper = await new_shopper()
    first = await deposit(shopper, 700, **{"Idempotency-Key": "dep-1"})
    second = await deposit(shopper, 700, **{"Idempotency-Key": "dep-1"})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert gateway.total_charged == 700
    assert (await shopper.get("/api/accounts")).json()[0]["balance"] == 700
    other = await deposit(shopper, 800, **{"Idempotency-Key": "dep-1"})
    assert other.status_code == 422


# --- transfers ---------------------------------------------------------------------------


async def test_transfer_moves_money_both_ways_or_not_at_all(new_shopper: NewShopper) -> None:
    alice: Shopper = await new_shopper()
    bob: Shopper = await new_shopper()
    await deposit(alice, 1000)
    moved = await alice.post(
        "/api/transfers",
        {"from_account_id": alice.account_id, "to_account_id": bob.account_id, "amount": 400},
    )
    assert moved.status_code == 201
    assert moved.json()["amount"] == 400
    assert (await alice.get("/api/accounts")).json()[0]["balance"] == 600
    assert (await bob.get("/api/accounts")).json()[0]["balance"] == 400

    too_much = await alice.post(
        "/api/transfers",
        {"from_account_id": alice.account_id, "to_account_id": bob.account_id, "amount": 601},
    )
    assert too_much.status_code == 409
    stolen = await alice.post(
        "/api/transfers",
        {"from_account_id": bob.account_id, "to_account_id": alice.account_id, "amount": 1},
    )
    assert stolen.status_code == 404
    nowhere = await alice.post(
        "/api/transfers",
        {"from_account_id": alice.account_id, "to_account_id": 99999, "amount": 1},
    )
    assert nowhere.status_code == 404
    for body in (
        {"from_account_id": alice.account_id, "to_account_id": alice.account_id, "amount": 1},
        {"from_account_id": alice.account_id, "to_account_id": bob.account_id, "amount": 0},
        {"from_account_id": alice.account_id, "to_account_id": bob.account_id, "amount": -1},
    ):
        assert (await alice.post("/api/transfers", body)).status_code == 422
    assert (await alice.get("/api/accounts")).json()[0]["balance"] == 600
    assert (await bob.get("/api/accounts")).json()[0]["balance"] == 400


# --- orders --------------------------------------------------------------------------------


async def test_order_from_an_account(admin: Shopper, new_shopper: NewShopper) -> None:
    shopper: Shopper = await new_shopper()
    mug, tee = await add_product(admin, "mug", 1000, 5), await add_product(admin, "tee", 2500, 2)
    await deposit(shopper, 10_000)
    response = await order(shopper, [(mug, 2), (tee, 1), (mug, 1)], from_account(shopper))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "paid" and body["total"] == 5500
    assert sorted((i["product_id"], i["quantity"]) for i in body["items"]) == [(mug, 3), (tee, 1)]
    stock = {p["id"]: p["stock"] for p in (await shopper.get("/api/products")).json()}
    assert stock == {mug: 2, tee: 1}
    assert (await shopper.get("/api/accounts")).json()[0]["balance"] == 4500
    assert (await shopper.get("/api/session")).json()["order_ids"] == [body["id"]]
    assert (await shopper.get(f"/api/orders/{body['id']}")).json()["total"] == 5500


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("no stock", 409),
        ("no stock, paid from the account", 409),
        ("no funds", 402),
        ("unknown product", 404),
        ("someone else's account", 404),
        ("no such account", 404),
        ("card declined", 402),
        ("card no funds", 402),
        ("gateway failure", 503),
    ],
)
async def test_failed_orders_leave_everything_as_it_was(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    case: str,
    status: int,
    gateway: FakeGateway,
) -> None:
    shopper: Shopper = await new_shopper()
    other: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 3)
    await deposit(shopper, 1500)
    await deposit(other, 5000)
    await order(shopper, [(mug, 1)], from_account(shopper))  # one earlier order in the session
    before = await snapshot(shopper)
    others_before = await snapshot(other)
    attempts = {
        "no stock": ([(mug, 3)], card()),
        # the order id is already written to the web session when stock runs out
        "no stock, paid from the account": ([(mug, 3)], from_account(shopper)),
        "no funds": ([(mug, 1)], from_account(shopper)),
        "unknown product": ([(mug, 1), (424242, 1)], card()),
        "someone else's account": ([(mug, 1)], from_account(other)),
        "no such account": ([(mug, 1)], {"method": "account", "account_id": 987654}),
        "card declined": ([(mug, 2)], card(DECLINED)),
        "card no funds": ([(mug, 2)], card(NO_FUNDS)),
        "gateway failure": ([(mug, 2)], card(TRANSIENT)),
    }
    items, payment = attempts[case]
    if case == "no funds":
        await order(shopper, [(mug, 1)], from_account(shopper))  # balance now 0
        before = await snapshot(shopper)
    if case == "no stock, paid from the account":
        await deposit(shopper, 5000)  # enough money: stock is what runs out
        before = await snapshot(shopper)
    charged = gateway.total_charged
    response = await order(shopper, items, payment)
    assert response.status_code == status, response.text
    assert await snapshot(shopper) == before
    assert await snapshot(other) == others_before
    assert gateway.total_charged == charged


@pytest.mark.parametrize("method", ["card", "account"])
async def test_an_order_whose_last_line_is_short_takes_no_stock_at_all(
    admin: Shopper, new_shopper: NewShopper, method: str
) -> None:
    """All lines or none: on PostgreSQL the card's reserve is one statement in autocommit."""
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 100, 5)
    cup = await add_product(admin, "cup", 100, 2)
    await deposit(shopper, 10_000)
    before = await snapshot(shopper)
    payment = card() if method == "card" else from_account(shopper)
    response = await order(shopper, [(cup, 3), (mug, 1)], payment)
    assert response.status_code == 409, response.text
    assert f"product {cup}" in response.json()["detail"]
    assert await snapshot(shopper) == before


async def test_card_order(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, gateway: FakeGateway
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1200, 4)
    response = await order(shopper, [(mug, 2)], card())
    assert response.status_code == 201
    assert response.json()["status"] == "paid"
    assert gateway.total_charged == 2400
    assert (await shopper.get("/api/session")).json()["order_ids"] == [response.json()["id"]]


async def test_no_database_connection_is_held_while_the_card_is_charged(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    monkeypatch: pytest.MonkeyPatch,
    gateway: FakeGateway,
) -> None:
    """A slow gateway must not hold the pool: 64 buyers waiting on it would starve everyone."""
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1200, 4)
    engine = app.state.engine.sync_engine
    checked_out = 0

    def on_checkout(*_args: object) -> None:
        nonlocal checked_out
        checked_out += 1

    def on_checkin(*_args: object) -> None:
        nonlocal checked_out
        checked_out -= 1

    event.listen(engine, "checkout", on_checkout)
    event.listen(engine, "checkin", on_checkin)
    charge = gateway.charge
    held_during_charge: list[int] = []

    async def observed_charge(**kwargs: Any) -> Any:
        held_during_charge.append(checked_out)
        return await charge(**kwargs)

    monkeypatch.setattr(gateway, "charge", observed_charge)
    try:
        response = await order(shopper, [(mug, 1)], card())
    finally:
        event.remove(engine, "checkout", on_checkout)
        event.remove(engine, "checkin", on_checkin)
    assert response.status_code == 201, response.text
    assert held_during_charge == [0]
    assert checked_out == 0


@pytest.mark.parametrize(
    ("number", "order_status", "payment"),
    [
        (OK_CARD, "paid", ("succeeded", True, None)),
        (DECLINED, "failed", ("declined", False, "card_declined")),
        (TRANSIENT, "failed", ("failed", False, None)),
    ],
    ids=["charged", "declined", "gateway failure"],
)
async def test_the_payment_row_records_how_the_charge_ended(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    number: str,
    order_status: str,
    payment: tuple[str, bool, str | None],
) -> None:
    """What reconcile and the support desk read: the order's and its payment's end state."""
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    await order(shopper, [(mug, 1)], card(number))
    async with app.state.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(Order.status, Payment.status, Payment.charge_id, Payment.decline_code)
                .join(Payment, Payment.order_id == Order.id)
                .where(Order.user_id == shopper.user_id)
            )
        ).all()
    assert len(rows) == 1
    (found_order, found_payment, charge_id, decline_code) = rows[0]
    assert (found_order, found_payment, charge_id is not None, decline_code) == (
        order_status,
        *payment,
    )


async def test_orders_belong_to_their_user(admin: Shopper, new_shopper: NewShopper) -> None:
    alice: Shopper = await new_shopper()
    bob: Shopper = await new_shopper()
    mug = await add_product(admin, "mug")
    first = (await order(alice, [(mug, 1)], card())).json()
    second = (await order(alice, [(mug, 2)], card())).json()
    assert [o["id"] for o in (await alice.get("/api/orders")).json()] == [second["id"], first["id"]]
    assert (await bob.get(f"/api/orders/{first['id']}")).status_code == 404
    assert (await bob.get("/api/orders")).json() == []
    assert (await bob.get("/api/orders/999999")).status_code == 404


async def test_a_client_retry_after_a_lost_response_charges_once(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    gateway: FakeGateway,
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    key = {"Idempotency-Key": "checkout-1"}
    first = await order(shopper, [(mug, 1)], card(), **key)
    retry = await order(shopper, [(mug, 1)], card(), **key)
    assert first.status_code == retry.status_code == 201
    assert first.json() == retry.json()
    # A replay depends on the session too: no cache may keep it or hand it to another client.
    assert retry.headers["cache-control"] == "no-store" and "Cookie" in retry.headers["vary"]
    assert gateway.total_charged == 1000
    assert len((await shopper.get("/api/orders")).json()) == 1
    assert (await shopper.get("/api/session")).json()["order_ids"] == [first.json()["id"]]
    changed = await order(shopper, [(mug, 2)], card(), **key)
    assert changed.status_code == 422


async def test_gateway_timeout_after_the_charge_is_settled_by_reconcile(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    gateway: FakeGateway,
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    gateway.fail_next(2, after_charge=True)  # the charge and the follow-up look-up time out
    gateway_lookup = gateway.lookup

    async def lookup_times_out(key: str) -> Any:
        raise GatewayTimeout("no answer")

    gateway.lookup = lookup_times_out  # type: ignore[method-assign]
    response = await order(shopper, [(mug, 2)], card())
    gateway.lookup = gateway_lookup  # type: ignore[method-assign]
    assert response.status_code == 503
    assert "If the card was charged" in response.json()["detail"]
    assert gateway.total_charged == 2000  # the gateway did charge
    # Not one of the user's orders while its outcome is unknown; its stock is held.
    assert (await shopper.get("/api/orders")).json() == []
    assert (await shopper.get("/api/products")).json()[0]["stock"] == 3

    # The request ended its lease when it gave up: reconcile need not wait for it.
    report = await reconcile(app.state.engine, gateway, min_age_seconds=0)
    assert len(report.settled) == 1
    assert [o["status"] for o in (await shopper.get("/api/orders")).json()] == ["paid"]
    assert gateway.total_charged == 2000
    again = await reconcile(app.state.engine, gateway, min_age_seconds=0)
    assert again.settled == again.released == []


@pytest.mark.parametrize("method", ["card", "account"])
async def test_an_order_answers_what_reading_it_back_shows(
    admin: Shopper, new_shopper: NewShopper, method: str
) -> None:
    # A paid order is answered from what checkout wrote, not read back: it must be the same.
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    cup = await add_product(admin, "cup", 300, 5)
    if method == "account":
        assert (await deposit(shopper, 5000)).status_code == 201
    payment = card() if method == "card" else from_account(shopper)
    created = await order(shopper, [(cup, 1), (mug, 2), (cup, 1)], payment)
    assert created.status_code == 201
    read_back = await shopper.get(f"/api/orders/{created.json()['id']}")
    assert created.json() == read_back.json()
    assert created.json()["status"] == "paid" and created.json()["total"] == 2600


@pytest.mark.parametrize("method", ["card", "account"])
async def test_a_price_that_changed_during_checkout_reruns_it_at_the_new_price(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
    gateway: FakeGateway,
) -> None:
    # Prices are read without a lock and checked again when the stock row is locked. The first
    # read here is stale (900, as if an admin raised the price right after it): the locked row
    # says 1000, the attempt is rolled back and re-run, and the order costs 2000.
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    assert (await deposit(shopper, 5000)).status_code == 201
    charged_before = gateway.total_charged
    real_priced_items = orders._priced_items
    reads = 0

    async def stale_first(db: Any, lines: list[orders.Line]) -> list[orders.Item]:
        nonlocal reads
        reads += 1
        items = await real_priced_items(db, lines)
        if reads == 1:
            items = [replace(item, unit_price=900) for item in items]
        return items

    monkeypatch.setattr(orders, "_priced_items", stale_first)
    payment = card() if method == "card" else from_account(shopper)
    created = await order(shopper, [(mug, 2)], payment)
    assert created.status_code == 201, created.text
    assert reads == 2
    assert created.json()["total"] == 2000
    assert [i["unit_price"] for i in created.json()["items"]] == [1000]
    products = {p["id"]: p for p in (await shopper.get("/api/products")).json()}
    assert products[mug]["stock"] == 3
    balance = (await shopper.get("/api/accounts")).json()[0]["balance"]
    assert balance == (5000 if method == "card" else 3000)
    assert gateway.total_charged - charged_before == (2000 if method == "card" else 0)
    assert [o["id"] for o in (await shopper.get("/api/orders")).json()] == [created.json()["id"]]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_reconcile_leaves_a_payment_alone_while_its_charge_is_in_flight(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    gateway: FakeGateway,
    when: str,
) -> None:
    # A reconcile run with no minimum age, just before the gateway sees the charge (it would
    # find no charge and release the order: stock back, yet the card then charged) or just
    # after: the request holds the payment's lease, and reconcile touches neither.
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    real_charge = gateway.charge

    async def charge_then_reconcile(**kwargs: Any) -> Any:
        if when == "before":
            report = await reconcile(app.state.engine, gateway, min_age_seconds=0)
        result = await real_charge(**kwargs)
        if when == "after":
            report = await reconcile(app.state.engine, gateway, min_age_seconds=0)
        assert report.settled == report.released == []
        return result

    gateway.charge = charge_then_reconcile  # type: ignore[method-assign]
    created = await order(shopper, [(mug, 1)], card())
    gateway.charge = real_charge  # type: ignore[method-assign]
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "paid"
    assert gateway.total_charged == 1000
    assert (await shopper.get("/api/session")).json()["order_ids"] == [created.json()["id"]]
    assert [o["status"] for o in (await shopper.get("/api/orders")).json()] == ["paid"]


async def test_a_card_charged_then_not_saved_is_told_so_and_completed(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    gateway: FakeGateway,
) -> None:
    """The settle's COMMIT fails after the card was charged: the 503 says the card was charged,
    the order is completed in the background, and a retry with the key gets it, charging
    nothing more."""
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    real_charge, fail_next_commit = gateway.charge, False

    async def charge(**kwargs: Any) -> Any:
        nonlocal fail_next_commit
        result = await real_charge(**kwargs)
        fail_next_commit = True
        return result

    def commit(connection: Any) -> None:
        nonlocal fail_next_commit
        if fail_next_commit:
            fail_next_commit = False
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    gateway.charge = charge  # type: ignore[method-assign]
    writer = writer_engine(app.state.engine).sync_engine  # where transactions that write go
    event.listen(writer, "commit", commit)
    key = {"Idempotency-Key": "charged-not-saved"}
    try:
        response = await order(shopper, [(mug, 2)], card(), **key)
    finally:
        event.remove(writer, "commit", commit)
        gateway.charge = real_charge  # type: ignore[method-assign]
    assert response.status_code == 503, response.text
    assert "The card was charged" in response.json()["detail"]
    assert response.headers["retry-after"] == "1"
    for _ in range(100):  # settled in the background, after the answer
        paid = (await shopper.get("/api/orders")).json()
        if paid:
            break
        await asyncio.sleep(0.05)
    assert [(o["status"], o["total"]) for o in paid] == [("paid", 2000)]
    assert (await shopper.get("/api/products")).json()[0]["stock"] == 3
    retry = await order(shopper, [(mug, 2)], card(), **key)
    assert retry.status_code == 201 and retry.json()["id"] == paid[0]["id"]
    assert gateway.total_charged == 2000
    assert (await shopper.get("/api/session")).json()["order_ids"] == [paid[0]["id"]]


async def test_reconcile_releases_a_reservation_that_was_never_charged(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    gateway: FakeGateway,
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 1000, 5)
    gateway.fail_next(1, after_charge=False)

    async def no_answer(key: str) -> Any:
        raise GatewayTimeout("no answer")

    real_lookup, gateway.lookup = gateway.lookup, no_answer  # type: ignore[method-assign]
    assert (await order(shopper, [(mug, 3)], card())).status_code == 503
    gateway.lookup = real_lookup  # type: ignore[method-assign]
    assert (await shopper.get("/api/products")).json()[0]["stock"] == 2  # reserved
    report = await reconcile(app.state.engine, gateway, min_age_seconds=0)
    assert len(report.released) == 1
    assert (await shopper.get("/api/products")).json()[0]["stock"] == 5
    assert (await shopper.get("/api/orders")).json() == []
    assert gateway.total_charged == 0


# --- concurrency ---------------------------------------------------------------------------


async def test_fifty_buyers_racing_for_ten_units_buy_exactly_ten(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, caplog: pytest.LogCaptureFixture
) -> None:
    deadlocks = Deadlocks(caplog)
    mug = await add_product(admin, "mug", 100, 10)
    buyers: list[Shopper] = [await new_shopper() for _ in range(10)]
    for buyer in buyers:
        await deposit(buyer, 1000)
    attempts = [
        order(buyer, [(mug, 1)], card() if n % 2 else from_account(buyer))
        for buyer in buyers
        for n in range(5)
    ]
    responses = await asyncio.gather(*attempts)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 10, statuses
    assert set(statuses) == {201, 409}, [r.text for r in responses if r.status_code == 503]
    assert (await admin.get("/api/products")).json()[0]["stock"] == 0
    sold = [len((await b.get("/api/orders")).json()) for b in buyers]
    assert sum(sold) == 10
    in_sessions = [len((await b.get("/api/session")).json()["order_ids"]) for b in buyers]
    assert in_sessions == sold
    assert deadlocks.count() == 0


async def test_buyers_of_the_same_two_products_never_deadlock(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, caplog: pytest.LogCaptureFixture
) -> None:
    """Orders of both products, listed in either order: rows are locked in id order."""
    deadlocks = Deadlocks(caplog)
    mug = await add_product(admin, "mug", 100, 40)
    cup = await add_product(admin, "cup", 100, 40)
    buyers: list[Shopper] = [await new_shopper() for _ in range(8)]
    for buyer in buyers:
        await deposit(buyer, 10_000)
    attempts = [
        order(
            buyer,
            [(mug, 1), (cup, 1)] if n % 2 else [(cup, 1), (mug, 1)],
            card() if (n // 2) % 2 else from_account(buyer),
        )
        for buyer in buyers
        for n in range(4)
    ]
    responses = await asyncio.gather(*attempts)
    assert [r.status_code for r in responses] == [201] * 32, [r.text for r in responses]
    stock = {p["id"]: p["stock"] for p in (await admin.get("/api/products")).json()}
    assert (stock[mug], stock[cup]) == (8, 8)
    assert deadlocks.count() == 0


async def test_transfers_and_orders_from_the_same_accounts_never_deadlock(
    app: FastAPI, admin: Shopper, new_shopper: NewShopper, caplog: pytest.LogCaptureFixture
) -> None:
    """A transfer locks both accounts; an order locks its products, then one of them."""
    deadlocks = Deadlocks(caplog)
    mug = await add_product(admin, "mug", 100, 100)
    buyers: list[Shopper] = [await new_shopper() for _ in range(4)]
    for buyer in buyers:
        await deposit(buyer, 10_000)

    def transfer(n: int) -> Any:
        sender, receiver = buyers[n % 4], buyers[(n + 1 + (n // 4) % 3) % 4]
        body = {
            "from_account_id": sender.account_id,
            "to_account_id": receiver.account_id,
            "amount": 50,
        }
        return sender.post("/api/transfers", body)

    attempts = [transfer(n) for n in range(24)]
    attempts += [order(buyer, [(mug, 1)], from_account(buyer)) for buyer in buyers * 6]
    responses = await asyncio.gather(*attempts)
    assert [r.status_code for r in responses] == [201] * 48, [r.text for r in responses]
    balances = [(await b.get("/api/accounts")).json()[0]["balance"] for b in buyers]
    assert sum(balances) == 4 * 10_000 - 24 * 100
    assert (await admin.get("/api/products")).json()[0]["stock"] == 100 - 24
    assert deadlocks.count() == 0


async def test_two_tabs_ordering_at_once_both_land_in_the_session(
    admin: Shopper, new_shopper: NewShopper
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 100, 10)
    await deposit(shopper, 10_000)
    responses = await asyncio.gather(
        *(order(shopper, [(mug, 1)], from_account(shopper)) for _ in range(4))
    )
    assert [r.status_code for r in responses] == [201] * 4
    ids = sorted(r.json()["id"] for r in responses)
    assert sorted((await shopper.get("/api/session")).json()["order_ids"]) == ids


async def test_a_slow_order_overlapping_logout_does_not_revive_the_session(
    app: FastAPI,
    admin: Shopper,
    new_shopper: NewShopper,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shopper: Shopper = await new_shopper()
    mug = await add_product(admin, "mug", 100, 10)
    cookie = shopper.client.cookies["shop_session"]
    real_charge = gateway.charge
    charging, logged_out = asyncio.Event(), asyncio.Event()

    async def charge(**kwargs: Any) -> Any:
        # The order has read its session and reserved; its charge waits for the logout to end,
        # so that the two overlap however slow the machine (rather than a sleep being enough).
        charging.set()
        await asyncio.wait_for(logged_out.wait(), 10)
        return await real_charge(**kwargs)

    monkeypatch.setattr(gateway, "charge", charge)
    try:
        slow = asyncio.create_task(order(shopper, [(mug, 1)], card()))
        await asyncio.wait_for(charging.wait(), 10)
        async with client_for(app) as other_tab:
            other_tab.cookies.set("shop_session", cookie, domain="shop.test")
            logout = await other_tab.delete("/api/session", headers=shopper.headers())
            assert logout.status_code == 204
        logged_out.set()
        assert (await slow).status_code == 201  # the order itself went through
    finally:
        logged_out.set()  # never leave the order waiting (a failed assertion above)
    async with client_for(app) as replay:
        replay.cookies.set("shop_session", cookie, domain="shop.test")
        assert (await replay.get("/api/session")).status_code == 401


@pytest.mark.parametrize(
    "path",
    ["/api/orders/99999999999", "/api/orders/0", "/api/orders/-1", "/api/orders/1e3"],
)
async def test_ids_the_database_cannot_hold_are_422(new_shopper: NewShopper, path: str) -> None:
    shopper: Shopper = await new_shopper()
    assert (await shopper.get(path)).status_code == 422
    deposit_path = path.replace("/api/orders/", "/api/accounts/") + "/deposits"
    response = await shopper.post(deposit_path, {"amount": 1, "card_number": OK_CARD})
    assert response.status_code == 422


@pytest.mark.parametrize("amount", ['"100"', "true", "100.0", "1e400", "-1e400", '"1e400"'])
async def test_amounts_are_integers_not_things_that_look_like_them(
    new_shopper: NewShopper, amount: str
) -> None:
    """No coercion of a string, a boolean or a float; a number too large for a float is a 422
    too (its echo in the error must not break the answer)."""
    shopper: Shopper = await new_shopper()
    other: Shopper = await new_shopper()
    body = (
        f'{{"from_account_id": {shopper.account_id}, '
        f'"to_account_id": {other.account_id}, "amount": {amount}}}'
    )
    response = await shopper.client.post(
        "/api/transfers",
        content=body,
        headers={**shopper.headers(), "content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
