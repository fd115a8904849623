"""What the ceilings share: ``bare.py`` (raw asyncpg) and ``bare_sqlite.py`` (sqlite3).

Reading a request (the body, the session cookie's store key), the web session (the
process-local cache of records, the next record a compare-and-set writes) and the answers.
None of it touches a database: each ceiling sends its own statements, so that what differs
between them is the driver and the engine, not the Python around the statements.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from fastapi import Request, Response

#: the shop's session timeouts and touch interval (seconds), and its cache's max_age
IDLE_TIMEOUT, ABSOLUTE_TIMEOUT, TOUCH_INTERVAL, CACHE_MAX_AGE = 1800.0, 43200.0, 60.0, 60.0
COMPARE_AND_SET_ATTEMPTS = 20

#: a web session's record: the JSON object the store keeps, parsed
Record = dict[str, Any]
#: an order's lines: (product id, quantity), one per product, in product id order
Lines = Sequence[tuple[int, int]]


class Refused(Exception):
    """An error answer; raised inside a transaction, it rolls it back."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def answer(payload: Any, status: int = 201) -> Response:
    return Response(json.dumps(payload), status, media_type="application/json")


def refusals(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """The route's :class:`Refused` as its error answer."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except Refused as refused:
            return answer({"detail": refused.detail}, refused.status)

    route.__name__ = handler.__name__
    return route


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def body(request: Request) -> Any:
    return json.loads(await request.body())


# --- the web session: its key, a process-local cache, the record a save writes ---------------


def session_key(request: Request) -> str:
    """The store key of the request's session (its signature is not checked here)."""
    cookie = request.cookies.get("shop_session", "")
    return hashlib.sha256(cookie.partition(".")[0].encode()).hexdigest()


class SessionCache:
    """Records this process read or wrote, by store key, each re-read after ``max_age``
    seconds, as the shop's cache (``fastapi_atomic/websession/cache.py``) keeps them; a record
    is never changed in place."""

    def __init__(self, max_age: float = CACHE_MAX_AGE) -> None:
        self.max_age = max_age
        self._entries: dict[str, tuple[Record, float]] = {}

    def get(self, key: str) -> Record | None:
        """The cached record, unless there is none or it is older than ``max_age``."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[1] > self.max_age:
            return None
        return entry[0]

    def newer(self, key: str, version: int) -> Record | None:
        """The cached record if it is newer than ``version``: a save starts from it, as the
        shop's does (another request of the session committed it since this one loaded)."""
        entry = self._entries.get(key)
        return entry[0] if entry is not None and entry[0]["version"] > version else None

    def keep(self, key: str, record: Record) -> None:
        """Cache ``record`` unless a newer version of it is cached already."""
        entry = self._entries.get(key)
        if entry is None or record["version"] >= entry[0]["version"]:
            self._entries[key] = (record, time.monotonic())

    def fill(self, key: str, text: str | None) -> Record:
        """The record read from the store on a miss (its JSON text, None if there is no such
        session), cached and checked as :meth:`logged_in` checks it."""
        if text is None:
            raise Refused(401, "Not logged in.")
        record: Record = json.loads(text)
        self.keep(key, record)
        return logged_in(record)


def logged_in(record: Record) -> Record:
    if record.get("user_id") is None:
        raise Refused(401, "Not logged in.")
    return record


def touch_due(record: Record) -> bool:
    """Whether a request that does not change the session saves it anyway, to move its
    ``last_seen_at`` (the session manager's ``touch_interval``)."""
    return time.time() - float(record["last_seen_at"]) >= TOUCH_INTERVAL


def next_record(current: Record, order_id: int | None, now: float) -> tuple[Record, str, float]:
    """What the session's compare-and-set writes over ``current``: the record with the order id
    appended to ``data.order_ids`` (if any), ``last_seen_at`` moved and the version one up; its
    JSON text, as the store keeps it; and its expiry."""
    data = dict(current["data"])
    if order_id is not None:
        ids = data.get("order_ids")
        data["order_ids"] = [*ids, order_id] if isinstance(ids, list) else [order_id]
    updated = {**current, "data": data, "version": current["version"] + 1}
    updated["last_seen_at"] = max(current["last_seen_at"], now)
    started = updated["authenticated_at"] or updated["created_at"]
    expires_at = min(updated["last_seen_at"] + IDLE_TIMEOUT, started + ABSOLUTE_TIMEOUT)
    return updated, json.dumps(updated, separators=(",", ":")), float(expires_at)


# --- the writes' requests and answers ---------------------------------------------------------


def transfer_request(payload: Any) -> tuple[int, int, int]:
    """From account, to account, amount."""
    return (
        int(payload["from_account_id"]),
        int(payload["to_account_id"]),
        int(payload["amount"]),
    )


def transfer_answer(transfer_id: int, source: int, target: int, amount: int) -> dict[str, Any]:
    return {"id": transfer_id, "from_account_id": source, "to_account_id": target, "amount": amount}


def order_lines(payload: Any) -> list[tuple[int, int]]:
    """One line per product, in product id order (the lock order)."""
    merged: dict[int, int] = {}
    for item in payload["items"]:
        product_id = int(item["product_id"])
        merged[product_id] = merged.get(product_id, 0) + int(item["quantity"])
    return sorted(merged.items())


def order_total(lines: Lines, prices: dict[int, int]) -> int:
    return sum(prices[product_id] * quantity for product_id, quantity in lines)


def order_answer(
    order_id: int, status: str, lines: Lines, prices: dict[int, int], created: datetime
) -> dict[str, Any]:
    items = [
        {"product_id": product_id, "quantity": quantity, "unit_price": prices[product_id]}
        for product_id, quantity in lines
    ]
    return {
        "id": order_id,
        "status": status,
        "total": order_total(lines, prices),
        "items": items,
        "created_at": iso(created),
    }
