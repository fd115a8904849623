"""Transfers between accounts: both balances change together, or neither."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shop.db.models import Account, Transfer
from shop.errors import Conflict, NotFound, Unprocessable


async def transfer(
    db: AsyncSession, *, user_id: int, from_account_id: int, to_account_id: int, amount: int
) -> Transfer:
    """Move ``amount`` cents. Rows are locked in id order so two transfers never deadlock."""
    if amount <= 0:
        raise Unprocessable("The amount must be a positive number of cents.")
    if from_account_id == to_account_id:
        raise Unprocessable("Cannot transfer from an account to itself.")
    ids = sorted((from_account_id, to_account_id))
    query = select(Account.id, Account.user_id).where(Account.id.in_(ids)).order_by(Account.id)
    if db.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    owners = {row.id: row.user_id for row in await db.execute(query)}
    if owners.get(from_account_id) != user_id:
        raise NotFound(f"Account {from_account_id} not found.")
    if to_account_id not in owners:
        raise NotFound(f"Account {to_account_id} not found.")
    debited = await db.execute(
        update(Account)
        .where(Account.id == from_account_id, Account.balance >= amount)
        .values(balance=Account.balance - amount)
        .execution_options(synchronize_session=False)
    )
    if debited.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("Insufficient funds.")
    await db.execute(
        update(Account)
        .where(Account.id == to_account_id)
        .values(balance=Account.balance + amount)
        .execution_options(synchronize_session=False)
    )
    record = Transfer(from_account_id=from_account_id, to_account_id=to_account_id, amount=amount)
    db.add(record)
    await db.flush()
    return record
