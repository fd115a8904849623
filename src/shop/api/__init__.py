"""The JSON API: one router per resource, each included in the app under /api."""

from __future__ import annotations

from fastapi import APIRouter

from . import accounts, orders, products, session, transfers, users

#: in the order the app includes them: the session's routes, asked on every page, first
routers: list[APIRouter] = [
    session.router,
    users.router,
    accounts.router,
    transfers.router,
    products.router,
    orders.router,
]
