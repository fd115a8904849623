"""Transfers between accounts: both balances change together, or neither.

Both rows are locked first, in id order, so two transfers between the same accounts never
deadlock; the owner and the funds are checked on the rows as locked (``FOR NO KEY UPDATE`` on
PostgreSQL: see :mod:`.orders`). The unit of work retries what the database still aborts.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shop.db.models import Account, Transfer
from shop.errors import Conflict, NotFound, Unprocessable

from .accounts import change_balance


async def transfer(
    db: AsyncSession, *, user_id: int, from_account_id: int, to_account_id: int, amount: int
) -> Transfer:
    """Move ``amount`` cents from the user's account to another."""
    if amount <= 0:
        raise Unprocessable("The amount must be a positive number of cents.")
    if from_account_id == to_account_id:
        raise Unprocessable("Cannot transfer from an account to itself.")
    rows = await db.execute(
        select(Account.id, Account.user_id, Account.balance)
        .where(Account.id.in_((from_account_id, to_account_id)))
        .order_by(Account.id)
        .with_for_update(key_share=True)
    )
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
    record = Transfer(from_account_id=from_account_id, to_account_id=to_account_id, amount=amount)
    db.add(record)
    await db.flush()
    return record
