from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import UoW
from shop.db.models import Order
from shop.services import orders
from shop.services.orders import Line

from .deps import Csrf, CurrentUser, Gateway, Idempotent, SessionOrders
from .schemas import AccountPayment, OrderIn, OrderOut, PathId

router = APIRouter(prefix="/api/orders", tags=["orders"], dependencies=[Csrf])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={402: {}, 404: {}, 409: {}, 503: {}},
)
async def place_order(
    body: OrderIn,
    uow: UoW,
    user: CurrentUser,
    gateway: Gateway,
    idempotency: Idempotent,
    session_orders: SessionOrders,
) -> OrderOut:
    lines = [Line(item.product_id, item.quantity) for item in body.items]
    order: orders.PlacedOrder | Order
    if isinstance(body.payment, AccountPayment):
        order = await orders.checkout_with_account(
            uow.db,
            user_id=user.id,
            lines=lines,
            account_id=body.payment.account_id,
            placed=session_orders.append_now,
        )
    else:
        order = await orders.checkout_with_card(
            uow,
            gateway,
            user_id=user.id,
            lines=lines,
            card_number=body.payment.card_number,
            payment_key=idempotency.external_key("order") if idempotency else None,
        )
        session_orders.append(order.id)
    return OrderOut.model_validate(order)


@router.get("")
async def list_orders(uow: UoW, user: CurrentUser) -> list[OrderOut]:
    return [OrderOut.model_validate(o) for o in await orders.list_orders(uow.db, user_id=user.id)]


@router.get("/{order_id}", responses={404: {}})
async def get_order(order_id: PathId, uow: UoW, user: CurrentUser) -> OrderOut:
    order = await orders.get_order(uow.db, user_id=user.id, order_id=order_id)
    return OrderOut.model_validate(order)
