"""JSON routes, one module per resource, combined in :func:`api_router`."""

from __future__ import annotations

from fastapi import APIRouter

from . import users


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api")
    router.include_router(users.router)
    return router
