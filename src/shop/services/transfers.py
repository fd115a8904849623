"""Transfers between accounts: both balances change together, or neither.

The statements are built once, at import, on the tables rather than the mapped classes: a
transfer is a hot path, and building a statement and taking it through the ORM's execution
layer cost more CPU than PostgreSQL spends running it. For the same reason PostgreSQL does the
whole transfer in one statement (data-modifying WITH queries): lock, checks, both balances and
the record, where the portable path makes four round trips.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Integer, Row, bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from shop.db.models import Account, Transfer, UTCDateTime, on_postgres, table, utcnow
from shop.errors import Conflict, NotFound, Unprocessable

_accounts = table(Account)
_transfers = table(Transfer)

# SQLite has one writer: reading the owners, then the conditional debit, is enough.
_OWNERS = (
    select(_accounts.c.id, _accounts.c.user_id)
    .where(_accounts.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_accounts.c.id)
)
_DEBIT = (
    update(_accounts)
    .where(_accounts.c.id == bindparam("account"), _accounts.c.balance >= bindparam("amount"))
    .values(balance=_accounts.c.balance - bindparam("amount"))
)
_CREDIT = (
    update(_accounts)
    .where(_accounts.c.id == bindparam("account"))
    .values(balance=_accounts.c.balance + bindparam("amount"))
)
_RECORD = insert(_transfers).returning(*_transfers.c)

# PostgreSQL: both rows locked in id order (two transfers never deadlock), owner and funds read
# under the lock, both balances moved and the transfer recorded only when every check holds.
# FOR NO KEY UPDATE, not FOR UPDATE: an order or transfer row that references the account takes
# a KEY SHARE lock on it, which FOR UPDATE would wait for and NO KEY UPDATE does not. The new
# balances are computed from the rows as locked, not from the UPDATE's own row: the
# statement's snapshot predates the lock, and PostgreSQL checks ``balance >= 0`` on a row
# computed from the snapshot's version before it notices a concurrent credit (orders_pg.py
# says more). SERIALIZABLE fails a transfer whose rows changed meanwhile; the unit of work
# retries it.
_TRANSFER = (
    text(
        """
WITH locked AS MATERIALIZED (
    SELECT id, user_id, balance FROM accounts
    WHERE id IN (:from_account_id, :to_account_id)
    ORDER BY id
    FOR NO KEY UPDATE
), checked AS (
    SELECT coalesce((SELECT user_id = :user_id FROM locked WHERE id = :from_account_id), false)
               AS owned,
           EXISTS (SELECT 1 FROM locked WHERE id = :to_account_id) AS found,
           coalesce((SELECT balance >= :amount FROM locked WHERE id = :from_account_id), false)
               AS funded
), moved AS (
    UPDATE accounts a
    SET balance = l.balance + CASE WHEN l.id = :from_account_id THEN -:amount ELSE :amount END
    FROM locked l, checked c
    WHERE a.id = l.id AND c.owned AND c.found AND c.funded
), recorded AS (
    INSERT INTO transfers (from_account_id, to_account_id, amount, created_at)
    SELECT :from_account_id, :to_account_id, :amount, :now FROM checked
    WHERE owned AND found AND funded
    RETURNING id, from_account_id, to_account_id, amount, created_at
)
SELECT c.owned, c.found, c.funded, r.* FROM checked c LEFT JOIN recorded r ON true
"""
    )
    .bindparams(
        bindparam("from_account_id", type_=Integer),
        bindparam("to_account_id", type_=Integer),
        bindparam("user_id", type_=Integer),
        bindparam("amount", type_=BigInteger),
        bindparam("now", type_=UTCDateTime),
    )
    .columns(amount=BigInteger, created_at=UTCDateTime)
)


async def transfer(
    db: AsyncSession, *, user_id: int, from_account_id: int, to_account_id: int, amount: int
) -> Row[Any]:
    """Move ``amount`` cents; returns the transfer's row."""
    if amount <= 0:
        raise Unprocessable("The amount must be a positive number of cents.")
    if from_account_id == to_account_id:
        raise Unprocessable("Cannot transfer from an account to itself.")
    if on_postgres(db):
        return await _transfer_in_one_statement(
            db,
            user_id=user_id,
            from_account_id=from_account_id,
            to_account_id=to_account_id,
            amount=amount,
        )
    ids = sorted((from_account_id, to_account_id))
    owners = {row.id: row.user_id for row in await db.execute(_OWNERS, {"ids": ids})}
    if owners.get(from_account_id) != user_id:
        raise NotFound(f"Account {from_account_id} not found.")
    if to_account_id not in owners:
        raise NotFound(f"Account {to_account_id} not found.")
    debited = await db.execute(_DEBIT, {"account": from_account_id, "amount": amount})
    if debited.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("Insufficient funds.")
    await db.execute(_CREDIT, {"account": to_account_id, "amount": amount})
    recorded = await db.execute(
        _RECORD,
        {"from_account_id": from_account_id, "to_account_id": to_account_id, "amount": amount},
    )
    return recorded.one()


async def _transfer_in_one_statement(
    db: AsyncSession, *, user_id: int, from_account_id: int, to_account_id: int, amount: int
) -> Row[Any]:
    params = {
        "from_account_id": from_account_id,
        "to_account_id": to_account_id,
        "user_id": user_id,
        "amount": amount,
        "now": utcnow(),
    }
    row = (await db.execute(_TRANSFER, params)).one()
    # In the portable path's order: the caller's account, the other account, the funds.
    if not row.owned:
        raise NotFound(f"Account {from_account_id} not found.")
    if not row.found:
        raise NotFound(f"Account {to_account_id} not found.")
    if not row.funded:
        raise Conflict("Insufficient funds.")
    return row
