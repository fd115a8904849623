"""Deposits: the card is charged, then the balance raised; both or neither.

The same three steps as a card checkout (see services/orders.py): a committed 'pending' deposit,
the charge with no transaction open, then the balance raised in the request's transaction.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_atomic import UnitOfWork
from shop.db.models import Account, Deposit, Payment, utcnow
from shop.errors import GatewayUnavailable, NotFound, PaymentDeclined
from shop.payments import ChargeResult, PaymentGateway

from .orders import NO_CHARGE, UNKNOWN, charge_or_find


async def deposit(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    *,
    user_id: int,
    account_id: int,
    amount: int,
    card_number: str,
    payment_key: str | None,
) -> Deposit:
    owned = await uow.db.scalar(
        select(Account.id).where(Account.id == account_id, Account.user_id == user_id)
    )
    if owned is None:
        raise NotFound(f"Account {account_id} not found.")
    key = payment_key or f"deposit_{uuid.uuid4().hex}"

    async def reserve(db: AsyncSession) -> tuple[int, str]:
        existing = await db.scalar(select(Payment).where(Payment.gateway_key == key))
        if existing is not None and existing.deposit_id is not None:
            record = await db.get_one(Deposit, existing.deposit_id)
            return record.id, record.status
        record = Deposit(account_id=account_id, amount=amount, status="pending")
        db.add(record)
        await db.flush()
        db.add(Payment(gateway_key=key, amount=amount, deposit_id=record.id))
        await db.flush()
        return record.id, record.status

    deposit_id, status = await uow.run_phase(reserve)
    if status == "failed":
        raise PaymentDeclined("The card was declined.")
    if status == "pending":
        result = await charge_or_find(gateway, amount=amount, card_number=card_number, key=key)
        if result is UNKNOWN:
            raise GatewayUnavailable(
                "The payment gateway did not answer; the deposit is pending and will be settled."
            )
        if result is NO_CHARGE or (
            isinstance(result, ChargeResult) and result.status != "succeeded"
        ):
            declined = result if isinstance(result, ChargeResult) else None
            await uow.run_phase(lambda db: fail_deposit(db, deposit_id, declined))
            if declined is None:
                raise GatewayUnavailable("The payment gateway failed; nothing was charged.")
            raise PaymentDeclined(f"The card was declined ({declined.decline_code or 'declined'}).")
        assert isinstance(result, ChargeResult)
        await settle_deposit(uow.db, deposit_id, result)
    return await uow.db.get_one(Deposit, deposit_id, populate_existing=True)


async def settle_deposit(db: AsyncSession, deposit_id: int, result: ChargeResult) -> bool:
    """Raise the balance once for a charged deposit; False if it was no longer pending."""
    record = await db.get_one(Deposit, deposit_id)
    settled = await db.execute(
        update(Deposit)
        .where(Deposit.id == deposit_id, Deposit.status == "pending")
        .values(status="succeeded")
    )
    if not settled.rowcount:  # type: ignore[attr-defined]
        return False
    await db.execute(
        update(Account)
        .where(Account.id == record.account_id)
        .values(balance=Account.balance + record.amount)
    )
    await db.execute(
        update(Payment)
        .where(Payment.deposit_id == deposit_id)
        .values(status="succeeded", charge_id=result.charge_id, updated_at=utcnow())
    )
    return True


async def fail_deposit(db: AsyncSession, deposit_id: int, result: ChargeResult | None) -> bool:
    failed = await db.execute(
        update(Deposit)
        .where(Deposit.id == deposit_id, Deposit.status == "pending")
        .values(status="failed")
    )
    await db.execute(
        update(Payment)
        .where(Payment.deposit_id == deposit_id, Payment.status == "pending")
        .values(
            status="failed" if result is None else "declined",
            decline_code=result.decline_code if result else None,
            updated_at=utcnow(),
        )
    )
    return bool(failed.rowcount)  # type: ignore[attr-defined]
