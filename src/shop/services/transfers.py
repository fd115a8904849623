"""Transfers between accounts: both balances change together, or neither.

The statements are built once, at import, on the tables rather than the mapped classes: a
transfer is a hot path, and building a statement and taking it through the ORM's execution
layer cost more CPU than PostgreSQL spends running it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shop.db.models import Account, Transfer, table
from shop.errors import Conflict, NotFound, Unprocessable

_accounts = table(Account)
_transfers = table(Transfer)

_OWNERS = (
    select(_accounts.c.id, _accounts.c.user_id)
    .where(_accounts.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_accounts.c.id)
)
#: PostgreSQL locks both rows, in id order, so two transfers never deadlock; SQLite has one writer
_OWNERS_LOCKED = _OWNERS.with_for_update()
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


async def transfer(
    db: AsyncSession, *, user_id: int, from_account_id: int, to_account_id: int, amount: int
) -> Row[Any]:
    """Move ``amount`` cents; returns the transfer's row."""
    if amount <= 0:
        raise Unprocessable("The amount must be a positive number of cents.")
    if from_account_id == to_account_id:
        raise Unprocessable("Cannot transfer from an account to itself.")
    query = _OWNERS_LOCKED if db.get_bind().dialect.name == "postgresql" else _OWNERS
    ids = sorted((from_account_id, to_account_id))
    owners = {row.id: row.user_id for row in await db.execute(query, {"ids": ids})}
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
