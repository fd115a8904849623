"""The ceiling: the shop's transfer and checkouts as their bare statements on raw asyncpg.

In the same FastAPI + uvicorn stack as the shop: the same round trips, in the same order, in
the same transactions, on the same tables, and nothing else (no validation, CSRF or signature
check, ORM, unit of work, idempotency, retries or failure paths beyond an error answer). What
this reaches is the most any library sending these statements from this stack could reach on
this machine; the shop's distance from it is the cost of everything else it does.

What the shop sends. Observed on 2026-12-02 (commit ededa7a, then 156dec8 and 9ace56b after it; the
INSERTs' RETURNING lists as compiled at 796bcd5) by a scratch script that built
``shop.app.create_app(settings)`` (SQL session store, its cache on, fake gateway with 50 ms
latency) on a scratch PostgreSQL database, drove one request of each kind through
``httpx.ASGITransport`` after a warm-up request of the same kind, and recorded
``before_cursor_execute``, ``begin`` and ``commit`` on ``app.state.engine.sync_engine``;
PostgreSQL's ``log_statement = 'all'`` on that database showed the same on the wire (BEGIN and
COMMIT as simple queries, every other statement a prepared one). Statements below as SQLAlchemy
renders them, without its ``::TYPE`` casts; ``…`` stands for the column list before it.

The web session. The benchmark's load repeats the requests of a few dozen logged-in sessions,
so the SQL store's cache (``SHOP_SESSION_CACHE``, on by default;
``fastapi_atomic/websession/cache.py``) answers every read: the login that made the session,
and every later write of it, put the record in the writing process's cache when its COMMIT
returned. A read reaches the database only on a miss (a process that never saw the session,
or an entry older than the cache's ``max_age``, 60 s), and then in autocommit, on a
connection of its own, before anything else::

    SELECT web_sessions.record FROM web_sessions WHERE web_sessions.key = $1

Here the same: a process-local cache of the records this process read or wrote, re-read after
60 s, in autocommit on a miss.

Transfer (``POST /api/transfers``), on a cache hit::

    BEGIN
    SELECT accounts.id, accounts.user_id, accounts.balance FROM accounts
        WHERE accounts.id IN ($1, $2) ORDER BY accounts.id FOR NO KEY UPDATE
    UPDATE accounts SET balance=(accounts.balance + $1) WHERE accounts.id = $2   -- -amount, from
    UPDATE accounts SET balance=(accounts.balance + $1) WHERE accounts.id = $2   -- +amount, to
    INSERT INTO transfers (from_account_id, to_account_id, amount, created_at)
        VALUES ($1, $2, $3, $4) RETURNING transfers.id, transfers.from_account_id,
        transfers.to_account_id, transfers.amount, transfers.created_at
    COMMIT

A transfer does not change the web session; once a minute per session (the session manager's
``touch_interval``, 60 s) the save before COMMIT also moves its ``last_seen_at``, with the
compare-and-set below (observed with the interval set to 0).

Account checkout (``POST /api/orders``, paid from an account), on a cache hit::

    BEGIN
    SELECT products.id, products.price FROM products WHERE products.id IN ($1)
    SELECT accounts.balance FROM accounts
        WHERE accounts.id = $1 AND accounts.user_id = $2 FOR NO KEY UPDATE
    UPDATE accounts SET balance=(accounts.balance + $1) WHERE accounts.id = $2   -- -total
    INSERT INTO orders (user_id, status, total, payment_method, account_id, payment_key,
        created_at, updated_at) VALUES ($1, …, $8)
        RETURNING orders.id, orders.created_at                                    -- 'paid'
    INSERT INTO order_items (order_id, product_id, quantity, unit_price)
        VALUES ($1, $2, $3, $4) RETURNING order_items.id                         -- per item
    SELECT products.id, products.stock, products.price FROM products
        WHERE products.id IN ($1) ORDER BY products.id FOR NO KEY UPDATE
    UPDATE products SET stock=(products.stock + $1) WHERE products.id = $2   -- -quantity, per item
    UPDATE web_sessions SET version=$1, record=$2, expires_at=$3
        WHERE web_sessions.key = $4 AND web_sessions.version = $5
    COMMIT

The last UPDATE is the web session's compare-and-set at commit: the record (the JSON text the
store keeps) with the order id appended to ``data.order_ids``, ``last_seen_at`` moved, the
version one up, where the version is still the one read. When another request of the same
session won meanwhile it updates no row, and the store reads the record again in the
transaction (``SELECT web_sessions.record … WHERE web_sessions.key = $1``) and repeats the
UPDATE (observed with two checkouts of one session at once).

Card checkout (``POST /api/orders``, paid by card, the fake gateway's 50 ms), on a cache hit::

    -- the reserve phase, its own transaction on a connection of its own:
    BEGIN
    SELECT payments.id, payments.gateway_key, … FROM payments
        WHERE payments.gateway_key = $1                          -- an earlier run's: none
    SELECT products.id, products.price FROM products WHERE products.id IN ($1)
    INSERT INTO orders (…) VALUES ($1, …, $8) RETURNING orders.id, orders.created_at
    INSERT INTO order_items (…) VALUES ($1, $2, $3, $4) RETURNING order_items.id
    INSERT INTO payments (gateway_key, amount, status, charge_id, decline_code, order_id,
        deposit_id, charging_until, created_at, updated_at) VALUES ($1, …, $10)
        RETURNING payments.id                                   -- leased while it charges
    SELECT products.id, products.stock, products.price FROM products
        WHERE products.id IN ($1) ORDER BY products.id FOR NO KEY UPDATE
    UPDATE products SET stock=(products.stock + $1) WHERE products.id = $2   -- -quantity
    COMMIT
    -- the gateway charges the card: 50 ms, no connection held
    -- the settle, the request's own transaction:
    BEGIN
    UPDATE payments SET status=$1, charge_id=$2, decline_code=$3, updated_at=$4
        WHERE payments.gateway_key = $5 AND payments.status = $6     -- 'succeeded', 'pending'
    UPDATE orders SET status=$1, updated_at=$2 WHERE orders.id = $3                -- 'paid'
    SELECT orders.id, orders.user_id, orders.status, orders.total, orders.payment_method,
        orders.account_id, orders.payment_key, orders.created_at, orders.updated_at
        FROM orders WHERE orders.id = $1 AND orders.user_id = $2 AND orders.status = $3
    SELECT order_items.order_id, order_items.id, order_items.product_id,
        order_items.quantity, order_items.unit_price FROM order_items
        WHERE order_items.order_id IN ($1) ORDER BY order_items.id    -- the order read back
    UPDATE web_sessions SET version=$1, record=$2, expires_at=$3
        WHERE web_sessions.key = $4 AND web_sessions.version = $5
    COMMIT

The reserve phase looks for an earlier run's payment first: from 156dec8 it looked only for a
request with an Idempotency-Key (which the benchmark never sends); since 7d8d8b4 it always
looks, because a phase whose COMMIT lost its connection may have landed and is run again only
if it finds its own work (``run_phase(..., idempotent=True)``).

Timestamps are sent as parameters, as the ORM's Python-side defaults send them. Each
transaction here runs on a connection taken from the pool for it and given back after it, as
the shop's unit of work does; the pool has 20 connections, as the shop's under the benchmark
(``SHOP_DB_POOL_SIZE=20``), and sends nothing when a connection comes back to it (asyncpg's
pool would send a reset query, a round trip the shop's does not make: checked on the wire).

``tests/bench/test_ceiling_statements.py`` runs each write here and in the shop on one database
and checks that both send the same round trips; when the shop's statements change, change these.

Environment: BENCH_DATABASE_URL (postgresql+asyncpg://…, the shop's URL, with its bench data),
BENCH_GATEWAY_LATENCY_MS (50).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from fastapi import FastAPI, Request, Response

from .bare_common import (
    COMPARE_AND_SET_ATTEMPTS,
    Lines,
    Record,
    Refused,
    SessionCache,
    answer,
    body,
    iso,
    logged_in,
    next_record,
    order_answer,
    order_lines,
    order_total,
    refusals,
    session_key,
    touch_due,
    transfer_answer,
    transfer_request,
)

DSN = os.environ.get("BENCH_DATABASE_URL", "").replace("postgresql+asyncpg", "postgresql")
GATEWAY_LATENCY = float(os.environ.get("BENCH_GATEWAY_LATENCY_MS", "50")) / 1000
POOL_SIZE = 20

# --- the statements, as the shop sends them --------------------------------------------------

SESSION = "SELECT web_sessions.record FROM web_sessions WHERE web_sessions.key = $1"
SAVE_SESSION = (
    "UPDATE web_sessions SET version=$1, record=$2, expires_at=$3 "
    "WHERE web_sessions.key = $4 AND web_sessions.version = $5"
)
ACCOUNTS_LOCKED = (
    "SELECT accounts.id, accounts.user_id, accounts.balance FROM accounts "
    "WHERE accounts.id IN ($1, $2) ORDER BY accounts.id FOR NO KEY UPDATE"
)
ACCOUNT_LOCKED = (
    "SELECT accounts.balance FROM accounts "
    "WHERE accounts.id = $1 AND accounts.user_id = $2 FOR NO KEY UPDATE"
)
CHANGE_BALANCE = "UPDATE accounts SET balance=(accounts.balance + $1) WHERE accounts.id = $2"
TRANSFER = (
    "INSERT INTO transfers (from_account_id, to_account_id, amount, created_at) "
    "VALUES ($1, $2, $3, $4) RETURNING transfers.id, transfers.from_account_id, "
    "transfers.to_account_id, transfers.amount, transfers.created_at"
)
#: an earlier run's payment: the shop's reserve phase looks first, to be idempotent
EARLIER_PAYMENT = (
    "SELECT payments.id, payments.gateway_key, payments.amount, payments.status, "
    "payments.charge_id, payments.decline_code, payments.order_id, payments.deposit_id, "
    "payments.charging_until, payments.created_at, payments.updated_at FROM payments "
    "WHERE payments.gateway_key = $1"
)
ORDER = (
    "INSERT INTO orders (user_id, status, total, payment_method, account_id, payment_key, "
    "created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
    "RETURNING orders.id, orders.created_at"
)
ITEM = (
    "INSERT INTO order_items (order_id, product_id, quantity, unit_price) "
    "VALUES ($1, $2, $3, $4) RETURNING order_items.id"
)
PAYMENT = (
    "INSERT INTO payments (gateway_key, amount, status, charge_id, decline_code, order_id, "
    "deposit_id, charging_until, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING payments.id"
)
CHANGE_STOCK = "UPDATE products SET stock=(products.stock + $1) WHERE products.id = $2"
END_PENDING = (
    "UPDATE payments SET status=$1, charge_id=$2, decline_code=$3, updated_at=$4 "
    "WHERE payments.gateway_key = $5 AND payments.status = $6"
)
ORDER_PAID = "UPDATE orders SET status=$1, updated_at=$2 WHERE orders.id = $3"
ORDER_READ = (
    "SELECT orders.id, orders.user_id, orders.status, orders.total, orders.payment_method, "
    "orders.account_id, orders.payment_key, orders.created_at, orders.updated_at FROM orders "
    "WHERE orders.id = $1 AND orders.user_id = $2 AND orders.status = $3"
)


def _in(count: int) -> str:
    """``IN ($1, …, $n)``: the ORM renders one parameter per value."""
    return "IN (" + ", ".join(f"${n}" for n in range(1, count + 1)) + ")"


def prices_sql(count: int) -> str:
    return f"SELECT products.id, products.price FROM products WHERE products.id {_in(count)}"


def products_locked_sql(count: int) -> str:
    return (
        "SELECT products.id, products.stock, products.price FROM products "
        f"WHERE products.id {_in(count)} ORDER BY products.id FOR NO KEY UPDATE"
    )


def items_read_sql(count: int) -> str:
    return (
        "SELECT order_items.order_id, order_items.id, order_items.product_id, "
        "order_items.quantity, order_items.unit_price FROM order_items "
        f"WHERE order_items.order_id {_in(count)} ORDER BY order_items.id"
    )


# --- the app -------------------------------------------------------------------------------

pool: Any = None


async def _no_reset(_connection: Any) -> None:
    """asyncpg's pool would otherwise send a reset query (``SELECT pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL;``) each time a connection goes back to it: a round trip
    the shop's pool does not make. A transaction left open is still rolled back."""


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(
        DSN,
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
        reset=_no_reset,
        # Connections kept for the whole run, as the shop's pool keeps them.
        max_queries=2**62,
        max_inactive_connection_lifetime=0,
    )
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(lifespan=lifespan)


def _now() -> datetime:
    return datetime.now(UTC)


# --- the web session: a process-local cache, autocommit reads, compare-and-set at commit -----

sessions = SessionCache()


async def _load(key: str) -> Record:
    record = sessions.get(key)
    if record is not None:
        return logged_in(record)
    async with pool.acquire() as connection:  # autocommit: no BEGIN, no COMMIT
        text = await connection.fetchval(SESSION, key)
    return sessions.fill(key, text)


async def _save(connection: Any, key: str, record: Record, order_id: int | None) -> Record | None:
    """The session's compare-and-set before COMMIT (the order id appended, if any); on a lost
    race, read again in the transaction and repeat. None if the session is gone."""
    now = time.time()
    current: Record | None = sessions.newer(key, record["version"]) or record
    for _ in range(COMPARE_AND_SET_ATTEMPTS):
        if current is None:
            text = await connection.fetchval(SESSION, key)
            if text is None:
                return None
            current = json.loads(text)
        updated, text, expires_at = next_record(current, order_id, now)
        saved = await connection.execute(
            SAVE_SESSION, updated["version"], text, expires_at, key, current["version"]
        )
        if saved == "UPDATE 1":
            return updated
        current = None
    raise RuntimeError("web session kept changing")


# --- transfer ------------------------------------------------------------------------------


@app.post("/api/transfers", status_code=201)
@refusals
async def transfer(request: Request) -> Response:
    key = session_key(request)
    source, target, amount = transfer_request(await body(request))
    record = await _load(key)
    user_id = int(record["user_id"])
    saved = None
    async with pool.acquire() as connection, connection.transaction():
        locked = {
            row[0]: (row[1], row[2])
            for row in await connection.fetch(ACCOUNTS_LOCKED, *sorted((source, target)))
        }
        owner, balance = locked.get(source, (None, 0))
        if owner != user_id or target not in locked:
            raise Refused(404, "No such account.")
        if balance < amount:
            raise Refused(409, "Insufficient funds.")
        await connection.execute(CHANGE_BALANCE, -amount, source)
        await connection.execute(CHANGE_BALANCE, amount, target)
        transfer_id = (await connection.fetchrow(TRANSFER, source, target, amount, _now()))[0]
        if touch_due(record):
            saved = await _save(connection, key, record, None)
    if saved is not None:
        sessions.keep(key, saved)
    return answer(transfer_answer(transfer_id, source, target, amount))


# --- checkout ------------------------------------------------------------------------------


async def _priced(connection: Any, lines: Lines) -> dict[int, int]:
    """Product id -> price, read without a lock."""
    ids = [product_id for product_id, _ in lines]
    prices = dict(await connection.fetch(prices_sql(len(ids)), *ids))
    if len(prices) != len(ids):
        raise Refused(404, "No such product.")
    return prices


async def _place(
    connection: Any,
    user_id: int,
    lines: Lines,
    prices: dict[int, int],
    *,
    status: str,
    method: str,
    account_id: int | None,
    payment_key: str | None,
) -> tuple[int, datetime]:
    total = order_total(lines, prices)
    created = _now()
    order_id, created = await connection.fetchrow(
        ORDER, user_id, status, total, method, account_id, payment_key, created, created
    )
    for product_id, quantity in lines:
        await connection.fetchval(ITEM, order_id, product_id, quantity, prices[product_id])
    return order_id, created


async def _take_stock(connection: Any, lines: Lines, prices: dict[int, int]) -> None:
    """Lock the products in id order, then take each quantity."""
    ids = [product_id for product_id, _ in lines]
    locked = {
        row[0]: (row[1], row[2])
        for row in await connection.fetch(products_locked_sql(len(ids)), *ids)
    }
    for product_id, quantity in lines:
        stock, price = locked[product_id]
        if stock < quantity or price != prices[product_id]:
            raise Refused(409, "No stock, or the price changed.")
        await connection.execute(CHANGE_STOCK, -quantity, product_id)


@app.post("/api/orders", status_code=201)
@refusals
async def checkout(request: Request) -> Response:
    key = session_key(request)
    payload = await body(request)
    lines = order_lines(payload)
    record = await _load(key)
    user_id = int(record["user_id"])
    if payload["payment"]["method"] == "card":
        return await _by_card(key, record, user_id, lines)
    account_id = int(payload["payment"]["account_id"])
    async with pool.acquire() as connection, connection.transaction():
        prices = await _priced(connection, lines)
        total = order_total(lines, prices)
        balance = await connection.fetchval(ACCOUNT_LOCKED, account_id, user_id)
        if balance is None:
            raise Refused(404, "No such account.")
        if balance < total:
            raise Refused(402, "Insufficient funds.")
        await connection.execute(CHANGE_BALANCE, -total, account_id)
        order_id, created = await _place(
            connection,
            user_id,
            lines,
            prices,
            status="paid",
            method="account",
            account_id=account_id,
            payment_key=None,
        )
        await _take_stock(connection, lines, prices)
        saved = await _save(connection, key, record, order_id)
    if saved is not None:
        sessions.keep(key, saved)
    return answer(order_answer(order_id, "paid", lines, prices, created))


async def _by_card(key: str, record: Record, user_id: int, lines: Lines) -> Response:
    payment_key = f"order_{uuid.uuid4().hex}"
    # The reserve phase, committed before the gateway is called.
    async with pool.acquire() as connection, connection.transaction():
        await connection.fetchrow(EARLIER_PAYMENT, payment_key)  # none: the key is new
        prices = await _priced(connection, lines)
        order_id, created = await _place(
            connection,
            user_id,
            lines,
            prices,
            status="pending",
            method="card",
            account_id=None,
            payment_key=payment_key,
        )
        total = order_total(lines, prices)
        lease = created + timedelta(seconds=2 * GATEWAY_LATENCY + 1)  # the fake gateway's
        await connection.fetchval(
            PAYMENT,
            payment_key,
            total,
            "pending",
            None,
            None,
            order_id,
            None,
            lease,
            created,
            created,
        )
        await _take_stock(connection, lines, prices)
    await asyncio.sleep(GATEWAY_LATENCY)  # the gateway charges the card; no connection held
    charge_id = f"ch_{uuid.uuid4().hex[:24]}"
    # The settle, with the order read back and the web session's compare-and-set.
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(
            END_PENDING, "succeeded", charge_id, None, _now(), payment_key, "pending"
        )
        await connection.execute(ORDER_PAID, "paid", _now(), order_id)
        order = await connection.fetchrow(ORDER_READ, order_id, user_id, "paid")
        items = await connection.fetch(items_read_sql(1), order_id)
        saved = await _save(connection, key, record, order_id)
    if saved is not None:
        sessions.keep(key, saved)
    payload = {
        "id": order["id"],
        "status": order["status"],
        "total": order["total"],
        "items": [
            {
                "product_id": i["product_id"],
                "quantity": i["quantity"],
                "unit_price": i["unit_price"],
            }
            for i in items
        ],
        "created_at": iso(order["created_at"]),
    }
    return answer(payload)
