"""Paying by card with no transaction open during the charge: one flow for orders and deposits.

    reserve    phase: what is bought held ('pending'), its payment 'pending', leased   commit
    charge     gateway.charge(idempotency_key=the payment's key)              no transaction
    settle     the payment 'succeeded', the purchase completed, in the request's transaction
    or release phase: the payment 'declined' or 'failed', the purchase given up      commit

The key is stable for one client request (derived from its Idempotency-Key), so a retry, a
takeover after a crash or ``shop payments reconcile`` can never charge twice. The payment row
is the state machine: settling and releasing each move it out of 'pending' with a conditional
UPDATE, so of the request and a reconcile run whichever comes first wins, and the other does
nothing.

While a request charges, it holds the payment's lease (``charging_until``): reconcile leaves a
leased payment alone, so it never releases a purchase whose charge is still in flight. The
request ends the lease when it stops without settling; a process that dies leaves it to run
out (the gateway's ``charge_lease``).

When the card was charged but the request's transaction then fails (its COMMIT, or the
database going away), the client is told so, not "nothing was changed", and the purchase is
settled in the background (or, if the process dies first, by reconcile).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_atomic import UnitOfWork
from shop import logs
from shop.db.models import Payment, table, utcnow
from shop.errors import CardDeclined, GatewayUnavailable
from shop.payments import ChargeResult, GatewayError, PaymentGateway

logger = logging.getLogger("shop")

payments = table(Payment)

#: what the client is told when the card was charged but the request could not be saved
CHARGED_NOT_SAVED = (
    "The card was charged, but the purchase could not be saved yet; it will be completed "
    "shortly, and nothing more will be charged."
)

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
#: the same, only if no request holds the payment's lease (reconcile taking it over)
_END_UNLEASED = _END_PENDING.where(
    or_(payments.c.charging_until.is_(None), payments.c.charging_until <= bindparam("now"))
)
#: the lease taken again by a retry that goes on with a pending payment, or ended
_LEASE = (
    update(payments)
    .where(payments.c.gateway_key == bindparam("key"), payments.c.status == "pending")
    .values(charging_until=bindparam("until"))
)


class Purchase(Protocol):
    """What a card payment pays for (an order, a deposit): how it completes, or is given up."""

    async def complete(self, db: AsyncSession) -> None: ...

    async def give_up(self, db: AsyncSession) -> None: ...


async def reserve(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    *,
    client_key: str | None,
    purpose: str,
    hold: Callable[[AsyncSession, str], Awaitable[Payment]],
) -> Payment:
    """Phase 1, committed at once: ``hold(db, key)`` holds what is bought and adds its pending
    payment (:func:`add_payment`) under ``key``.

    ``client_key`` is the key derived from the client's Idempotency-Key: a retry of the same
    request finds the payment its first attempt reserved, and goes on from there. Without one
    the key is new, but the phase may still run twice (its COMMIT reached the server, then the
    connection broke): it looks for the key first all the same, which makes it idempotent.
    """
    key = client_key or f"{purpose}_{uuid.uuid4().hex}"

    async def phase(db: AsyncSession) -> Payment:
        earlier: Payment | None = await db.scalar(select(Payment).where(Payment.gateway_key == key))
        if earlier is not None:
            if earlier.status == "pending":
                # Going on with it: hold its lease again, unless reconcile ended it first.
                until = utcnow() + gateway.charge_lease
                leased = await db.execute(_LEASE, {"key": key, "until": until})
                if leased.rowcount:  # type: ignore[attr-defined]
                    earlier.charging_until = until
                else:
                    await db.refresh(earlier)
            return earlier
        return await hold(db, key)

    return await uow.run_phase(phase, idempotent=True)


async def add_payment(
    db: AsyncSession,
    *,
    key: str,
    amount: int,
    gateway: PaymentGateway,
    order_id: int | None = None,
    deposit_id: int | None = None,
) -> Payment:
    """The pending payment of an order or a deposit, under the key the gateway will be sent."""
    payment = Payment(
        gateway_key=key,
        amount=amount,
        order_id=order_id,
        deposit_id=deposit_id,
        charging_until=utcnow() + gateway.charge_lease,  # the request charges it next
    )
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
    whether it charged, the payment stays pending, its lease ended, for
    ``shop payments reconcile``.
    """
    if payment.status == "succeeded":
        return  # settled by an earlier attempt of the same request
    if payment.status == "failed":
        raise GatewayUnavailable(
            "An earlier attempt of this request failed at the payment gateway and was cancelled; "
            "nothing was charged. Send it again with a new Idempotency-Key."
        )
    if payment.status != "pending":
        raise CardDeclined(payment.decline_code)
    result = await _charge_or_find(gateway, payment, card_number)
    if result is _UNKNOWN:
        await uow.run_phase(
            lambda db: db.execute(_LEASE, {"key": payment.gateway_key, "until": None})
        )
        raise GatewayUnavailable(
            "The payment gateway did not answer. If the card was charged, the purchase will be "
            "completed; if not, it is cancelled. Nothing more will be charged."
        )
    if result is _NO_CHARGE:
        await uow.run_phase(lambda db: release(db, payment.gateway_key, None, purchase))
        raise GatewayUnavailable("The payment gateway failed; nothing was charged. Try again.")
    assert isinstance(result, ChargeResult)
    if result.status != "succeeded":
        await uow.run_phase(lambda db: release(db, payment.gateway_key, result, purchase))
        logs.committed("card declined", payment_key=payment.gateway_key, code=result.decline_code)
        raise CardDeclined(result.decline_code)
    # Charged: from here on a failure must not say "nothing was changed", and the purchase is
    # completed in the background if the request's transaction cannot be committed.
    uow.set_failure_detail(CHARGED_NOT_SAVED)
    uow.on_rollback(lambda: _settle_later(uow, payment.gateway_key, result, purchase))
    await settle(uow.db, payment.gateway_key, result, purchase)


#: settles running in the background, kept so that they are not garbage-collected mid-way
_settling: set[asyncio.Task[None]] = set()


def _settle_later(uow: UnitOfWork, key: str, charge: ChargeResult, purchase: Purchase) -> None:
    """The request that charged could not commit its settle: settle in a transaction of its own,
    after the client got its answer. If this fails too, reconcile settles once the lease ends."""

    async def run() -> None:
        try:
            await uow.run_phase(lambda db: settle(db, key, charge, purchase))
        except Exception:
            logger.exception("settling payment %s failed; reconcile will settle it", key)

    task = asyncio.get_running_loop().create_task(run())
    _settling.add(task)
    task.add_done_callback(_settling.discard)


async def settle(db: AsyncSession, key: str, charge: ChargeResult, purchase: Purchase) -> bool:
    """The payment succeeded and the purchase is completed; False if it was no longer pending."""
    if not await _end_pending(db, key, status="succeeded", charge_id=charge.charge_id):
        return False
    await purchase.complete(db)
    return True


async def release(
    db: AsyncSession,
    key: str,
    charge: ChargeResult | None,
    purchase: Purchase,
    *,
    unless_leased: bool = False,
) -> bool:
    """The payment declined (or failed, ``charge`` None) and the purchase given up; False if it
    was no longer pending (or, ``unless_leased``, a request is charging it)."""
    ended = await _end_pending(
        db,
        key,
        status="failed" if charge is None else "declined",
        decline_code=charge.decline_code if charge is not None else None,
        unless_leased=unless_leased,
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
    unless_leased: bool = False,
) -> bool:
    parameters = {
        "key": key,
        "status": status,
        "charge_id": charge_id,
        "decline_code": decline_code,
    }
    if unless_leased:
        ended = await db.execute(_END_UNLEASED, {**parameters, "now": utcnow()})
    else:
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
