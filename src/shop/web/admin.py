"""The administrator's products page: add a product, change a price or a stock."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fastapi_atomic import DBDep
from fastapi_atomic.websession import WebSession, WebSessionDep
from shop.api.schemas import PathId
from shop.errors import ShopError
from shop.services import catalog

from .forms import ProductChangeForm, ProductForm, read_form, typed_values
from .pages import Administrator, FormChecks, flash, redirect, render

router = APIRouter(prefix="/admin", include_in_schema=False)


@router.get("/products")
async def products_page(
    request: Request, db: DBDep, websession: WebSessionDep, _admin: Administrator
) -> Response:
    return await _products(request, db, websession)


@router.post("/products", dependencies=FormChecks)
async def add_product(
    request: Request, db: DBDep, websession: WebSessionDep, _admin: Administrator
) -> Response:
    form, errors = await read_form(request, ProductForm)
    if form is None:
        return await _products(
            request, db, websession, new_errors=errors, values=await typed_values(request)
        )
    try:
        product = await catalog.create_product(db, **form.model_dump())
    except ShopError as exc:
        return await _products(
            request,
            db,
            websession,
            new_errors={"sku": exc.detail},
            values=await typed_values(request),
            status_code=exc.status_code,
        )
    flash(websession, f"Added {product.name}.")
    return redirect("/admin/products")


@router.post("/products/{product_id}", dependencies=FormChecks)
async def change_product(
    request: Request,
    product_id: PathId,
    db: DBDep,
    websession: WebSessionDep,
    _admin: Administrator,
) -> Response:
    form, errors = await read_form(request, ProductChangeForm)
    if form is None:
        return await _products(
            request, db, websession, row_errors={product_id: errors}, status_code=422
        )
    product = await catalog.update_product(db, product_id, price=form.price, stock=form.stock)
    flash(websession, f"Saved {product.name}.")
    return redirect("/admin/products")


async def _products(
    request: Request,
    db: DBDep,
    websession: WebSession,
    *,
    new_errors: dict[str, str] | None = None,
    row_errors: dict[int, dict[str, str]] | None = None,
    values: dict[str, str] | None = None,
    status_code: int | None = None,
) -> Response:
    context = {
        "products": await catalog.list_products(db),
        "new_errors": new_errors or {},
        "row_errors": row_errors or {},
        "values": values or {},
    }
    failed = new_errors or row_errors
    status = status_code or (422 if failed else 200)
    return render(request, websession, "admin_products.html", context, status_code=status)
