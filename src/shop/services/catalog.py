"""The catalogue: products, their prices and stock."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shop.db.models import Product


async def ensure_product(
    db: AsyncSession, *, sku: str, name: str, price: int, stock: int
) -> tuple[Product, bool]:
    """The product with ``sku`` exists (created with these values if it did not); created?"""
    product = (await db.execute(select(Product).where(Product.sku == sku))).scalar_one_or_none()
    if product is None:
        product = Product(sku=sku, name=name, price=price, stock=stock)
        db.add(product)
        await db.flush()
        return product, True
    return product, False
