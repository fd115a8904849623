"""The ceiling: the shop's checkout and transfer as their bare statements on raw asyncpg.

The same round trips, in the same order, on the same tables, as the shop's checkout. Paid from
an account: the web session read (autocommit), BEGIN, prices, debit, order, item, the web
session's compare-and-set (with the order id appended), stock, COMMIT. Paid by card: the web
session read; BEGIN, prices, pending order, item, pending payment, stock, COMMIT; the gateway's
50 ms (a sleep); BEGIN, order paid, payment succeeded, the web session, COMMIT. With
BENCH_BARE_ONE_STATEMENT=1 the account checkout is one statement after the session read, and
each phase of the card checkout is one statement.

A transfer: BEGIN, both accounts locked in id order, debit, credit, the transfer's record,
COMMIT (the session read once per session, as the shop's cache answers it); or, with
BENCH_BARE_ONE_STATEMENT=1, one statement.

Nothing else: no validation beyond what the statements need, no CSRF check, no signature check
on the cookie, no ORM, no unit of work, no idempotency, no retries, no failure paths. What this
reaches is what any library doing that work in this FastAPI + uvicorn stack could reach at
most; the shop's distance from it is our own cost.

Environment: BENCH_DATABASE_URL (postgresql+asyncpg://…, the shop's URL, with its bench data).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from fastapi import FastAPI, Request, Response

DSN = os.environ.get("BENCH_DATABASE_URL", "").replace("postgresql+asyncpg", "postgresql")
IDLE_TIMEOUT = 1800.0

SESSION = "SELECT record FROM web_sessions WHERE key = $1"
PRICES = "SELECT id, price FROM products WHERE id = ANY($1::int[])"
DEBIT = (
    "UPDATE accounts SET balance = balance - $3 WHERE id = $1 AND user_id = $2 AND balance >= $3"
)
ORDER = (
    "INSERT INTO orders (user_id, status, total, payment_method, account_id, created_at, "
    "updated_at) VALUES ($1, 'paid', $2, 'account', $3, now(), now()) RETURNING id, created_at"
)
ITEM = (
    "INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES ($1, $2, $3, $4)"
)
SAVE_SESSION = (
    "UPDATE web_sessions SET version = $3, record = $4, expires_at = $5 "
    "WHERE key = $1 AND version = $2"
)
STOCK = "UPDATE products SET stock = stock - $2 WHERE id = $1 AND stock >= $2 RETURNING price"
PENDING_ORDER = (
    "INSERT INTO orders (user_id, status, total, payment_method, payment_key, created_at, "
    "updated_at) VALUES ($1, 'pending', $2, 'card', $3, now(), now()) RETURNING id, created_at"
)
PENDING_PAYMENT = (
    "INSERT INTO payments (gateway_key, amount, status, order_id, created_at, updated_at) "
    "VALUES ($1, $2, 'pending', $3, now(), now())"
)
ORDER_PAID = (
    "UPDATE orders SET status = 'paid', updated_at = now() WHERE id = $1 AND status = 'pending'"
)
PAYMENT_SUCCEEDED = (
    "UPDATE payments SET status = 'succeeded', charge_id = $2, updated_at = now() "
    "WHERE order_id = $1"
)
# Fragments of the one-statement writes. The web session's order ids and version, changed in
# SQL: the record is the JSON text the shop's store writes.
APPEND_ORDER_ID = """UPDATE web_sessions SET version = version + 1, record = jsonb_set(jsonb_set(
        record::jsonb, '{{data,order_ids}}',
        COALESCE(record::jsonb #> '{{data,order_ids}}', '[]'::jsonb) || to_jsonb({order}.id)),
        '{{version}}', to_jsonb(version + 1))::text
    FROM {order} WHERE key = {key}"""
INSERT_ITEM = """INSERT INTO order_items (order_id, product_id, quantity, unit_price)
    SELECT new_order.id, $1, $2, stock.price FROM new_order, stock"""

#: The whole account checkout as one statement, atomic on its own (no BEGIN, no COMMIT): the
#: fewest round trips any design that keeps the web session in the database could make. The
#: last line divides by zero, failing the statement, if the debit happened but not the stock.
ONE_STATEMENT = f"""
WITH price AS (
    SELECT price FROM products WHERE id = $1
), debit AS (
    UPDATE accounts SET balance = balance - (SELECT price FROM price) * $2
    WHERE id = $3 AND user_id = $4 AND balance >= (SELECT price FROM price) * $2
    RETURNING id
), stock AS (
    UPDATE products SET stock = stock - $2
    WHERE id = $1 AND stock >= $2 AND EXISTS (SELECT 1 FROM debit)
    RETURNING price
), new_order AS (
    INSERT INTO orders (user_id, status, total, payment_method, account_id, created_at,
                        updated_at)
    SELECT $4, 'paid', price * $2, 'account', $3, now(), now() FROM stock
    RETURNING id, total
), item AS (
    {INSERT_ITEM}
), saved_session AS (
    {APPEND_ORDER_ID.format(order="new_order", key="$5")}
)
SELECT (SELECT id FROM new_order) AS id, (SELECT total FROM new_order) AS total,
       (SELECT count(*) FROM debit) / (SELECT count(*) FROM stock) AS all_or_nothing
"""
OWNERS_LOCKED = "SELECT id, user_id FROM accounts WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE"
TRANSFER_DEBIT = "UPDATE accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2"
TRANSFER_CREDIT = "UPDATE accounts SET balance = balance + $2 WHERE id = $1"
TRANSFER_RECORD = (
    "INSERT INTO transfers (from_account_id, to_account_id, amount, created_at) "
    "VALUES ($1, $2, $3, now()) RETURNING id, from_account_id, to_account_id, amount, created_at"
)
#: A transfer as one statement: both rows locked in id order, both moved, the record written.
#: The last line divides by zero, failing the statement, if only one balance moved.
TRANSFER_ONE_STATEMENT = """
WITH locked AS (
    SELECT id, user_id FROM accounts WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE
), moved AS (
    UPDATE accounts a SET balance = a.balance + CASE WHEN a.id = $2 THEN -$4 ELSE $4 END
    FROM locked
    WHERE a.id = locked.id AND (SELECT count(*) FROM locked) = 2
      AND EXISTS (SELECT 1 FROM locked WHERE id = $2 AND user_id = $5)
      AND (a.id <> $2 OR a.balance >= $4)
    RETURNING a.id
), recorded AS (
    INSERT INTO transfers (from_account_id, to_account_id, amount, created_at)
    SELECT $2, $3, $4, now() WHERE (SELECT count(*) FROM moved) = 2
    RETURNING id
)
SELECT (SELECT id FROM recorded) AS id, 1 / ((SELECT count(*) FROM moved) - 1) AS all_or_nothing
"""
#: The card checkout's two phases as one statement each: reserve (order, item, payment, stock;
#: nothing if there is no stock) and settle (order, payment, the web session).
RESERVE_ONE_STATEMENT = f"""
WITH stock AS (
    UPDATE products SET stock = stock - $2 WHERE id = $1 AND stock >= $2 RETURNING price
), new_order AS (
    INSERT INTO orders (user_id, status, total, payment_method, payment_key, created_at,
                        updated_at)
    SELECT $3, 'pending', price * $2, 'card', $4, now(), now() FROM stock
    RETURNING id, total
), item AS (
    {INSERT_ITEM}
), payment AS (
    INSERT INTO payments (gateway_key, amount, status, order_id, created_at, updated_at)
    SELECT $4, total, 'pending', id, now(), now() FROM new_order
)
SELECT id, total FROM new_order
"""
SETTLE_ONE_STATEMENT = f"""
WITH paid AS (
    UPDATE orders SET status = 'paid', updated_at = now()
    WHERE id = $1 AND status = 'pending' RETURNING id
), payment AS (
    UPDATE payments SET status = 'succeeded', charge_id = $2, updated_at = now()
    WHERE order_id = (SELECT id FROM paid)
)
{APPEND_ORDER_ID.format(order="paid", key="$3")}
"""
ONE_STATEMENT_MODE = os.environ.get("BENCH_BARE_ONE_STATEMENT") == "1"
GATEWAY_LATENCY = float(os.environ.get("BENCH_GATEWAY_LATENCY_MS", "50")) / 1000

pool: Any = None


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(DSN, min_size=20, max_size=20)
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(lifespan=lifespan)


def _error(status: int, detail: str) -> Response:
    return Response(json.dumps({"detail": detail}), status, media_type="application/json")


async def _one_statement(statement: str, *args: Any) -> Any:
    """The row of a one-statement write; None when its all-or-nothing guard failed it."""
    try:
        async with pool.acquire() as connection:
            return await connection.fetchrow(statement, *args)
    except asyncpg.DivisionByZeroError:
        return None


def _session_key(request: Request) -> str:
    """The store key of the request's session (its signature is not checked here)."""
    cookie = request.cookies.get("shop_session", "")
    return hashlib.sha256(cookie.partition(".")[0].encode()).hexdigest()


async def _append_order_id(
    connection: Any, key: str, record: dict[str, Any], order_id: int
) -> None:
    while True:  # compare-and-set, as the shop's store: re-read if another request won
        version = record["version"]
        record["data"]["order_ids"] = [*record["data"].get("order_ids", []), order_id]
        record["version"] = version + 1
        expires_at = record["last_seen_at"] + IDLE_TIMEOUT
        saved = await connection.execute(
            SAVE_SESSION, key, version, version + 1, json.dumps(record), expires_at
        )
        if saved == "UPDATE 1":
            return
        record = json.loads(await connection.fetchval(SESSION, key))


@app.post("/api/orders", status_code=201)
async def checkout(request: Request) -> Response:
    key = _session_key(request)
    body = json.loads(await request.body())
    (item,) = body["items"]
    product_id, quantity = int(item["product_id"]), int(item["quantity"])
    async with pool.acquire() as connection:
        text = await connection.fetchval(SESSION, key)
    if text is None:
        return _error(401, "Not logged in.")
    record = json.loads(text)
    user_id = int(record["user_id"])
    if body["payment"]["method"] == "card":
        return await _by_card(key, record, user_id, product_id, quantity)
    account_id = int(body["payment"]["account_id"])
    if ONE_STATEMENT_MODE:
        row = await _one_statement(ONE_STATEMENT, product_id, quantity, account_id, user_id, key)
        if row is None:
            return _error(409, "No stock or no money.")
        payload = {"id": row["id"], "status": "paid", "total": row["total"]}
        return Response(json.dumps(payload), 201, media_type="application/json")
    async with pool.acquire() as connection, connection.transaction():
        prices = dict(await connection.fetch(PRICES, [product_id]))
        if product_id not in prices:
            return _error(404, "No such product.")
        total = prices[product_id] * quantity
        if await connection.execute(DEBIT, account_id, user_id, total) != "UPDATE 1":
            return _error(402, "Insufficient funds.")
        order_id, _created_at = await connection.fetchrow(ORDER, user_id, total, account_id)
        await connection.execute(ITEM, order_id, product_id, quantity, prices[product_id])
        await _append_order_id(connection, key, record, order_id)
        if await connection.fetchval(STOCK, product_id, quantity) is None:
            raise RuntimeError("no stock")  # rolls back
    payload = {"id": order_id, "status": "paid", "total": total}
    return Response(json.dumps(payload), 201, media_type="application/json")


#: session key -> user id: a transfer does not change the web session, so the shop answers its
#: session read from its cache; the ceiling reads each session once too
_users: dict[str, int] = {}


@app.post("/api/transfers", status_code=201)
async def transfer(request: Request) -> Response:
    key = _session_key(request)
    body = json.loads(await request.body())
    source, target = int(body["from_account_id"]), int(body["to_account_id"])
    amount = int(body["amount"])
    if key not in _users:
        async with pool.acquire() as connection:
            text = await connection.fetchval(SESSION, key)
        if text is None:
            return _error(401, "Not logged in.")
        _users[key] = int(json.loads(text)["user_id"])
    user_id = _users[key]
    ids = sorted((source, target))
    if ONE_STATEMENT_MODE:
        row = await _one_statement(TRANSFER_ONE_STATEMENT, ids, source, target, amount, user_id)
        if row is None:
            return _error(409, "Insufficient funds.")
        if row["id"] is None:
            return _error(404, "No such account.")
        payload = {"id": row["id"], "amount": amount}
        return Response(json.dumps(payload), 201, media_type="application/json")
    async with pool.acquire() as connection, connection.transaction():
        owners = dict(await connection.fetch(OWNERS_LOCKED, ids))
        if owners.get(source) != user_id or target not in owners:
            return _error(404, "No such account.")
        if await connection.execute(TRANSFER_DEBIT, source, amount) != "UPDATE 1":
            return _error(409, "Insufficient funds.")
        await connection.execute(TRANSFER_CREDIT, target, amount)
        row = await connection.fetchrow(TRANSFER_RECORD, source, target, amount)
    payload = {"id": row["id"], "amount": amount, "created_at": row["created_at"].isoformat()}
    return Response(json.dumps(payload), 201, media_type="application/json")


async def _by_card(
    key: str, record: dict[str, Any], user_id: int, product_id: int, quantity: int
) -> Response:
    payment_key = f"order_{uuid.uuid4().hex}"
    if ONE_STATEMENT_MODE:
        async with pool.acquire() as connection:
            reserved = await connection.fetchrow(
                RESERVE_ONE_STATEMENT, product_id, quantity, user_id, payment_key
            )
        if reserved is None:
            return _error(409, "No stock.")
        await asyncio.sleep(GATEWAY_LATENCY)  # the gateway charges the card
        async with pool.acquire() as connection:
            await connection.execute(
                SETTLE_ONE_STATEMENT, reserved["id"], f"ch_{uuid.uuid4().hex}", key
            )
        payload = {"id": reserved["id"], "status": "paid", "total": reserved["total"]}
        return Response(json.dumps(payload), 201, media_type="application/json")
    async with pool.acquire() as connection, connection.transaction():
        prices = dict(await connection.fetch(PRICES, [product_id]))
        if product_id not in prices:
            return _error(404, "No such product.")
        total = prices[product_id] * quantity
        order_id, _created_at = await connection.fetchrow(
            PENDING_ORDER, user_id, total, payment_key
        )
        await connection.execute(ITEM, order_id, product_id, quantity, prices[product_id])
        await connection.execute(PENDING_PAYMENT, payment_key, total, order_id)
        if await connection.fetchval(STOCK, product_id, quantity) is None:
            raise RuntimeError("no stock")  # rolls back
    await asyncio.sleep(GATEWAY_LATENCY)  # the gateway charges the card
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(ORDER_PAID, order_id)
        await connection.execute(PAYMENT_SUCCEEDED, order_id, f"ch_{uuid.uuid4().hex}")
        await _append_order_id(connection, key, record, order_id)
    payload = {"id": order_id, "status": "paid", "total": total}
    return Response(json.dumps(payload), 201, media_type="application/json")
