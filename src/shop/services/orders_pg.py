"""Checkout on PostgreSQL: each step one statement (data-modifying WITH queries).

The portable checkout in :mod:`.orders` makes a round trip per row it writes: price, order,
items, payment, stock. Through SQLAlchemy each round trip costs the server process more CPU
than PostgreSQL spends on the statement, and under load each one also waits for the event loop
to come round again. Here placing an order is one statement and settling a card payment is
another. Placing takes every product row it needs ``FOR UPDATE``, in id order (two orders
never deadlock), reads stock and price under that lock, and only then takes the stock, all of
it or none: the statement is correct on its own, so the card checkout runs it in autocommit
(``run_phase(one_statement=True)``) and its row locks end with it.

What the statement found is returned one row per line, so a failure says which product was
missing (404) or short (409) without another query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Integer, String, TextualSelect, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_atomic import ConcurrentChange
from shop.db.models import UTCDateTime, utcnow
from shop.errors import Conflict, NotFound, PaymentDeclined

from .lines import EarlierOrder, Line, PlacedItem, PlacedOrder, total_of

# The lines wanted; the product rows locked in id order, with stock and price as of the lock;
# whether every line can be served; the stock taken (all lines or none) and what it costs; the
# order, only when the stock was taken (and, paid from an account, the debit made); its items.
# The card's payment row, or the account's debit, fill in {debit}, {debited} and {payment}.
_PLACE = """
WITH wanted AS (
    SELECT * FROM unnest(:product_ids, :quantities) AS w(product_id, quantity)
), earlier AS (
    SELECT id, status, total FROM orders WHERE payment_key = :payment_key
), locked AS MATERIALIZED (
    SELECT p.id, p.stock, p.price FROM products p
    WHERE p.id IN (SELECT product_id FROM wanted) AND NOT EXISTS (SELECT 1 FROM earlier)
    ORDER BY p.id
    FOR UPDATE
), servable AS (
    SELECT count(*) = cardinality(:product_ids) AS ok
    FROM wanted w JOIN locked l ON l.id = w.product_id WHERE l.stock >= w.quantity
), taken AS (
    UPDATE products p SET stock = p.stock - w.quantity
    FROM wanted w
    WHERE p.id = w.product_id AND (SELECT ok FROM servable)
    RETURNING p.id, w.quantity, p.price
), priced AS (
    SELECT sum(quantity * price) AS total, count(*) AS lines FROM taken
){debit}, new_order AS (
    INSERT INTO orders (user_id, status, total, payment_method, account_id, payment_key,
                        created_at, updated_at)
    SELECT :user_id, :status, total, :payment_method, :account_id, :payment_key, :now, :now
    FROM priced
    WHERE lines = cardinality(:product_ids){debited}
    RETURNING id, total, created_at
), items AS (
    INSERT INTO order_items (order_id, product_id, quantity, unit_price)
    SELECT new_order.id, taken.id, taken.quantity, taken.price FROM new_order, taken
){payment}
SELECT w.product_id, w.quantity, l.price, l.stock, o.id AS order_id, o.created_at,
       e.id AS earlier_id, e.status AS earlier_status, e.total AS earlier_total{paid}
FROM wanted w
LEFT JOIN locked l ON l.id = w.product_id
LEFT JOIN new_order o ON true
LEFT JOIN earlier e ON true
ORDER BY w.product_id
"""

_CARD_PAYMENT = """, payment AS (
    INSERT INTO payments (gateway_key, amount, status, order_id, created_at, updated_at)
    SELECT :payment_key, total, 'pending', id, :now, :now FROM new_order
)"""

# The debit is conditional like every balance change; if it fails there is no order, and the
# account checkout's transaction is rolled back (the stock with it).
_ACCOUNT_DEBIT = """, debit AS (
    UPDATE accounts SET balance = balance - (SELECT total FROM priced)
    WHERE id = :account_id AND user_id = :user_id AND balance >= (SELECT total FROM priced)
    RETURNING id
)"""
#: the balance as the statement found it, to say why there was no order
_ACCOUNT_PAID = """,
       (SELECT balance FROM accounts WHERE id = :account_id AND user_id = :user_id) AS balance"""


def _statement(*, debit: str = "", payment: str = "", paid: str = "") -> TextualSelect:
    debited = " AND EXISTS (SELECT 1 FROM debit)" if debit else ""
    return (
        text(_PLACE.format(debit=debit, debited=debited, payment=payment, paid=paid))
        .bindparams(
            bindparam("product_ids", type_=ARRAY(Integer)),
            bindparam("quantities", type_=ARRAY(Integer)),
            bindparam("user_id", type_=Integer),
            bindparam("status", type_=String),
            bindparam("payment_method", type_=String),
            bindparam("account_id", type_=Integer),
            bindparam("payment_key", type_=String),
            bindparam("now", type_=UTCDateTime),
        )
        .columns(
            created_at=UTCDateTime, price=BigInteger, earlier_total=BigInteger, balance=BigInteger
        )
    )


_PLACE_CARD_ORDER = _statement(payment=_CARD_PAYMENT)
_PLACE_ACCOUNT_ORDER = _statement(debit=_ACCOUNT_DEBIT, paid=_ACCOUNT_PAID)

#: phase 2 of a card checkout: the order paid, its payment succeeded; how many orders moved
_SETTLE = text(
    """
    WITH ended AS (
        UPDATE orders SET status = 'paid', updated_at = :now
        WHERE id = :order_id AND status = 'pending'
        RETURNING id
    ), payment AS (
        UPDATE payments SET status = 'succeeded', charge_id = :charge_id, updated_at = :now
        WHERE order_id = :order_id
    )
    SELECT count(*) FROM ended
    """
).bindparams(
    bindparam("order_id", type_=Integer),
    bindparam("charge_id", type_=String),
    bindparam("now", type_=UTCDateTime),
)


def _params(lines: Sequence[Line], **fields: Any) -> dict[str, Any]:
    return {
        "product_ids": [line.product_id for line in lines],
        "quantities": [line.quantity for line in lines],
        "now": utcnow(),
        **fields,
    }


def _missing_product(rows: Sequence[Any]) -> None:
    for row in rows:
        if row.price is None:
            raise NotFound(f"Product {row.product_id} not found.")


def _short_of_stock(rows: Sequence[Any]) -> None:
    for row in rows:
        if row.stock < row.quantity:
            raise Conflict(f"Not enough stock for product {row.product_id}.")


def _placed(rows: Sequence[Any], status: str) -> PlacedOrder:
    first = rows[0]
    items = [PlacedItem(row.product_id, row.quantity, int(row.price)) for row in rows]
    return PlacedOrder(first.order_id, status, total_of(items), first.created_at, items)


async def reserve_card_order(
    db: AsyncSession, lines: Sequence[Line], *, user_id: int, payment_key: str
) -> PlacedOrder | EarlierOrder:
    """Phase 1 of a card checkout in one statement: stock taken, order and payment 'pending'.

    Or the order an earlier attempt with the same payment key placed, untouched.
    """
    params = _params(
        lines,
        user_id=user_id,
        status="pending",
        payment_method="card",
        account_id=None,
        payment_key=payment_key,
    )
    rows = (await db.execute(_PLACE_CARD_ORDER, params)).all()
    first = rows[0]
    if first.earlier_id is not None:
        return EarlierOrder(first.earlier_id, int(first.earlier_total), first.earlier_status)
    if first.order_id is None:
        _missing_product(rows)
        _short_of_stock(rows)
        raise AssertionError("no order placed, yet every line could be served")
    return _placed(rows, "pending")


async def place_account_order(
    db: AsyncSession, lines: Sequence[Line], *, user_id: int, account_id: int
) -> PlacedOrder:
    """An order paid from an account, in one statement of the request's transaction.

    On a failure the caller's transaction must roll back (the unit of work does, on the 4xx):
    the statement may have taken stock before the debit failed. Failures are named in the
    portable checkout's order: a missing product, the account, its funds, then the stock.
    """
    params = _params(
        lines,
        user_id=user_id,
        status="paid",
        payment_method="account",
        account_id=account_id,
        payment_key=None,
    )
    rows = (await db.execute(_PLACE_ACCOUNT_ORDER, params)).all()
    first = rows[0]
    if first.order_id is not None:
        return _placed(rows, "paid")
    _missing_product(rows)
    if first.balance is None:
        raise NotFound(f"Account {account_id} not found.")
    if first.balance < sum(row.quantity * row.price for row in rows):
        raise PaymentDeclined(f"Insufficient funds in account {account_id}.")
    _short_of_stock(rows)
    # Every check passes on what the statement saw, yet the debit failed: the balance moved
    # between its snapshot and the lock. Run the request again.
    raise ConcurrentChange(f"The balance of account {account_id} changed meanwhile.")


async def settle_card_order(db: AsyncSession, order_id: int, charge_id: str | None) -> bool:
    """Phase 2: the order paid and its payment succeeded; False if it was no longer pending."""
    params = {"order_id": order_id, "charge_id": charge_id, "now": utcnow()}
    return bool(await db.scalar(_SETTLE, params))
