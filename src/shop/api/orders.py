from __future__ import annotations

from fastapi import APIRouter, Response, status

from fastapi_atomic import UoW
from shop.db.models import Order
from shop.services import orders
from shop.services.orders import Line

from .deps import CurrentUser, CustomerDep
from .routing import json_response
from .schemas import AccountPayment, OrderIn, OrderOut, PathId

# No router-wide CSRF dependency: placing an order checks it in CustomerDep, and the other
# routes here only read.
router = APIRouter(prefix="/api/orders", tags=["orders"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderOut,
    responses={402: {}, 404: {}, 409: {}, 503: {}},
)
async def place_order(body: OrderIn, customer: CustomerDep) -> Response:
    lines = [Line(item.product_id, item.quantity) for item in body.items]
    order: orders.PlacedOrder | Order
    if isinstance(body.payment, AccountPayment):
        order = await orders.checkout_with_account(
            customer.uow.db,
            user_id=customer.user.id,
            lines=lines,
            account_id=body.payment.account_id,
            placed=customer.add_order_id_now,
        )
    else:
        order = await orders.checkout_with_card(
            customer.uow,
            customer.gateway,
            user_id=customer.user.id,
            lines=lines,
            card_number=body.payment.card_number,
            payment_key=customer.payment_key("order"),
        )
        customer.add_order_id(order.id)
    return json_response(OrderOut.model_validate(order), status.HTTP_201_CREATED)


@router.get("")
async def list_orders(uow: UoW, user: CurrentUser) -> list[OrderOut]:
    return [OrderOut.model_validate(o) for o in await orders.list_orders(uow.db, user_id=user.id)]


@router.get("/{order_id}", responses={404: {}})
async def get_order(order_id: PathId, uow: UoW, user: CurrentUser) -> OrderOut:
    order = await orders.get_order(uow.db, user_id=user.id, order_id=order_id)
    return OrderOut.model_validate(order)
