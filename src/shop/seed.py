"""`shop seed --demo`: a demo catalogue and a demo customer, idempotent."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_atomic import create_engine

from .services.accounts import find_user_by_email, sign_up
from .services.catalog import ensure_product

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"
DEMO_PRODUCTS = [
    ("MUG-001", "Enamel mug", 1250, 100),
    ("TEE-001", "Cotton T-shirt", 2400, 50),
    ("CAP-001", "Canvas cap", 1800, 25),
    ("PEN-001", "Fountain pen", 4500, 10),
    ("BAG-001", "Tote bag", 1500, 40),
]


async def seed_demo(database_url: str) -> list[str]:
    """Create what is missing; report what was created."""
    created: list[str] = []
    engine = create_engine(database_url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as db, db.begin():
            for sku, name, price, stock in DEMO_PRODUCTS:
                _, new = await ensure_product(db, sku=sku, name=name, price=price, stock=stock)
                if new:
                    created.append(f"product {sku}")
            if await find_user_by_email(db, DEMO_EMAIL) is None:
                await sign_up(db, name="Demo Customer", email=DEMO_EMAIL, password=DEMO_PASSWORD)
                created.append(f"customer {DEMO_EMAIL} (password {DEMO_PASSWORD})")
    finally:
        await engine.dispose()
    return created
