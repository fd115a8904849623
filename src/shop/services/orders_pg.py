"""Checkout on PostgreSQL: a statement a step (data-modifying WITH queries).

The portable checkout in :mod:`.orders` makes a round trip per row it writes: price, order,
items, payment, stock. Through SQLAlchemy each round trip costs the server process more CPU
than PostgreSQL spends on the statement, and under load each one also waits for the event loop
to come round again.

- A card order is reserved in one statement: it locks every product row it needs, in id
  order (two orders never deadlock), reads stock and price under that lock,
  and takes the stock of all lines or none, with the order, its items and the payment's row.
  It is correct on its own, so the reserve phase runs it in autocommit
  (``run_phase(one_statement=True)``) and its row locks end with it. Settling is a second one.
- An order paid from an account is two statements in the request's transaction: the order
  at prices read without a lock; then, after the web session is written, every lock at once:
  the stock (product rows locked in id order), the debit and the items, the prices checked
  again under the lock. Locked last, the rows stay locked across COMMIT alone. Taking the
  stock and the debit in the first statement held those rows across the web session's write
  too (p99 653 and 808 ms at 64 connections, bench/README.md).

Each statement answers one row per line, so a failure says which product was missing (404),
which account (404) or why it was short (402, 409) without another query.

Under READ COMMITTED a statement's snapshot is taken when it starts, before its locks: a row
another transaction changed while this one waited for it is read as locked (newest version)
by the locking CTE, but an UPDATE of it computes its new row from the snapshot's version
first, checks the table's CHECK constraints on that, and only then finds the row moved on
and recomputes. ``stock = stock - 1`` on a snapshot that predates a release of stock fails
``stock >= 0`` (a 500), and ``WHERE stock >= 1`` on it skips the row (a false 409). So every
new value and every condition is computed from the locked rows (``l.stock``, ``acc.balance``),
never from the updated row's own columns. ``tests/integration/shop/test_locked_rows.py``
holds such changes open while a checkout or a transfer waits for them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Integer, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_atomic import ConcurrentChange
from shop.db.models import UTCDateTime, utcnow
from shop.errors import Conflict, NotFound, PaymentDeclined

from .lines import EarlierOrder, Line, PlacedItem, PlacedOrder, total_of

_WANTED = """wanted AS (
    SELECT * FROM unnest(:product_ids, :quantities) AS w(product_id, quantity)
)"""
# FOR NO KEY UPDATE is the lock an UPDATE that leaves the key alone takes. FOR UPDATE would
# also wait for every transaction holding the row's KEY SHARE lock, which inserting an order
# item takes through its foreign key: two account checkouts of one product deadlocked on it.
_LOCKED = """locked AS MATERIALIZED (
    SELECT p.id, p.stock, p.price FROM products p
    WHERE p.id IN (SELECT product_id FROM wanted){unless}
    ORDER BY p.id
    FOR NO KEY UPDATE
)"""
_LINE_BINDS = (
    bindparam("product_ids", type_=ARRAY(Integer)),
    bindparam("quantities", type_=ARRAY(Integer)),
)

# The lines wanted; an order an earlier attempt placed under the same payment key; the product
# rows locked in id order, stock and price as of the lock; whether every line can be served;
# the stock taken (all lines or none) and what it costs; the order (only when every line was
# taken), its items and its payment.
_RESERVE_CARD_ORDER = (
    text(
        f"""
WITH {_WANTED}, earlier AS (
    SELECT id, status, total FROM orders WHERE payment_key = :payment_key
), {_LOCKED.format(unless=" AND NOT EXISTS (SELECT 1 FROM earlier)")}, servable AS (
    SELECT count(*) = cardinality(:product_ids) AS ok
    FROM wanted w JOIN locked l ON l.id = w.product_id WHERE l.stock >= w.quantity
), taken AS (
    UPDATE products p SET stock = l.stock - w.quantity
    FROM wanted w JOIN locked l ON l.id = w.product_id
    WHERE p.id = l.id AND (SELECT ok FROM servable)
    RETURNING p.id, w.quantity, l.price
), cost AS (
    SELECT sum(quantity * price) AS total, count(*) AS lines FROM taken
), new_order AS (
    INSERT INTO orders (user_id, status, total, payment_method, account_id, payment_key,
                        created_at, updated_at)
    SELECT :user_id, 'pending', total, 'card', NULL, :payment_key, :now, :now
    FROM cost WHERE lines = cardinality(:product_ids)
    RETURNING id, total, created_at
), items AS (
    INSERT INTO order_items (order_id, product_id, quantity, unit_price)
    SELECT new_order.id, taken.id, taken.quantity, taken.price FROM new_order, taken
), payment AS (
    INSERT INTO payments (gateway_key, amount, status, order_id, created_at, updated_at)
    SELECT :payment_key, total, 'pending', id, :now, :now FROM new_order
)
SELECT w.product_id, w.quantity, l.price, l.stock, o.id AS order_id, o.created_at,
       e.id AS earlier_id, e.status AS earlier_status, e.total AS earlier_total
FROM wanted w
LEFT JOIN locked l ON l.id = w.product_id
LEFT JOIN new_order o ON true
LEFT JOIN earlier e ON true
ORDER BY w.product_id
"""
    )
    .bindparams(
        *_LINE_BINDS,
        bindparam("user_id", type_=Integer),
        bindparam("payment_key", type_=String),
        bindparam("now", type_=UTCDateTime),
    )
    .columns(created_at=UTCDateTime, price=BigInteger, earlier_total=BigInteger)
)

# Paid from an account, first: prices read without a lock, and the order, only when every
# product exists and the account is the user's. Nothing is locked but the order's new row.
_PLACE_PAID_ORDER = (
    text(
        f"""
WITH {_WANTED}, priced AS (
    SELECT w.product_id, w.quantity, p.price
    FROM wanted w JOIN products p ON p.id = w.product_id
), cost AS (
    SELECT sum(quantity * price) AS total, count(*) AS lines FROM priced
), owned AS (
    SELECT id FROM accounts WHERE id = :account_id AND user_id = :user_id
), new_order AS (
    INSERT INTO orders (user_id, status, total, payment_method, account_id, payment_key,
                        created_at, updated_at)
    SELECT :user_id, 'paid', total, 'account', :account_id, NULL, :now, :now
    FROM cost WHERE lines = cardinality(:product_ids) AND EXISTS (SELECT 1 FROM owned)
    RETURNING id, created_at
)
SELECT w.product_id, w.quantity, p.price, o.id AS order_id, o.created_at
FROM wanted w
LEFT JOIN priced p ON p.product_id = w.product_id
LEFT JOIN new_order o ON true
ORDER BY w.product_id
"""
    )
    .bindparams(
        *_LINE_BINDS,
        bindparam("user_id", type_=Integer),
        bindparam("account_id", type_=Integer),
        bindparam("now", type_=UTCDateTime),
    )
    .columns(created_at=UTCDateTime, price=BigInteger)
)

# Then, last, after the web session is written: the product rows locked in id order, each line
# taken if there is enough, the account debited by what the order charged, and the items
# written at the prices as locked (the caller compares them with what was charged). Every row
# lock of the checkout is taken here, so each is held across COMMIT alone: the account row
# too, which a customer's other tab may be waiting for. The account's lock reads ``locked`` so
# that the product rows are locked before the account row, always in that order. The
# items come only under the lock: an item's foreign key takes a KEY SHARE lock on its product,
# and transactions that held those while queueing for the rows' update locks deadlocked with
# the card's reserve (1-19 deadlocks in 1,200 mixed orders of two products; none like this).
_PAY_AND_TAKE_STOCK = (
    text(
        f"""
WITH {_WANTED}, {_LOCKED.format(unless="")}, taken AS (
    UPDATE products p SET stock = l.stock - w.quantity
    FROM wanted w JOIN locked l ON l.id = w.product_id
    WHERE p.id = l.id AND l.stock >= w.quantity
    RETURNING p.id, w.quantity, l.price
), account AS MATERIALIZED (
    SELECT id, balance FROM accounts
    WHERE id = :account_id AND user_id = :user_id AND (SELECT count(*) FROM locked) >= 0
    FOR NO KEY UPDATE
), debit AS (
    UPDATE accounts a SET balance = acc.balance - :total
    FROM account acc
    WHERE a.id = acc.id AND acc.balance >= :total
    RETURNING a.id
), items AS (
    INSERT INTO order_items (order_id, product_id, quantity, unit_price)
    SELECT :order_id, id, quantity, price FROM taken
)
SELECT w.product_id, t.price, (SELECT count(*) FROM debit) AS debited
FROM wanted w LEFT JOIN taken t ON t.id = w.product_id
ORDER BY w.product_id
"""
    )
    .bindparams(
        *_LINE_BINDS,
        bindparam("order_id", type_=Integer),
        bindparam("user_id", type_=Integer),
        bindparam("account_id", type_=Integer),
        bindparam("total", type_=BigInteger),
    )
    .columns(price=BigInteger)
)

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


def _lines(lines: Sequence[Line]) -> dict[str, Any]:
    return {
        "product_ids": [line.product_id for line in lines],
        "quantities": [line.quantity for line in lines],
    }


def _missing_product(rows: Sequence[Any]) -> None:
    for row in rows:
        if row.price is None:
            raise NotFound(f"Product {row.product_id} not found.")


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
    params = {**_lines(lines), "user_id": user_id, "payment_key": payment_key, "now": utcnow()}
    rows = (await db.execute(_RESERVE_CARD_ORDER, params)).all()
    first = rows[0]
    if first.earlier_id is not None:
        return EarlierOrder(first.earlier_id, int(first.earlier_total), first.earlier_status)
    if first.order_id is None:
        _missing_product(rows)
        for row in rows:
            if row.stock < row.quantity:
                raise Conflict(f"Not enough stock for product {row.product_id}.")
        raise AssertionError("no order placed, yet every line could be served")
    return _placed(rows, "pending")


async def place_account_order(
    db: AsyncSession,
    lines: Sequence[Line],
    *,
    user_id: int,
    account_id: int,
    placed: Callable[[int], Awaitable[None]] | None = None,
) -> PlacedOrder:
    """An order paid from an account, in the request's transaction; ``placed`` is called with
    its id before the stock is taken (see the module's docstring).

    On a failure the caller's transaction must roll back (the unit of work does, on the 4xx).
    Failures are named in the portable checkout's order: a missing product, the account, its
    funds, then the stock.
    """
    account = {"user_id": user_id, "account_id": account_id}
    rows = (
        await db.execute(_PLACE_PAID_ORDER, {**_lines(lines), **account, "now": utcnow()})
    ).all()
    if rows[0].order_id is None:
        _missing_product(rows)
        raise NotFound(f"Account {account_id} not found.")
    order = _placed(rows, "paid")
    if placed is not None:
        await placed(order.id)
    paid = {**_lines(lines), **account, "order_id": order.id, "total": order.total}
    taken = (await db.execute(_PAY_AND_TAKE_STOCK, paid)).all()
    if not taken[0].debited:
        raise PaymentDeclined(f"Insufficient funds in account {account_id}.")
    for item, row in zip(order.items, taken, strict=True):
        if row.price is None:
            raise Conflict(f"Not enough stock for product {item.product_id}.")
        if row.price != item.unit_price:
            raise ConcurrentChange(f"The price of product {item.product_id} changed meanwhile.")
    return order


async def settle_card_order(db: AsyncSession, order_id: int, charge_id: str | None) -> bool:
    """Phase 2: the order paid and its payment succeeded; False if it was no longer pending."""
    params = {"order_id": order_id, "charge_id": charge_id, "now": utcnow()}
    return bool(await db.scalar(_SETTLE, params))
