"""Checkout and orders. Stock is taken by conditional UPDATE, never read-modify-write.

Paid from an account, an order is one transaction. Paid by card it is three steps, so that no
transaction stays open while the gateway is called (ARCHITECTURE.md):

    reserve   phase: order 'pending', stock taken, payment 'pending'      commit
    charge    gateway.charge(idempotency_key=order.payment_key)           no transaction
    settle    'paid' (in the request's transaction, with the web session) commit
    or release phase: 'failed', stock given back                          commit

The payment key is stable for one client request (derived from its Idempotency-Key), so a
retry, a takeover after a crash or ``shop payments reconcile`` can never charge twice.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value

from fastapi_atomic import UnitOfWork
from shop.db.models import Account, Order, OrderItem, Payment, Product, utcnow
from shop.errors import Conflict, GatewayUnavailable, NotFound, PaymentDeclined
from shop.payments import ChargeResult, GatewayError, PaymentGateway


@dataclass(frozen=True)
class Line:
    product_id: int
    quantity: int


def merge_lines(lines: Iterable[Line]) -> list[Line]:
    """One line per product, in product id order (the lock order)."""
    merged: dict[int, int] = {}
    for line in lines:
        merged[line.product_id] = merged.get(line.product_id, 0) + line.quantity
    return [Line(product_id, quantity) for product_id, quantity in sorted(merged.items())]


async def _take_stock(db: AsyncSession, lines: list[Line]) -> list[tuple[Line, int]]:
    """Take each line's quantity from stock; returns each line with its unit price.

    The hot UPDATEs here and in transfers skip ``synchronize_session``: no Product or Account
    is loaded in the request's AsyncSession, so there is nothing to synchronize, and working
    that out cost the ORM more than the statement.
    """
    priced: list[tuple[Line, int]] = []
    for line in lines:
        price = (
            await db.execute(
                update(Product)
                .where(Product.id == line.product_id, Product.stock >= line.quantity)
                .values(stock=Product.stock - line.quantity)
                .returning(Product.price)
                .execution_options(synchronize_session=False)
            )
        ).scalar_one_or_none()
        if price is None:
            exists = await db.scalar(select(Product.id).where(Product.id == line.product_id))
            if exists is None:
                raise NotFound(f"Product {line.product_id} not found.")
            raise Conflict(f"Not enough stock for product {line.product_id}.")
        priced.append((line, int(price)))
    return priced


async def _give_back_stock(db: AsyncSession, order_id: int) -> None:
    items = await db.execute(
        select(OrderItem.product_id, OrderItem.quantity)
        .where(OrderItem.order_id == order_id)
        .order_by(OrderItem.product_id)
    )
    for product_id, quantity in items.all():
        await db.execute(
            update(Product).where(Product.id == product_id).values(stock=Product.stock + quantity)
        )


def _new_order(
    db: AsyncSession, user_id: int, priced: list[tuple[Line, int]], **fields: object
) -> Order:
    order = Order(
        user_id=user_id, total=sum(line.quantity * price for line, price in priced), **fields
    )
    db.add(order)
    return order


async def _add_items(db: AsyncSession, order: Order, priced: list[tuple[Line, int]]) -> None:
    await db.flush()
    items = [
        OrderItem(
            order_id=order.id, product_id=line.product_id, quantity=line.quantity, unit_price=price
        )
        for line, price in priced
    ]
    db.add_all(items)
    await db.flush()
    # The order's items are exactly these: no need to read them back.
    set_committed_value(order, "items", items)


async def checkout_with_account(
    db: AsyncSession, *, user_id: int, lines: list[Line], account_id: int
) -> Order:
    """One transaction: stock, debit and the paid order together."""
    priced = await _take_stock(db, merge_lines(lines))
    order = _new_order(
        db, user_id, priced, status="paid", payment_method="account", account_id=account_id
    )
    debited = await db.execute(
        update(Account)
        .where(Account.id == account_id, Account.user_id == user_id, Account.balance >= order.total)
        .values(balance=Account.balance - order.total)
        .execution_options(synchronize_session=False)
    )
    if debited.rowcount != 1:  # type: ignore[attr-defined]
        owned = await db.scalar(
            select(Account.id).where(Account.id == account_id, Account.user_id == user_id)
        )
        if owned is None:
            raise NotFound(f"Account {account_id} not found.")
        raise PaymentDeclined(f"Insufficient funds in account {account_id}.")
    await _add_items(db, order, priced)
    return order


async def checkout_with_card(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    *,
    user_id: int,
    lines: list[Line],
    card_number: str,
    payment_key: str | None,
) -> Order:
    """Reserve, charge, settle (see the module's docstring). Settling uses ``uow.db``."""
    key = payment_key or f"order_{uuid.uuid4().hex}"
    merged = merge_lines(lines)

    async def reserve(db: AsyncSession) -> Order:
        if payment_key is not None:  # a retry of a request that got this far may have run
            existing = await db.scalar(select(Order).where(Order.payment_key == key))
            if existing is not None:
                return existing
        priced = await _take_stock(db, merged)
        order = _new_order(db, user_id, priced, payment_method="card", payment_key=key)
        await _add_items(db, order, priced)
        db.add(Payment(gateway_key=key, amount=order.total, order_id=order.id))
        await db.flush()
        return order

    reserved = await uow.run_phase(reserve)
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
    if not await settle_order(uow.db, order_id, result):
        # Settled meanwhile by a reconcile run, which found this charge: read what it wrote.
        return await get_order(uow.db, user_id=user_id, order_id=order_id)
    # The order as reserved, now paid: its items and total are what phase 1 wrote.
    set_committed_value(reserved, "status", "paid")
    return reserved


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
    settled = await db.execute(
        update(Order)
        .where(Order.id == order_id, Order.status == "pending")
        .values(status="paid", updated_at=utcnow())
    )
    await db.execute(
        update(Payment)
        .where(Payment.order_id == order_id)
        .values(status="succeeded", charge_id=result.charge_id, updated_at=utcnow())
    )
    return bool(settled.rowcount)  # type: ignore[attr-defined]


async def release_order(db: AsyncSession, order_id: int, result: ChargeResult | None) -> bool:
    """Mark a pending order failed and give its stock back; False if it was not pending."""
    released = await db.execute(
        update(Order)
        .where(Order.id == order_id, Order.status == "pending")
        .values(status="failed", updated_at=utcnow())
    )
    if not released.rowcount:  # type: ignore[attr-defined]
        return False
    await _give_back_stock(db, order_id)
    status = "failed" if result is None else "declined"
    await db.execute(
        update(Payment)
        .where(Payment.order_id == order_id)
        .values(
            status=status,
            decline_code=result.decline_code if result else None,
            updated_at=utcnow(),
        )
    )
    return True


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
