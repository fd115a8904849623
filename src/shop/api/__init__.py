"""The JSON API: one router per resource, joined under /api."""

from __future__ import annotations

from fastapi import APIRouter

from . import accounts, orders, products, session, transfers, users

router = APIRouter(prefix="/api")
router.include_router(session.router)
router.include_router(users.router)
router.include_router(accounts.router)
router.include_router(transfers.router)
router.include_router(products.router)
router.include_router(orders.router)
