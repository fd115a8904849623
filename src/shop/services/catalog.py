"""The catalogue: products, their prices and stock."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shop.db.models import Product
from shop.errors import Conflict, NotFound


async def list_products(db: AsyncSession) -> list[Product]:
    return list(await db.scalars(select(Product).order_by(Product.id)))


async def products_by_id(db: AsyncSession, product_ids: Iterable[int]) -> dict[int, Product]:
    """The products of these ids that exist, by id (a cart's lines, an order's items)."""
    ids = set(product_ids)
    if not ids:
        return {}
    found = await db.scalars(select(Product).where(Product.id.in_(ids)))
    return {product.id: product for product in found}


async def get_product(db: AsyncSession, product_id: int) -> Product:
    product = await db.get(Product, product_id)
    if product is None:
        raise NotFound(f"Product {product_id} not found.")
    return product


async def create_product(
    db: AsyncSession, *, sku: str, name: str, price: int, stock: int
) -> Product:
    product = Product(sku=sku, name=name, price=price, stock=stock)
    try:
        # Added inside the savepoint, so that its rollback takes the product out of the
        # session too: added before, it would stay pending, and the next query would flush
        # it again.
        async with db.begin_nested():
            db.add(product)
            await db.flush()
    except IntegrityError as exc:
        raise Conflict(f"A product with sku {sku!r} already exists.") from exc
    return product


async def update_product(
    db: AsyncSession, product_id: int, *, price: int | None, stock: int | None
) -> Product:
    product = await db.scalar(
        select(Product).where(Product.id == product_id).with_for_update(key_share=True)
    )
    if product is None:
        raise NotFound(f"Product {product_id} not found.")
    if price is not None:
        product.price = price
    if stock is not None:
        product.stock = stock
    await db.flush()
    return product


async def ensure_product(
    db: AsyncSession, *, sku: str, name: str, price: int, stock: int
) -> tuple[Product, bool]:
    """The product with ``sku`` exists (created with these values if it did not); created?"""
    product = await db.scalar(select(Product).where(Product.sku == sku))
    if product is not None:
        return product, False
    product = Product(sku=sku, name=name, price=price, stock=stock)
    db.add(product)
    await db.flush()
    return product, True
