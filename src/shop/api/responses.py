"""The statuses a route answers besides its success, with their bodies and headers.

Routes declare them (``responses=``) so that the OpenAPI document lists every answer a client
can get, and a client generated from it knows each body: the shop's own errors are
``{"detail": "..."}`` (``Error``), input that fails validation is FastAPI's list (``Invalid``).
Headers are declared required only where they are always sent; ``X-Request-ID`` is on every
answer, so every response declared here carries it.
"""

from __future__ import annotations

from typing import Any

from shop.request_ids import HEADER as REQUEST_ID_HEADER

from .schemas import Error, Invalid

Response = dict[str, Any]
Responses = dict[int | str, Response]


def header(description: str, schema: dict[str, Any] | None = None) -> Response:
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


#: on every answer (the client's id, or one the server made)
REQUEST_ID = {
    REQUEST_ID_HEADER: header(
        "The request's id: the client's `X-Request-ID` when acceptable, or one made for it.",
        {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    )
}

#: on every 503, whoever answers it
RETRY_AFTER = {"Retry-After": header("Seconds to wait before trying again.", {"type": "integer"})}

#: on a 409 for an Idempotency-Key in use: when the first request's lease ends
LEASE_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until the first request's lease on its Idempotency-Key ends "
        "(a repeat while it runs).",
        "required": False,
        "schema": {"type": "integer"},
    }
}

#: on every answer that depends on the session, once the route has read it
PRIVATE = {
    "Cache-Control": header("`no-store`: the answer depends on the session."),
    "Vary": header("Lists `Cookie`."),
}


def error(description: str, *, private: bool = False, headers: Response | None = None) -> Response:
    """An error answered as ``{"detail": "..."}``."""
    return {
        "model": Error,
        "description": description,
        "headers": {**REQUEST_ID, **(PRIVATE if private else {}), **(headers or {})},
    }


def success(*, private: bool = False, headers: Response | None = None) -> Response:
    """What the route's own success adds to its body: headers."""
    return {"headers": {**REQUEST_ID, **(PRIVATE if private else {}), **(headers or {})}}


NOT_LOGGED_IN = error(
    "Not logged in (no session, or an expired, revoked or tampered one).", private=True
)
NO_CSRF_TOKEN = error("A session's request without its X-CSRF-Token, or a wrong one.", private=True)
NOT_ADMIN = error(
    "A session's request without its X-CSRF-Token, or a wrong one; or not the administrator.",
    private=True,
)

#: every /api route: the unit of work's database, session store or COMMIT was not available
UNAVAILABLE: Responses = {
    503: error(
        "Not now, try again: the database or the session store did not answer or was "
        "busy, the request kept conflicting with others, or the COMMIT failed.",
        headers=RETRY_AFTER,
    )
}

#: a route that charges a card: the gateway's failure is a 503 too
GATEWAY_UNAVAILABLE: Responses = {
    503: error(
        "Not now, try again: the card gateway failed (the detail says whether the payment is "
        "pending), the database or the session store did not answer or was busy, or the "
        "COMMIT failed.",
        headers=RETRY_AFTER,
    )
}

#: every route: the server reads no body larger than ``SHOP_MAX_BODY_SIZE``, whoever it is for
TOO_LARGE: Responses = {
    413: {
        "description": "The body is larger than the server accepts (`Content Too Large`).",
        "content": {"text/plain": {"schema": {"type": "string"}}},
        "headers": REQUEST_ID,
    }
}

#: a route that reads a body
BODY: Responses = {
    422: {
        "model": Invalid,
        "description": "The request failed validation.",
        "headers": REQUEST_ID,
    }
}

#: a route with parameters but no body
PARAMETERS: Responses = BODY

#: a route that honours an Idempotency-Key (a body route too)
IDEMPOTENT: Responses = {
    **BODY,
    409: error(
        "A request with this Idempotency-Key is still in progress.",
        private=True,
        headers=LEASE_RETRY_AFTER,
    ),
    422: {
        "model": Invalid | Error,
        "description": "The request failed validation (FastAPI's list); or it cannot be done "
        "as asked (a sentence), such as a repeat of an Idempotency-Key with another request.",
        "headers": REQUEST_ID,
    },
}
