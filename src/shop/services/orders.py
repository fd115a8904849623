"""Checkout and orders.

Paid from an account, an order is one transaction. Paid by card it is reserved in a phase of
its own, the card charged with no transaction open, then settled (:mod:`.card_payments`).

A product row is the hottest row of a shop: every buyer of a product queues on its lock. So
checkout takes it last: prices are read without a lock, the order is written (and the account
debited), and only then are the product rows locked, in id order so that two checkouts never
deadlock, their stock checked and taken. Locked last, they stay locked across the fewest
statements. A price that changed in between re-runs the request (``ConcurrentChange``).

``with_for_update(key_share=True)`` is PostgreSQL's ``FOR NO KEY UPDATE``, the lock an UPDATE
takes: unlike ``FOR UPDATE`` it does not wait for the KEY SHARE lock that inserting an order
item takes on its product through the foreign key. It reads the row as committed by whoever
held it before, so a checkout that waited for a release of stock sees the stock given back.
SQLite has one writer at a time and ignores row locks.

A checkout writes its order and items with INSERT statements built once, and returns what it
wrote (:class:`PlacedOrder`): nothing reads them back through the session, so the ORM's flush
would only add its bookkeeping to the request. Reads (:func:`get_order`, :func:`list_orders`)
load ORM objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from fastapi_atomic import ConcurrentChange, UnitOfWork
from shop import logs
from shop.db.models import Order, OrderItem, Payment, Product, table
from shop.errors import Conflict, NotFound, Unprocessable
from shop.payments import PaymentGateway

from . import card_payments
from .accounts import debit

products, orders, order_items = table(Product), table(Order), table(OrderItem)

_PRICES = select(products.c.id, products.c.price).where(
    products.c.id.in_(bindparam("product_ids", expanding=True))
)
#: the products' rows locked in id order, with their stock and price as locked
_LOCKED_PRODUCTS = (
    select(products.c.id, products.c.stock, products.c.price)
    .where(products.c.id.in_(bindparam("product_ids", expanding=True)))
    .order_by(products.c.id)
    .with_for_update(key_share=True)
)
_CHANGE_STOCK = (
    update(products)
    .where(products.c.id == bindparam("product_id"))
    .values(stock=products.c.stock + bindparam("by"))
)
_SET_STATUS = (
    update(orders).where(orders.c.id == bindparam("order_id")).values(status=bindparam("status"))
)
_INSERT_ORDER = insert(orders).returning(orders.c.id, orders.c.created_at)
_INSERT_ITEM = insert(order_items)
_ITEMS = (
    select(order_items.c.product_id, order_items.c.quantity)
    .where(order_items.c.order_id == bindparam("order_id"))
    .order_by(order_items.c.product_id)
)


@dataclass(frozen=True)
class Line:
    product_id: int
    quantity: int


@dataclass(frozen=True)
class Item:
    """One product of an order, at the price charged."""

    product_id: int
    quantity: int
    unit_price: int


@dataclass(frozen=True)
class PlacedOrder:
    """An order as a checkout wrote it (the API's ``OrderOut`` reads it as it reads an Order)."""

    id: int
    status: str
    total: int
    items: list[Item]
    created_at: datetime

    @classmethod
    def of(cls, order: Order) -> PlacedOrder:
        items = [Item(i.product_id, i.quantity, i.unit_price) for i in order.items]
        return cls(order.id, order.status, order.total, items, order.created_at)


async def checkout_with_account(
    db: AsyncSession, *, user_id: int, lines: Sequence[Line], account_id: int
) -> PlacedOrder:
    """One transaction: the debit, the paid order and the stock together (stock last)."""
    items = await _priced_items(db, lines)
    await debit(db, user_id=user_id, account_id=account_id, amount=total_of(items))
    order = await _place_order(
        db, user_id, items, status="paid", payment_method="account", account_id=account_id
    )
    await _take_stock(db, order.items)
    logs.after_commit(db, "order paid", order_id=order.id, total=order.total, payment="account")
    return order


async def checkout_with_card(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    *,
    user_id: int,
    lines: Sequence[Line],
    card_number: str,
    payment_key: str | None,
) -> PlacedOrder:
    """Reserve (order pending, stock taken), charge, settle: see :mod:`.card_payments`."""

    async def hold(db: AsyncSession, key: str) -> Payment:
        items = await _priced_items(db, lines)
        order = await _place_order(
            db, user_id, items, status="pending", payment_method="card", payment_key=key
        )
        if order.total == 0:
            raise Unprocessable(
                "This order costs nothing, so there is nothing to charge to a card; "
                "pay it from an account."
            )
        payment = await card_payments.add_payment(
            db, key=key, amount=order.total, gateway=gateway, order_id=order.id
        )
        await _take_stock(db, order.items)
        return payment

    payment = await card_payments.reserve(
        uow, gateway, client_key=payment_key, purpose="order", hold=hold
    )
    assert payment.order_id is not None
    purchase = OrderPurchase(payment.order_id)
    await card_payments.collect(uow, gateway, payment, card_number=card_number, purchase=purchase)
    return PlacedOrder.of(await get_order(uow.db, user_id=user_id, order_id=payment.order_id))


@dataclass(frozen=True)
class OrderPurchase:
    """A card payment's order: paid when the payment succeeds, failed (stock back) if not."""

    order_id: int

    async def complete(self, db: AsyncSession) -> None:
        await db.execute(_SET_STATUS, {"order_id": self.order_id, "status": "paid"})
        logs.after_commit(db, "order paid", order_id=self.order_id, payment="card")

    async def give_up(self, db: AsyncSession) -> None:
        await db.execute(_SET_STATUS, {"order_id": self.order_id, "status": "failed"})
        items = await db.execute(_ITEMS, {"order_id": self.order_id})
        for product_id, quantity in items.all():  # in product id order, the lock order
            await db.execute(_CHANGE_STOCK, {"product_id": product_id, "by": quantity})


async def get_order(db: AsyncSession, *, user_id: int, order_id: int) -> Order:
    """A paid order of the user. Failed ones are kept for the record, and pending ones (a card
    payment whose outcome is not known yet) are not settled: neither is one of the user's
    orders, so after a failed checkout the user's orders are exactly as before."""
    order = await db.scalar(
        select(Order)
        .where(Order.id == order_id, Order.user_id == user_id, Order.status == "paid")
        .options(selectinload(Order.items))
        # As stored now, even if this session holds it: its status moves by UPDATE statements.
        .execution_options(populate_existing=True)
    )
    if order is None:
        raise NotFound(f"Order {order_id} not found.")
    return order


async def list_orders(db: AsyncSession, *, user_id: int) -> list[Order]:
    result = await db.scalars(
        select(Order)
        .where(Order.user_id == user_id, Order.status == "paid")
        .options(selectinload(Order.items))
        .order_by(Order.created_at.desc(), Order.id.desc())
    )
    return list(result)


def merge_lines(lines: Iterable[Line]) -> list[Line]:
    """One line per product, in product id order (the lock order)."""
    merged: dict[int, int] = {}
    for line in lines:
        merged[line.product_id] = merged.get(line.product_id, 0) + line.quantity
    return [Line(product_id, quantity) for product_id, quantity in sorted(merged.items())]


def total_of(items: Iterable[Item]) -> int:
    return sum(item.quantity * item.unit_price for item in items)


async def _priced_items(db: AsyncSession, lines: Sequence[Line]) -> list[Item]:
    """One item per product at its current price (read without a lock); NotFound for none."""
    merged = merge_lines(lines)
    if not merged:
        raise Unprocessable("An order needs at least one product.")
    rows = await db.execute(_PRICES, {"product_ids": [line.product_id for line in merged]})
    prices = {product_id: price for product_id, price in rows}
    for line in merged:
        if line.product_id not in prices:
            raise NotFound(f"Product {line.product_id} not found.")
    return [Item(line.product_id, line.quantity, prices[line.product_id]) for line in merged]


async def _place_order(
    db: AsyncSession,
    user_id: int,
    items: list[Item],
    *,
    status: str,
    payment_method: str,
    account_id: int | None = None,
    payment_key: str | None = None,
) -> PlacedOrder:
    total = total_of(items)
    written = await db.execute(
        _INSERT_ORDER,
        {
            "user_id": user_id,
            "status": status,
            "total": total,
            "payment_method": payment_method,
            "account_id": account_id,
            "payment_key": payment_key,
        },
    )
    order_id, created_at = written.one()
    await db.execute(
        _INSERT_ITEM,
        [
            {
                "order_id": order_id,
                "product_id": i.product_id,
                "quantity": i.quantity,
                "unit_price": i.unit_price,
            }
            for i in items
        ],
    )
    order = PlacedOrder(order_id, status, total, items, created_at)
    logs.after_commit(db, "order placed", order_id=order.id, user_id=user_id, total=order.total)
    return order


async def _take_stock(db: AsyncSession, items: Sequence[Item]) -> None:
    """Lock the items' products in id order, then take each quantity at the price charged."""
    rows = await db.execute(_LOCKED_PRODUCTS, {"product_ids": [item.product_id for item in items]})
    locked = {product_id: (stock, price) for product_id, stock, price in rows}
    for item in sorted(items, key=lambda item: item.product_id):
        stock, price = locked[item.product_id]
        if stock < item.quantity:
            name = await db.scalar(select(products.c.name).where(products.c.id == item.product_id))
            raise Conflict(f"Not enough stock of {name} (product {item.product_id}): {stock} left.")
        if price != item.unit_price:
            raise ConcurrentChange(f"The price of product {item.product_id} changed meanwhile.")
        await db.execute(_CHANGE_STOCK, {"product_id": item.product_id, "by": -item.quantity})
