"""Deposits: the card is charged, then the balance raised; both or neither.

The card-payment flow of :mod:`.card_payments`: a 'pending' deposit reserved in a phase, the
charge with no transaction open, then the balance raised in the request's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_atomic import UnitOfWork
from shop.db.models import Deposit, Payment
from shop.payments import PaymentGateway

from . import card_payments
from .accounts import change_balance, owned_account


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
    await owned_account(uow.db, user_id=user_id, account_id=account_id)

    async def hold(db: AsyncSession, key: str) -> Payment:
        record = Deposit(account_id=account_id, amount=amount, status="pending")
        db.add(record)
        await db.flush()
        return await card_payments.add_payment(
            db, key=key, amount=amount, gateway=gateway, deposit_id=record.id
        )

    payment = await card_payments.reserve(
        uow, gateway, client_key=payment_key, purpose="deposit", hold=hold
    )
    assert payment.deposit_id is not None
    purchase = DepositPurchase(payment.deposit_id)
    await card_payments.collect(uow, gateway, payment, card_number=card_number, purchase=purchase)
    return await uow.db.get_one(Deposit, payment.deposit_id)


@dataclass(frozen=True)
class DepositPurchase:
    """A card payment's deposit: the balance raised when the payment succeeds."""

    deposit_id: int

    async def complete(self, db: AsyncSession) -> None:
        account_id, amount = (
            await db.execute(
                select(Deposit.account_id, Deposit.amount).where(Deposit.id == self.deposit_id)
            )
        ).one()
        await db.execute(
            update(Deposit).where(Deposit.id == self.deposit_id).values(status="succeeded")
        )
        await change_balance(db, account_id=account_id, by=amount)

    async def give_up(self, db: AsyncSession) -> None:
        await db.execute(
            update(Deposit).where(Deposit.id == self.deposit_id).values(status="failed")
        )
