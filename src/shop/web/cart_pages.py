"""The cart page: its lines, their quantities, the total."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fastapi_atomic import DBDep
from fastapi_atomic.websession import WebSession, WebSessionDep
from shop.api.schemas import PathId
from shop.db.models import Product
from shop.services import catalog

from .cart import Cart
from .forms import QuantityForm, read_form
from .pages import FormChecks, flash, redirect, render

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class CartLine:
    product: Product
    quantity: int

    @property
    def subtotal(self) -> int:
        return self.product.price * self.quantity

    @property
    def short(self) -> bool:
        return self.quantity > self.product.stock


async def cart_lines(db: DBDep, websession: WebSession) -> list[CartLine]:
    """The cart's lines at today's prices (a product no longer sold is left out)."""
    quantities = Cart(websession).quantities
    if not quantities:
        return []
    products = await catalog.products_by_id(db, quantities)
    return [
        CartLine(products[product_id], quantity)
        for product_id, quantity in quantities.items()
        if product_id in products
    ]


@router.get("/cart")
async def cart_page(request: Request, db: DBDep, websession: WebSessionDep) -> Response:
    lines = await cart_lines(db, websession)
    total = sum(line.subtotal for line in lines)
    return render(request, websession, "cart.html", {"lines": lines, "total": total})


@router.post("/cart/items/{product_id}", dependencies=FormChecks)
async def change_quantity(
    request: Request, product_id: PathId, db: DBDep, websession: WebSessionDep
) -> Response:
    form, errors = await read_form(request, QuantityForm)
    if form is None:
        lines = await cart_lines(db, websession)
        total = sum(line.subtotal for line in lines)
        context = {
            "lines": lines,
            "total": total,
            "error": errors.get("quantity"),
            "line_id": product_id,
        }
        return render(request, websession, "cart.html", context, status_code=422)
    Cart(websession).set(product_id, form.quantity)
    flash(websession, "Your cart is updated." if form.quantity else "Removed from your cart.")
    return redirect("/cart")


@router.post("/cart/items/{product_id}/remove", dependencies=FormChecks)
async def remove_from_cart(product_id: PathId, websession: WebSessionDep) -> Response:
    Cart(websession).remove(product_id)
    flash(websession, "Removed from your cart.")
    return redirect("/cart")
