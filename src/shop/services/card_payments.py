"""Paying by card with no transaction open during the charge: one flow for orders and deposits.

    reserve    phase: what is bought held ('pending'), and its payment 'pending'    commit
    charge     gateway.charge(idempotency_key=the payment's key)              no transaction
    settle     the payment 'succeeded', the purchase completed, in the request's transaction
    or release phase: the payment 'declined' or 'failed', the purchase given up      commit

The key is stable for one client request (derived from its Idempotency-Key), so a retry, a
takeover after a crash or ``shop payments reconcile`` can never charge twice. The payment row
is the state machine: settling and releasing each move it out of 'pending' with a conditional
UPDATE, so of the request and a reconcile run whichever comes first wins, and the other does
nothing.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_atomic import UnitOfWork
from shop.db.models import Payment, table
from shop.errors import GatewayUnavailable, PaymentDeclined
from shop.payments import ChargeResult, GatewayError, PaymentGateway

payments = table(Payment)

#: a pending payment ended, under its key; no row changed: it was not pending any more
_END_PENDING = (
    update(payments)
    .where(payments.c.gateway_key == bindparam("key"), payments.c.status == "pending")
    .values(
        status=bindparam("status"),
        charge_id=bindparam("charge_id"),
        decline_code=bindparam("decline_code"),
    )
)


class Purchase(Protocol):
    """What a card payment pays for (an order, a deposit): how it completes, or is given up."""

    async def complete(self, db: AsyncSession) -> None: ...

    async def give_up(self, db: AsyncSession) -> None: ...


async def reserve(
    uow: UnitOfWork,
    *,
    client_key: str | None,
    purpose: str,
    hold: Callable[[AsyncSession, str], Awaitable[Payment]],
) -> Payment:
    """Phase 1, committed at once: ``hold(db, key)`` holds what is bought and adds its pending
    payment (:func:`add_payment`) under ``key``.

    ``client_key`` is the key derived from the client's Idempotency-Key: a retry of the same
    request finds the payment its first attempt reserved, and goes on from there. Without one,
    the key is new, and nothing can have been reserved under it before.
    """
    key = client_key or f"{purpose}_{uuid.uuid4().hex}"

    async def phase(db: AsyncSession) -> Payment:
        if client_key is not None:
            earlier: Payment | None = await db.scalar(
                select(Payment).where(Payment.gateway_key == key)
            )
            if earlier is not None:
                return earlier
        return await hold(db, key)

    return await uow.run_phase(phase)


async def add_payment(
    db: AsyncSession,
    *,
    key: str,
    amount: int,
    order_id: int | None = None,
    deposit_id: int | None = None,
) -> Payment:
    """The pending payment of an order or a deposit, under the key the gateway will be sent."""
    payment = Payment(gateway_key=key, amount=amount, order_id=order_id, deposit_id=deposit_id)
    db.add(payment)
    await db.flush()
    return payment


async def collect(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    payment: Payment,
    *,
    card_number: str,
    purchase: Purchase,
) -> None:
    """Charge the reserved ``payment``, then settle it in the request's transaction.

    On a decline, or a gateway failure that charged nothing, the payment is released in a phase
    of its own (the purchase given up) and the client told why. When the gateway cannot say
    whether it charged, the payment stays pending for ``shop payments reconcile``.
    """
    if payment.status == "succeeded":
        return  # settled by an earlier attempt of the same request
    if payment.status != "pending":
        raise PaymentDeclined("The card was declined.")
    result = await _charge_or_find(gateway, payment, card_number)
    if result is _UNKNOWN:
        raise GatewayUnavailable(
            "The payment gateway did not answer; the payment is pending and will be settled."
        )
    if result is _NO_CHARGE:
        await uow.run_phase(lambda db: release(db, payment.gateway_key, None, purchase))
        raise GatewayUnavailable("The payment gateway failed; nothing was charged. Try again.")
    assert isinstance(result, ChargeResult)
    if result.status != "succeeded":
        await uow.run_phase(lambda db: release(db, payment.gateway_key, result, purchase))
        raise PaymentDeclined(f"The card was declined ({result.decline_code or 'declined'}).")
    await settle(uow.db, payment.gateway_key, result, purchase)


async def settle(db: AsyncSession, key: str, charge: ChargeResult, purchase: Purchase) -> bool:
    """The payment succeeded and the purchase is completed; False if it was no longer pending."""
    if not await _end_pending(db, key, status="succeeded", charge_id=charge.charge_id):
        return False
    await purchase.complete(db)
    return True


async def release(
    db: AsyncSession, key: str, charge: ChargeResult | None, purchase: Purchase
) -> bool:
    """The payment declined (or failed, ``charge`` None) and the purchase given up; False if it
    was no longer pending."""
    ended = await _end_pending(
        db,
        key,
        status="failed" if charge is None else "declined",
        decline_code=charge.decline_code if charge is not None else None,
    )
    if not ended:
        return False
    await purchase.give_up(db)
    return True


async def _end_pending(
    db: AsyncSession,
    key: str,
    *,
    status: str,
    charge_id: str | None = None,
    decline_code: str | None = None,
) -> bool:
    parameters = {
        "key": key,
        "status": status,
        "charge_id": charge_id,
        "decline_code": decline_code,
    }
    ended = await db.execute(_END_PENDING, parameters)
    return bool(ended.rowcount)  # type: ignore[attr-defined]


class _Outcome(enum.Enum):
    UNKNOWN = "the gateway did not answer: a charge may or may not have happened"
    NO_CHARGE = "the gateway failed and has no charge under the key"


_UNKNOWN = _Outcome.UNKNOWN
_NO_CHARGE = _Outcome.NO_CHARGE


async def _charge_or_find(
    gateway: PaymentGateway, payment: Payment, card_number: str
) -> ChargeResult | _Outcome:
    """Charge once; after a failure ask the gateway by key what happened."""
    try:
        return await gateway.charge(
            amount=payment.amount, card_number=card_number, idempotency_key=payment.gateway_key
        )
    except GatewayError:  # GatewayTimeout included: ask rather than guess
        pass
    try:
        found = await gateway.lookup(payment.gateway_key)
    except GatewayError:
        return _UNKNOWN
    return _NO_CHARGE if found is None else found
