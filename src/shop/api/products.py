from __future__ import annotations

from fastapi import APIRouter, status

from fastapi_atomic import DB
from shop.services import catalog

from .deps import AdminUser, Csrf
from .schemas import PathId, ProductIn, ProductOut, ProductPatch

router = APIRouter(prefix="/api/products", tags=["products"], dependencies=[Csrf])


@router.get("")
async def list_products(db: DB) -> list[ProductOut]:
    return [ProductOut.model_validate(p) for p in await catalog.list_products(db)]


@router.post("", status_code=status.HTTP_201_CREATED, responses={403: {}, 409: {}})
async def create_product(body: ProductIn, db: DB, _admin: AdminUser) -> ProductOut:
    product = await catalog.create_product(db, **body.model_dump())
    return ProductOut.model_validate(product)


@router.patch("/{product_id}", responses={403: {}, 404: {}})
async def update_product(
    product_id: PathId, body: ProductPatch, db: DB, _admin: AdminUser
) -> ProductOut:
    product = await catalog.update_product(db, product_id, price=body.price, stock=body.stock)
    return ProductOut.model_validate(product)
