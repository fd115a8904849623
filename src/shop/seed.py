"""`shop seed --demo`: a demo catalogue and a demo customer, idempotent."""

from __future__ import annotations

from fastapi_atomic import atomic, create_engine

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
        async with atomic(engine) as uow:
            for sku, name, price, stock in DEMO_PRODUCTS:
                _, new = await ensure_product(uow.db, sku=sku, name=name, price=price, stock=stock)
                if new:
                    created.append(f"product {sku}")
            if await find_user_by_email(uow.db, DEMO_EMAIL) is None:
                await sign_up(
                    uow.db, name="Demo Customer", email=DEMO_EMAIL, password=DEMO_PASSWORD
                )
                created.append(f"customer {DEMO_EMAIL} (password {DEMO_PASSWORD})")
    finally:
        await engine.dispose()
    return created
