from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DBDep, UnitOfWorkDep
from fastapi_atomic.websession import WebSessionDep
from shop.services import orders

from .deps import Csrf, CurrentUser, Gateway, Idempotent
from .responses import (
    GATEWAY_UNAVAILABLE,
    IDEMPOTENT,
    LEASE_RETRY_AFTER,
    NO_CSRF_TOKEN,
    NOT_LOGGED_IN,
    PARAMETERS,
    error,
    success,
)
from .schemas import AccountPayment, OrderIn, OrderOut, PathId

router = APIRouter(prefix="/orders", tags=["orders"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        **IDEMPOTENT,
        **GATEWAY_UNAVAILABLE,
        201: success(private=True),
        401: NOT_LOGGED_IN,
        402: error("The card was declined, or the account is short of funds."),
        403: NO_CSRF_TOKEN,
        404: error("An unknown product, or an account that is not the user's."),
        409: error(
            "Not enough stock, or a request with this Idempotency-Key is still in progress.",
            private=True,
            headers=LEASE_RETRY_AFTER,
        ),
    },
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


@router.get("", responses={200: success(private=True), 401: NOT_LOGGED_IN})
async def list_orders(db: DBDep, user: CurrentUser) -> list[OrderOut]:
    return [OrderOut.model_validate(o) for o in await orders.list_orders(db, user_id=user.id)]


@router.get(
    "/{order_id}",
    responses={
        **PARAMETERS,
        200: success(private=True),
        401: NOT_LOGGED_IN,
        404: error("No such order of the user.", private=True),
    },
)
async def get_order(order_id: PathId, db: DBDep, user: CurrentUser) -> OrderOut:
    return OrderOut.model_validate(await orders.get_order(db, user_id=user.id, order_id=order_id))
