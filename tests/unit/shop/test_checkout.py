"""Checkout and deposits as services: a FakeUnitOfWork, the fake gateway, SQLite in memory.

No server and no middleware: what each path leaves in the database, and how many phases it
committed, read straight from the fake unit of work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_atomic import create_engine
from fastapi_atomic.testing import FakeUnitOfWork
from shop.db.models import Account, Base, Deposit, Order, Payment, Product, User
from shop.errors import Conflict, GatewayUnavailable, NotFound, PaymentDeclined, Unprocessable
from shop.payments import FakeGateway, GatewayTimeout
from shop.services import deposits, orders

OK, DECLINED = "4242424242424242", "4000000000000002"


@pytest.fixture
async def db() -> AsyncIterator[AsyncSession]:
    engine = create_engine("sqlite+aiosqlite://")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine, expire_on_commit=False) as session:
        session.add(User(id=1, name="Ada", email="ada@example.com", password_hash="x"))
        session.add(Account(id=1, user_id=1, balance=5000))
        session.add(Product(id=1, sku="mug", name="Mug", price=1000, stock=3))
        await session.flush()
        yield session
    await engine.dispose()


@pytest.fixture
def uow(db: AsyncSession) -> FakeUnitOfWork:
    return FakeUnitOfWork(db)


async def stock(db: AsyncSession) -> int:
    return int(await db.scalar(select(Product.stock).where(Product.id == 1)) or 0)


async def by_card(
    uow: FakeUnitOfWork, gateway: Any, card: str, quantity: int = 1
) -> orders.PlacedOrder:
    return await orders.checkout_with_card(
        uow,
        gateway,
        user_id=1,
        lines=[orders.Line(1, quantity)],
        card_number=card,
        payment_key=None,
    )


async def test_a_card_order_reserves_in_one_phase_and_settles_in_the_request(
    uow: FakeUnitOfWork, db: AsyncSession
) -> None:
    gateway = FakeGateway()
    order = await by_card(uow, gateway, OK, quantity=2)
    assert (order.status, order.total, uow.phases) == ("paid", 2000, 1)
    assert gateway.total_charged == 2000 and await stock(db) == 1
    assert await db.scalar(select(Payment.status)) == "succeeded"
    # Charged: a failure to commit from here on must say so, not "nothing was changed".
    assert uow.failure_detail is not None and "charged" in uow.failure_detail


async def test_a_declined_card_gives_the_stock_back_in_a_second_phase(
    uow: FakeUnitOfWork, db: AsyncSession
) -> None:
    with pytest.raises(PaymentDeclined):
        await by_card(uow, FakeGateway(), DECLINED)
    assert uow.phases == 2  # reserve, then release: both durable before the 402
    assert await stock(db) == 3
    assert await db.scalar(select(Order.status)) == "failed"
    assert await db.scalar(select(Payment.status)) == "declined"


async def test_a_gateway_that_cannot_say_leaves_the_payment_pending(
    uow: FakeUnitOfWork, db: AsyncSession
) -> None:
    gateway = FakeGateway()
    gateway.fail_next(1, after_charge=True)

    async def no_answer(key: str) -> None:
        raise GatewayTimeout("no answer")

    gateway.lookup = no_answer  # type: ignore[method-assign]
    with pytest.raises(GatewayUnavailable, match="If the card was charged"):
        await by_card(uow, gateway, OK)
    assert uow.phases == 2  # reserve; then the lease ended, as the request stops charging
    payment = await db.scalar(select(Payment))
    assert payment is not None and payment.status == "pending"  # for reconcile to settle
    assert payment.charging_until is None  # reconcile need not wait for the lease
    assert await stock(db) == 2


async def test_a_payment_is_leased_while_its_request_charges(
    uow: FakeUnitOfWork, db: AsyncSession
) -> None:
    seen: list[Any] = []
    gateway = FakeGateway()
    real_charge = gateway.charge

    async def charge(**kwargs: Any) -> Any:
        seen.append(await db.scalar(select(Payment.charging_until)))
        return await real_charge(**kwargs)

    gateway.charge = charge  # type: ignore[method-assign]
    await by_card(uow, gateway, OK)
    assert seen[0] is not None  # reconcile leaves it alone while the charge is in flight


async def test_an_order_that_costs_nothing_is_not_charged_to_a_card(
    uow: FakeUnitOfWork, db: AsyncSession
) -> None:
    await db.execute(update(Product).where(Product.id == 1).values(price=0))
    gateway = FakeGateway()
    with pytest.raises(Unprocessable, match="nothing to charge"):
        await by_card(uow, gateway, OK)
    assert gateway.charges == [] and uow.phases == 0
    assert await db.scalar(select(Order)) is None and await stock(db) == 3


async def test_not_enough_stock_is_a_conflict_before_any_charge(uow: FakeUnitOfWork) -> None:
    gateway = FakeGateway()
    with pytest.raises(Conflict):
        await by_card(uow, gateway, OK, quantity=4)
    assert gateway.charges == [] and uow.phases == 0


async def test_an_account_order_is_one_transaction(uow: FakeUnitOfWork, db: AsyncSession) -> None:
    order = await orders.checkout_with_account(
        db, user_id=1, lines=[orders.Line(1, 1), orders.Line(1, 1)], account_id=1
    )
    assert (order.status, order.total, [i.quantity for i in order.items]) == ("paid", 2000, [2])
    assert await db.scalar(select(Account.balance)) == 3000 and await stock(db) == 1
    assert uow.phases == 0


async def test_an_order_of_nothing_is_refused_before_anything_is_written(
    uow: FakeUnitOfWork, db: AsyncSession
) -> None:
    with pytest.raises(Unprocessable, match="at least one product"):
        await orders.checkout_with_account(db, user_id=1, lines=[], account_id=1)
    gateway = FakeGateway()
    with pytest.raises(Unprocessable, match="at least one product"):
        await orders.checkout_with_card(
            uow, gateway, user_id=1, lines=[], card_number=OK, payment_key=None
        )
    assert gateway.charges == [] and uow.phases == 0
    assert await db.scalar(select(Order)) is None
    assert await db.scalar(select(Account.balance)) == 5000 and await stock(db) == 3


async def test_an_account_of_someone_else_is_not_found(db: AsyncSession) -> None:
    with pytest.raises(NotFound):
        await orders.checkout_with_account(db, user_id=2, lines=[orders.Line(1, 1)], account_id=1)


async def test_a_deposit_raises_the_balance_once_charged(
    uow: FakeUnitOfWork, db: AsyncSession
) -> None:
    record = await deposits.deposit(
        uow,
        FakeGateway(),
        user_id=1,
        account_id=1,
        amount=700,
        card_number=OK,
        payment_key=None,
    )
    assert record.status == "succeeded" and uow.phases == 1
    assert await db.scalar(select(Account.balance)) == 5700
    assert await db.scalar(select(Deposit.status)) == "succeeded"
