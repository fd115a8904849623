from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DBDep
from shop.services import catalog

from .deps import AdminUser, Csrf
from .responses import BODY, NOT_ADMIN, NOT_LOGGED_IN, error, success
from .schemas import PathId, ProductIn, ProductOut, ProductPatch

router = APIRouter(prefix="/products", tags=["products"])


@router.get("", responses={200: success()})
async def list_products(db: DBDep) -> list[ProductOut]:
    return [ProductOut.model_validate(p) for p in await catalog.list_products(db)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        **BODY,
        201: success(private=True),
        401: NOT_LOGGED_IN,
        403: NOT_ADMIN,
        409: error("The sku is taken.", private=True),
    },
    dependencies=[Csrf],
)
async def create_product(body: ProductIn, db: DBDep, _admin: AdminUser) -> ProductOut:
    return ProductOut.model_validate(await catalog.create_product(db, **body.model_dump()))


@router.patch(
    "/{product_id}",
    responses={
        **BODY,
        200: success(private=True),
        401: NOT_LOGGED_IN,
        403: NOT_ADMIN,
        404: error("No such product.", private=True),
    },
    dependencies=[Csrf],
)
async def update_product(
    product_id: PathId, body: ProductPatch, db: DBDep, _admin: AdminUser
) -> ProductOut:
    product = await catalog.update_product(db, product_id, price=body.price, stock=body.stock)
    return ProductOut.model_validate(product)
