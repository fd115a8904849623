from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DBDep, UnitOfWorkDep
from fastapi_atomic.websession import WebSessionDep
from shop.services import orders

from .deps import Csrf, CurrentUser, Gateway, Idempotent
from .schemas import AccountPayment, OrderIn, OrderOut, PathId

router = APIRouter(prefix="/orders", tags=["orders"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={401: {}, 402: {}, 404: {}, 409: {}, 503: {}},
    dependencies=[Csrf],
)
async def place_order(
    body: OrderIn,
    user: CurrentUser,
    idempotency_key: Idempotent,
    uow: UnitOfWorkDep,
    gateway: Gateway,
    websession: WebSessionDep,
) -> OrderOut:
    lines = [orders.Line(item.product_id, item.quantity) for item in body.items]
    if isinstance(body.payment, AccountPayment):
        order = await orders.checkout_with_account(
            uow.db, user_id=user.id, lines=lines, account_id=body.payment.account_id
        )
    else:
        order = await orders.checkout_with_card(
            uow,
            gateway,
            user_id=user.id,
            lines=lines,
            card_number=body.payment.card_number,
            payment_key=idempotency_key.external_key("order") if idempotency_key else None,
        )
    # Appends from concurrent tabs all survive; written with the order, or not at all.
    websession.append("order_ids", order.id)
    return OrderOut.model_validate(order)


@router.get("", responses={401: {}})
async def list_orders(db: DBDep, user: CurrentUser) -> list[OrderOut]:
    return [OrderOut.model_validate(o) for o in await orders.list_orders(db, user_id=user.id)]


@router.get("/{order_id}", responses={401: {}, 404: {}})
async def get_order(order_id: PathId, db: DBDep, user: CurrentUser) -> OrderOut:
    return OrderOut.model_validate(await orders.get_order(db, user_id=user.id, order_id=order_id))
