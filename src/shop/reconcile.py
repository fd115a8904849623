"""`shop payments reconcile`: settle what a crash or a gateway time-out left pending.

For each pending card payment older than ``min_age`` seconds whose charge is not in flight (no
request holds its lease), ask the gateway by the key the charge was (or would have been) made
with: a charge that happened settles the order or deposit; a decline, or no charge at all,
releases it (stock back, deposit failed), unless a request took the lease meanwhile. A gateway
that does not answer leaves it pending for the next run. Each payment is a unit of work of its
own, settled or released by the same code as the request that left it
(:mod:`.services.card_payments`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import atomic
from shop.db.models import Payment, utcnow
from shop.payments import GatewayError, PaymentGateway
from shop.services import card_payments
from shop.services.deposits import DepositPurchase
from shop.services.orders import OrderPurchase


@dataclass
class ReconcileReport:
    settled: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    still_pending: list[str] = field(default_factory=list)


async def reconcile(
    engine: AsyncEngine, gateway: PaymentGateway, *, min_age_seconds: float = 300
) -> ReconcileReport:
    report = ReconcileReport()
    now = utcnow()
    cutoff = now - timedelta(seconds=min_age_seconds)
    async with atomic(engine) as uow:
        pending = (
            await uow.db.execute(
                select(
                    Payment.gateway_key,
                    Payment.order_id,
                    Payment.deposit_id,
                    Payment.charging_until,
                )
                .where(Payment.status == "pending", Payment.created_at <= cutoff)
                .order_by(Payment.id)
            )
        ).all()
    for key, order_id, deposit_id, charging_until in pending:
        purchase: card_payments.Purchase
        if order_id is not None:
            label, purchase = f"order {order_id}", OrderPurchase(order_id)
        else:
            assert deposit_id is not None  # a payment is for an order or for a deposit
            label, purchase = f"deposit {deposit_id}", DepositPurchase(deposit_id)
        if charging_until is not None and charging_until > now:
            report.still_pending.append(f"{label} (being charged)")
            continue
        try:
            charge = await gateway.lookup(key)
        except GatewayError:
            report.still_pending.append(label)
            continue
        async with atomic(engine) as uow:
            if charge is not None and charge.status == "succeeded":
                await card_payments.settle(uow.db, key, charge, purchase)
                report.settled.append(label)
            else:
                if await card_payments.release(uow.db, key, charge, purchase, unless_leased=True):
                    report.released.append(label)
                else:
                    report.still_pending.append(label)
    return report
