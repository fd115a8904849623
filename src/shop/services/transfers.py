"""Transfers between accounts: both balances change together, or neither.

Both rows are locked first, in id order, so two transfers between the same accounts never
deadlock; the owner and the funds are checked on the rows as locked (``FOR NO KEY UPDATE`` on
PostgreSQL: see :mod:`.orders`). The unit of work retries what the database still aborts.
The transfer's row is written with one INSERT ... RETURNING, built once like the statements
of :mod:`.accounts`: nothing reads it back through the session, so the ORM's flush would only
add its bookkeeping to the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from shop import logs
from shop.db.models import Transfer, table
from shop.errors import Conflict, NotFound, Unprocessable

from .accounts import accounts, change_balance

transfers = table(Transfer)

#: both accounts, locked in id order, with their owners and balances
_LOCKED_ACCOUNTS = (
    select(accounts.c.id, accounts.c.user_id, accounts.c.balance)
    .where(accounts.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(accounts.c.id)
    .with_for_update(key_share=True)
)
_RECORD = insert(transfers).returning(
    transfers.c.id,
    transfers.c.from_account_id,
    transfers.c.to_account_id,
    transfers.c.amount,
    transfers.c.created_at,
)


@dataclass(frozen=True)
class TransferMade:
    """The row a transfer wrote."""

    id: int
    from_account_id: int
    to_account_id: int
    amount: int
    created_at: datetime


async def transfer(
    db: AsyncSession, *, user_id: int, from_account_id: int, to_account_id: int, amount: int
) -> TransferMade:
    """Move ``amount`` cents from the user's account to another."""
    if amount <= 0:
        raise Unprocessable("The amount must be a positive number of cents.")
    if from_account_id == to_account_id:
        raise Unprocessable("Cannot transfer from an account to itself.")
    rows = await db.execute(_LOCKED_ACCOUNTS, {"ids": [from_account_id, to_account_id]})
    locked = {account_id: (owner, balance) for account_id, owner, balance in rows}
    owner, balance = locked.get(from_account_id, (None, 0))
    if owner != user_id:
        raise NotFound(f"Account {from_account_id} not found.")
    if to_account_id not in locked:
        raise NotFound(f"Account {to_account_id} not found.")
    if balance < amount:
        raise Conflict("Insufficient funds.")
    await change_balance(db, account_id=from_account_id, by=-amount)
    await change_balance(db, account_id=to_account_id, by=amount)
    row = await db.execute(
        _RECORD,
        {"from_account_id": from_account_id, "to_account_id": to_account_id, "amount": amount},
    )
    record = TransferMade(*row.one())
    logs.after_commit(db, "transfer made", transfer_id=record.id, amount=amount, user_id=user_id)
    return record
