"""The catalogue, a product's page and its picture, and adding to the cart."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from markupsafe import escape

from fastapi_atomic import DBDep
from fastapi_atomic.websession import WebSessionDep
from shop.api.schemas import PathId
from shop.services import catalog

from .cart import Cart, CartError
from .forms import AddToCartForm, read_form
from .pages import FormChecks, flash, local_url, redirect, render

router = APIRouter(include_in_schema=False)


@router.get("/")
async def catalogue(request: Request, db: DBDep, websession: WebSessionDep) -> Response:
    products = await catalog.list_products(db)
    return render(request, websession, "catalogue.html", {"products": products})


@router.get("/products/{product_id}")
async def product_page(
    request: Request, product_id: PathId, db: DBDep, websession: WebSessionDep
) -> Response:
    product = await catalog.get_product(db, product_id)
    in_cart = Cart(websession).quantities.get(product.id, 0)
    return render(request, websession, "product.html", {"product": product, "in_cart": in_cart})


@router.post("/cart/items", dependencies=FormChecks)
async def add_to_cart(
    request: Request,
    db: DBDep,
    websession: WebSessionDep,
    next_url: Annotated[str | None, Form(alias="next")] = None,
) -> Response:
    """Add to the cart and go back to the page the button was on (a guest gets a session)."""
    form, errors = await read_form(request, AddToCartForm)
    back = local_url(next_url)
    if form is None:
        return await _refused(request, db, websession, next(iter(errors.values())))
    product = await catalog.get_product(db, form.product_id)
    try:
        Cart(websession).add(product.id, form.quantity)
    except CartError as exc:
        return await _refused(request, db, websession, str(exc))
    what = product.name if form.quantity == 1 else f"{form.quantity} of {product.name}"
    flash(websession, f"Added {what} to your cart.")
    return redirect(back)


async def _refused(
    request: Request, db: DBDep, websession: WebSessionDep, message: str
) -> Response:
    products = await catalog.list_products(db)
    return render(
        request,
        websession,
        "catalogue.html",
        {"products": products, "error": message},
        status_code=422,
    )


@router.get("/products/{product_id}/picture.svg")
async def picture(product_id: PathId, db: DBDep) -> Response:
    """A picture drawn from the product's sku and name: every product has one, none is
    downloaded, and a renamed product's picture changes with its name."""
    product = await catalog.get_product(db, product_id)
    digest = hashlib.sha256(product.sku.encode()).digest()
    hue, accent = digest[0] * 360 // 256, digest[1] * 360 // 256
    initials = "".join(word[0] for word in product.name.split()[:2]).upper() or "?"
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 240 180" role="img">'
        f"<title>{escape(product.name)}</title>"
        f'<rect width="240" height="180" fill="hsl({hue} 55% 88%)"/>'
        f'<circle cx="{60 + digest[2] % 120}" cy="{50 + digest[3] % 80}" r="{40 + digest[4] % 30}"'
        f' fill="hsl({accent} 60% 70%)" opacity="0.8"/>'
        f'<rect x="{20 + digest[5] % 100}" y="{90 + digest[6] % 40}" width="90" height="50"'
        f' rx="12" fill="hsl({hue} 45% 55%)" opacity="0.7"/>'
        '<text x="120" y="105" text-anchor="middle" font-family="system-ui, sans-serif"'
        f' font-size="56" font-weight="700" fill="hsl({hue} 50% 25%)">{escape(initials)}</text>'
        "</svg>"
    )
    return Response(
        svg,
        media_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )
