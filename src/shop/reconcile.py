"""`shop payments reconcile`: settle what a crash or a gateway time-out left pending.

For each pending card payment older than ``min_age`` seconds, ask the gateway by the key the
charge was (or would have been) made with: a charge that happened settles the order or deposit;
a decline, or no charge at all, releases it (stock back, deposit failed). A gateway that does not
answer leaves it pending for the next run. Each item is its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from shop.db.models import Payment, utcnow
from shop.payments import GatewayError, PaymentGateway
from shop.services.deposits import fail_deposit, settle_deposit
from shop.services.orders import release_order, settle_order


@dataclass
class ReconcileReport:
    settled: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    still_pending: list[str] = field(default_factory=list)


async def reconcile(
    engine: AsyncEngine, gateway: PaymentGateway, *, min_age_seconds: float = 300
) -> ReconcileReport:
    report = ReconcileReport()
    cutoff = utcnow() - timedelta(seconds=min_age_seconds)
    async with AsyncSession(engine) as db:
        pending = (
            await db.execute(
                select(Payment.gateway_key, Payment.order_id, Payment.deposit_id)
                .where(Payment.status == "pending", Payment.created_at <= cutoff)
                .order_by(Payment.id)
            )
        ).all()
    for key, order_id, deposit_id in pending:
        label = f"order {order_id}" if order_id is not None else f"deposit {deposit_id}"
        try:
            result = await gateway.lookup(key)
        except GatewayError:
            report.still_pending.append(label)
            continue
        async with AsyncSession(engine, expire_on_commit=False) as db, db.begin():
            if result is not None and result.status == "succeeded":
                if order_id is not None:
                    await settle_order(db, order_id, result)
                elif deposit_id is not None:
                    await settle_deposit(db, deposit_id, result)
                report.settled.append(label)
            else:
                if order_id is not None:
                    await release_order(db, order_id, result)
                elif deposit_id is not None:
                    await fail_deposit(db, deposit_id, result)
                report.released.append(label)
    return report
