"""Every unsafe API route refuses a session without its CSRF token, before it changes anything.

Each unsafe route declares the check (``dependencies=[Csrf]``); this walks the app's OpenAPI
document, so a new route that forgets it is caught.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from shop_testing import Shopper

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
#: signing up and logging in need no token
NO_TOKEN_NEEDED = {("POST", "/api/users"), ("POST", "/api/session")}


def unsafe_api_routes(app: FastAPI) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if path.startswith("/api")
        and method.upper() in UNSAFE
        and (method.upper(), path) not in NO_TOKEN_NEEDED
    ]


async def test_every_unsafe_route_needs_the_token(
    app: FastAPI, admin: Shopper, new_shopper: Callable[..., Any]
) -> None:
    shopper: Shopper = await new_shopper()
    product = await admin.post(
        "/api/products", {"sku": "mug", "name": "Mug", "price": 1, "stock": 5}
    )
    assert product.status_code == 201
    routes = unsafe_api_routes(app)
    assert ("POST", "/api/orders") in routes and ("DELETE", "/api/session") in routes

    async def state() -> list[Any]:
        return [
            (await admin.get("/api/products")).json(),
            (await shopper.get("/api/accounts")).json(),
            (await shopper.get("/api/orders")).json(),
            (await shopper.get("/api/session")).json(),
            len((await shopper.get("/api/sessions")).json()),
        ]

    before = await state()
    for method, path in routes:
        url = re.sub(r"\{[^}]+\}", str(shopper.account_id), path)
        for caller in (shopper, admin):
            for headers in ({}, {"X-CSRF-Token": "not-the-token"}):
                response = await caller.client.request(method, url, json={}, headers=headers)
                assert response.status_code == 403, (method, path, response.text)
    assert await state() == before
