"""Checkout and orders. Stock is taken by conditional UPDATE, never read-modify-write.

Paid from an account, an order is one transaction. Paid by card it is three steps, so that no
transaction stays open while the gateway is called (ARCHITECTURE.md):

    reserve   phase: order 'pending', stock taken, payment 'pending'      commit
    charge    gateway.charge(idempotency_key=order.payment_key)           no transaction
    settle    'paid' (in the request's transaction, with the web session) commit
    or release phase: 'failed', stock given back                          commit

The payment key is stable for one client request (derived from its Idempotency-Key), so a
retry, a takeover after a crash or ``shop payments reconcile`` can never charge twice.

On PostgreSQL placing an order and settling a card payment are one statement each
(:mod:`.orders_pg`); the card's reserve phase runs in autocommit. Elsewhere (SQLite) each row
is its own statement, and stock is taken last, just before COMMIT. Product rows are the hot
rows of a shop: every buyer of a product queues on its row lock, and a lock held across the
debit and the inserts (each a round trip, each a wait for a busy event loop) made checkout at
64 connections slower than the lock-free but wrong popular recipe. Prices are read first
without a lock and checked again under it; a price that changed in between re-runs the request
(``ConcurrentChange``).
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from fastapi_atomic import ConcurrentChange, UnitOfWork
from shop.db.models import (
    Account,
    Order,
    OrderItem,
    Payment,
    Product,
    on_postgres,
    table,
    utcnow,
)
from shop.errors import Conflict, GatewayUnavailable, NotFound, PaymentDeclined
from shop.payments import ChargeResult, GatewayError, PaymentGateway

from . import orders_pg
from .lines import EarlierOrder, Line, PlacedItem, PlacedOrder, merge_lines, total_of

__all__ = ["Line", "PlacedItem", "PlacedOrder", "checkout_with_account", "checkout_with_card"]

# Checkout's statements are built once, on the tables: building them per request and taking
# them through the ORM's execution layer cost more CPU than the database spent on them.
_products = table(Product)
_orders = table(Order)
_items = table(OrderItem)
_payments = table(Payment)
_accounts = table(Account)

_TAKE_STOCK = (
    update(_products)
    .where(_products.c.id == bindparam("product"), _products.c.stock >= bindparam("quantity"))
    .values(stock=_products.c.stock - bindparam("quantity"))
    .returning(_products.c.price)
)
_GIVE_BACK_STOCK = (
    update(_products)
    .where(_products.c.id == bindparam("product"))
    .values(stock=_products.c.stock + bindparam("quantity"))
)
_PRODUCT = select(_products.c.id).where(_products.c.id == bindparam("product"))
_PRICES = select(_products.c.id, _products.c.price).where(
    _products.c.id.in_(bindparam("ids", expanding=True))
)
_DEBIT = (
    update(_accounts)
    .where(
        _accounts.c.id == bindparam("account"),
        _accounts.c.user_id == bindparam("user"),
        _accounts.c.balance >= bindparam("amount"),
    )
    .values(balance=_accounts.c.balance - bindparam("amount"))
)
_OWNED_ACCOUNT = select(_accounts.c.id).where(
    _accounts.c.id == bindparam("account"), _accounts.c.user_id == bindparam("user")
)
_INSERT_ORDER = insert(_orders).returning(_orders.c.id, _orders.c.created_at)
_INSERT_ITEM = insert(_items)
_INSERT_PAYMENT = insert(_payments)
_ORDER_BY_KEY = select(_orders.c.id, _orders.c.total, _orders.c.status).where(
    _orders.c.payment_key == bindparam("key")
)
_ITEMS_OF_ORDER = (
    select(_items.c.product_id, _items.c.quantity)
    .where(_items.c.order_id == bindparam("order"))
    .order_by(_items.c.product_id)
)
_END_PENDING_ORDER = (
    update(_orders)
    .where(_orders.c.id == bindparam("order"), _orders.c.status == "pending")
    .values(status=bindparam("new_status"), updated_at=bindparam("now"))
)
_SETTLE_PAYMENT = (
    update(_payments)
    .where(_payments.c.order_id == bindparam("order"))
    .values(
        status=bindparam("new_status"),
        charge_id=bindparam("charge"),
        decline_code=bindparam("decline"),
        updated_at=bindparam("now"),
    )
)


async def _price(db: AsyncSession, lines: list[Line]) -> list[PlacedItem]:
    """Each line at its product's price (read without a lock: see the module's docstring)."""
    ids = [line.product_id for line in lines]
    prices = {id_: int(price) for id_, price in await db.execute(_PRICES, {"ids": ids})}
    for line in lines:
        if line.product_id not in prices:
            raise NotFound(f"Product {line.product_id} not found.")
    return [PlacedItem(line.product_id, line.quantity, prices[line.product_id]) for line in lines]


async def _take_stock(db: AsyncSession, items: list[PlacedItem]) -> None:
    """Take each item's quantity from stock, in product id order; its price must still hold."""
    for item in items:
        taken = {"product": item.product_id, "quantity": item.quantity}
        price = (await db.execute(_TAKE_STOCK, taken)).scalar_one_or_none()
        if price is None:
            if await db.scalar(_PRODUCT, {"product": item.product_id}) is None:
                raise NotFound(f"Product {item.product_id} not found.")
            raise Conflict(f"Not enough stock for product {item.product_id}.")
        if price != item.unit_price:
            raise ConcurrentChange(f"The price of product {item.product_id} changed meanwhile.")


async def _give_back_stock(db: AsyncSession, order_id: int) -> None:
    items = await db.execute(_ITEMS_OF_ORDER, {"order": order_id})
    for product_id, quantity in items.all():
        await db.execute(_GIVE_BACK_STOCK, {"product": product_id, "quantity": quantity})


async def _insert_order(
    db: AsyncSession, items: list[PlacedItem], *, status: str, **fields: object
) -> PlacedOrder:
    total = total_of(items)
    row = (await db.execute(_INSERT_ORDER, {"status": status, "total": total, **fields})).one()
    await db.execute(
        _INSERT_ITEM, [{"order_id": row.id, **dataclasses.asdict(item)} for item in items]
    )
    return PlacedOrder(row.id, status, total, row.created_at, items)


async def checkout_with_account(
    db: AsyncSession,
    *,
    user_id: int,
    lines: list[Line],
    account_id: int,
    placed: Callable[[int], Awaitable[None]] | None = None,
) -> PlacedOrder:
    """One transaction: debit, the paid order and the stock together (stock last).

    ``placed`` is called with the order's id before the stock is taken, for writes that
    belong to the same transaction and should not hold the product rows' locks longer.
    """
    if on_postgres(db):
        return await orders_pg.place_account_order(
            db, merge_lines(lines), user_id=user_id, account_id=account_id, placed=placed
        )
    items = await _price(db, merge_lines(lines))
    debit = {"account": account_id, "user": user_id, "amount": total_of(items)}
    if (await db.execute(_DEBIT, debit)).rowcount != 1:  # type: ignore[attr-defined]
        owned = await db.scalar(_OWNED_ACCOUNT, {"account": account_id, "user": user_id})
        if owned is None:
            raise NotFound(f"Account {account_id} not found.")
        raise PaymentDeclined(f"Insufficient funds in account {account_id}.")
    order = await _insert_order(
        db,
        items,
        status="paid",
        user_id=user_id,
        payment_method="account",
        account_id=account_id,
        payment_key=None,
    )
    if placed is not None:
        await placed(order.id)
    await _take_stock(db, items)
    return order


async def checkout_with_card(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    *,
    user_id: int,
    lines: list[Line],
    card_number: str,
    payment_key: str | None,
) -> PlacedOrder | Order:
    """Reserve, charge, settle (see the module's docstring). Settling uses ``uow.db``."""
    key = payment_key or f"order_{uuid.uuid4().hex}"
    merged = merge_lines(lines)
    postgres = on_postgres(uow.engine)

    async def reserve(db: AsyncSession) -> PlacedOrder | EarlierOrder:
        """The order reserved now, or the one an earlier attempt left."""
        if postgres:
            return await orders_pg.reserve_card_order(db, merged, user_id=user_id, payment_key=key)
        if payment_key is not None:  # a retry of a request that got this far may have run
            existing = (await db.execute(_ORDER_BY_KEY, {"key": key})).first()
            if existing is not None:
                return EarlierOrder(existing.id, existing.total, existing.status)
        items = await _price(db, merged)
        placed = await _insert_order(
            db,
            items,
            status="pending",
            user_id=user_id,
            payment_method="card",
            account_id=None,
            payment_key=key,
        )
        await db.execute(
            _INSERT_PAYMENT, {"gateway_key": key, "amount": placed.total, "order_id": placed.id}
        )
        await _take_stock(db, items)
        return placed

    reserved = await uow.run_phase(reserve, one_statement=postgres)
    order_id, total = reserved.id, reserved.total
    if reserved.status == "paid":
        return await get_order(uow.db, user_id=user_id, order_id=order_id)
    if reserved.status == "failed":
        raise PaymentDeclined("The card was declined.")

    result = await charge_or_find(gateway, amount=total, card_number=card_number, key=key)
    if result is UNKNOWN:
        raise GatewayUnavailable(
            "The payment gateway did not answer; the order is pending and will be settled."
        )
    if result is NO_CHARGE:
        await uow.run_phase(lambda db: release_order(db, order_id, None))
        raise GatewayUnavailable("The payment gateway failed; nothing was charged. Try again.")
    assert isinstance(result, ChargeResult)
    if result.status != "succeeded":
        await uow.run_phase(lambda db: release_order(db, order_id, result))
        raise PaymentDeclined(f"The card was declined ({result.decline_code or 'declined'}).")
    settled = await settle_order(uow.db, order_id, result)
    if not settled or not isinstance(reserved, PlacedOrder):
        # Settled meanwhile by a reconcile run, or reserved by an earlier attempt: read it.
        return await get_order(uow.db, user_id=user_id, order_id=order_id)
    # The order as reserved, now paid: its items and total are what phase 1 wrote.
    return dataclasses.replace(reserved, status="paid")


class _Outcome(enum.Enum):
    UNKNOWN = "the gateway did not answer: a charge may or may not have happened"
    NO_CHARGE = "the gateway failed and has no charge under the key"


UNKNOWN = _Outcome.UNKNOWN
NO_CHARGE = _Outcome.NO_CHARGE


async def charge_or_find(
    gateway: PaymentGateway, *, amount: int, card_number: str, key: str
) -> ChargeResult | _Outcome:
    """Charge once; after a failure ask the gateway by key what happened."""
    try:
        return await gateway.charge(amount=amount, card_number=card_number, idempotency_key=key)
    except GatewayError:  # GatewayTimeout included: ask rather than guess
        pass
    try:
        found = await gateway.lookup(key)
    except GatewayError:
        return UNKNOWN
    return NO_CHARGE if found is None else found


async def settle_order(db: AsyncSession, order_id: int, result: ChargeResult) -> bool:
    """Mark a pending order paid; False if it was no longer pending."""
    if on_postgres(db):
        return await orders_pg.settle_card_order(db, order_id, result.charge_id)
    now = utcnow()
    settled = await _end_pending_order(db, order_id, "paid", now)
    await _end_payment(db, order_id, "succeeded", now, charge_id=result.charge_id)
    return settled


async def release_order(db: AsyncSession, order_id: int, result: ChargeResult | None) -> bool:
    """Mark a pending order failed and give its stock back; False if it was not pending."""
    now = utcnow()
    if not await _end_pending_order(db, order_id, "failed", now):
        return False
    await _give_back_stock(db, order_id)
    if result is None:
        await _end_payment(db, order_id, "failed", now)
    else:
        await _end_payment(db, order_id, "declined", now, decline_code=result.decline_code)
    return True


async def _end_pending_order(db: AsyncSession, order_id: int, status: str, now: datetime) -> bool:
    """Move a pending order to ``status``; False if it was no longer pending."""
    ended = await db.execute(
        _END_PENDING_ORDER, {"order": order_id, "new_status": status, "now": now}
    )
    return bool(ended.rowcount)  # type: ignore[attr-defined]


async def _end_payment(
    db: AsyncSession,
    order_id: int,
    status: str,
    now: datetime,
    *,
    charge_id: str | None = None,
    decline_code: str | None = None,
) -> None:
    """Record how an order's card payment ended."""
    await db.execute(
        _SETTLE_PAYMENT,
        {
            "order": order_id,
            "new_status": status,
            "charge": charge_id,
            "decline": decline_code,
            "now": now,
        },
    )


async def get_order(db: AsyncSession, *, user_id: int, order_id: int) -> Order:
    """An order of the user. Failed ones are kept for the record but are not the user's orders:
    after a failed checkout the user's orders are exactly as before (CONTRACT.md)."""
    order = await db.scalar(
        select(Order)
        .where(Order.id == order_id, Order.user_id == user_id, Order.status != "failed")
        .options(selectinload(Order.items))
        .execution_options(populate_existing=True)
    )
    if order is None:
        raise NotFound(f"Order {order_id} not found.")
    return order


async def list_orders(db: AsyncSession, *, user_id: int) -> list[Order]:
    result = await db.execute(
        select(Order)
        .where(Order.user_id == user_id, Order.status != "failed")
        .options(selectinload(Order.items))
        .order_by(Order.created_at.desc(), Order.id.desc())
    )
    return list(result.scalars())
