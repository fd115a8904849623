"""JSON routes, one module per resource, combined in :func:`api_router`.

Every unsafe route that acts on a session checks its CSRF token; signing up and logging in
need none (CONTRACT.md).
"""

from __future__ import annotations

from fastapi import APIRouter

from . import accounts, orders, products, session, transfers, users
from .deps import Csrf


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api")
    router.include_router(users.router)
    router.include_router(session.router)
    for module in (accounts, transfers, products, orders):
        router.include_router(module.router, dependencies=[Csrf])
    return router
