"""The buyer's orders: the history and one order's page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fastapi_atomic import DBDep
from fastapi_atomic.websession import WebSessionDep
from shop.api.schemas import PathId
from shop.services import catalog, orders

from .pages import Customer, render

router = APIRouter(include_in_schema=False)


@router.get("/orders")
async def order_history(
    request: Request, db: DBDep, websession: WebSessionDep, user: Customer
) -> Response:
    history = await orders.list_orders(db, user_id=user.id)
    products = await catalog.products_by_id(
        db, (item.product_id for order in history for item in order.items)
    )
    return render(request, websession, "orders.html", {"orders": history, "products": products})


@router.get("/orders/{order_id}")
async def order_page(
    request: Request, order_id: PathId, db: DBDep, websession: WebSessionDep, user: Customer
) -> Response:
    order = await orders.get_order(db, user_id=user.id, order_id=order_id)
    products = await catalog.products_by_id(db, (item.product_id for item in order.items))
    return render(request, websession, "order.html", {"order": order, "products": products})
