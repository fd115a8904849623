"""The SQLite ceiling: the shop's transfer and account checkout as their bare statements on sqlite3.

In the same FastAPI + uvicorn stack as the shop, on the same SQLite file layout (the shop's
schema, made by its migrations): the same statements, in the same order, in the same
transactions, and nothing else (no validation, CSRF or signature check, ORM, unit of work,
idempotency, retries or failure paths beyond an error answer). What this reaches is the most
any library sending these statements from this stack could reach on this machine with one
process on the file; the shop's distance from it is the cost of everything else it does, and
where it lies below twice the popular recipe's rows, the SQLite targets (req/s >= 2 x popular)
are out of reach of any library on this machine.

How it talks to SQLite. The standard library's ``sqlite3``, called directly on the event loop:
a statement on a small file takes microseconds, less than a hop to a thread and back. The
file as the shop's engine sets it up (``fastapi_atomic/engine.py``): WAL (readers never wait
for the writer), ``synchronous = NORMAL`` (a commit appends to the log without an fsync),
foreign keys on (each insert checks its references, as the shop's do), a busy timeout of 5 s
for the rare other process on the file (here the wait would block the loop; the shop's engine
makes it in a thread), SQLite's own
transaction handling off and ``BEGIN IMMEDIATE`` for a write, so it takes the write lock
first. One writer at a time in the process, queued in arrival order on an ``asyncio.Lock``,
as the shop's writers queue for its one writer connection in its fair pool. No statement
here awaits inside a transaction, so the lock is never waited for: each write runs from BEGIN
to COMMIT in one turn of the loop. SQLite's automatic checkpoint stays on: the commit that
takes the log past 1000 pages copies it into the database, with its fsync, on the loop. The
shop's engine no longer does that (since 9a3dcd4 its connections run on the loop too, with
automatic checkpoints off and a thread per file checkpointing every 0.2 s): if a run shows the
ceiling's tail bound by checkpoints, do the same here.

What the shop sends on SQLite. Observed on 2026-12-03 (commit 9ebf897; the test below passed again
at 1ff993c; the INSERTs as compiled at 796bcd5) by recording SQLAlchemy's ``before_cursor_execute``
and ``commit`` on the engine of ``shop.app.create_app(settings)`` and on its writer engine
(``fastapi_atomic.engine.writer_engine``), on a scratch SQLite file, SQL session store with its
cache on, one request of each write through ``httpx.ASGITransport`` after a warm-up request of the
same kind. As on PostgreSQL but for three things: the BEGIN is ``BEGIN IMMEDIATE``; there is no row
lock (SQLite locks the file, and ``BEGIN IMMEDIATE`` took it); the INSERTs' RETURNING names bare
columns, and an order's items return nothing. Statements as SQLAlchemy renders them, ``…`` for the
column list before it. Timestamps are sent as text, as SQLAlchemy's SQLite DateTime stores them
(``2026-12-03 06:39:05.355572``, UTC).

The web session as ``bare.py`` keeps it: the SQL store's cache answers every read of the
benchmark's few dozen sessions (the SQLite store's cache is kept live by a change log the
file's triggers write, which a thread of each process watches: here no other process writes,
so the process-local cache of ``bare_common.SessionCache`` is the same). On a miss (a process
that never saw the session, or an entry older than 60 s) the read comes first, in autocommit,
on a connection of its own (the shop's read engine; here a second connection)::

    SELECT web_sessions.record FROM web_sessions WHERE web_sessions."key" = ?

Transfer (``POST /api/transfers``), on a cache hit::

    BEGIN IMMEDIATE
    SELECT accounts.id, accounts.user_id, accounts.balance FROM accounts
        WHERE accounts.id IN (?, ?) ORDER BY accounts.id
    UPDATE accounts SET balance=(accounts.balance + ?) WHERE accounts.id = ?     -- -amount, from
    UPDATE accounts SET balance=(accounts.balance + ?) WHERE accounts.id = ?     -- +amount, to
    INSERT INTO transfers (from_account_id, to_account_id, amount, created_at) VALUES (?, ?, ?, ?)
        RETURNING id, from_account_id, to_account_id, amount, created_at
    COMMIT

Once a minute per session the save before COMMIT also moves its ``last_seen_at`` with the
compare-and-set below, as on PostgreSQL.

Account checkout (``POST /api/orders``, paid from an account), on a cache hit::

    BEGIN IMMEDIATE
    SELECT products.id, products.price FROM products WHERE products.id IN (?)
    SELECT accounts.balance FROM accounts WHERE accounts.id = ? AND accounts.user_id = ?
    UPDATE accounts SET balance=(accounts.balance + ?) WHERE accounts.id = ?     -- -total
    INSERT INTO orders (user_id, status, total, payment_method, account_id, payment_key,
        created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        RETURNING id, created_at                                                -- 'paid'
    INSERT INTO order_items (order_id, product_id, quantity, unit_price)
        VALUES (?, ?, ?, ?)                                                     -- per item
    SELECT products.id, products.stock, products.price FROM products
        WHERE products.id IN (?) ORDER BY products.id
    UPDATE products SET stock=(products.stock + ?) WHERE products.id = ?     -- per item
    UPDATE web_sessions SET version=?, record=?, expires_at=?
        WHERE web_sessions."key" = ? AND web_sessions.version = ?
    COMMIT

The last UPDATE is the web session's compare-and-set, as on PostgreSQL (its AFTER UPDATE
trigger writes the change log row the other processes' caches watch: part of the statement
here too). With one writer at a time it cannot lose a race to a request of this process; it
still reads the record again and repeats if it updated no row.

No card checkout: no target on SQLite names one (its shop row is a reference).

``tests/bench/test_ceiling_statements.py`` runs each write here and in the shop on one SQLite
file and checks that both send the same round trips; when the shop's statements change, change
these.

Environment: BENCH_DATABASE_URL (sqlite+aiosqlite:///…, the shop's URL, with its bench data).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response

from .bare_common import (
    COMPARE_AND_SET_ATTEMPTS,
    Lines,
    Record,
    Refused,
    SessionCache,
    answer,
    body,
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

#: the file of the shop's URL (sqlite+aiosqlite:///path)
DATABASE = os.environ.get("BENCH_DATABASE_URL", "").partition(":///")[2]
#: the shop's engine's (``sqlite_busy_timeout_ms``)
BUSY_TIMEOUT_MS = 5000

# --- the statements, as the shop sends them on SQLite ------------------------------------------

SESSION = 'SELECT web_sessions.record FROM web_sessions WHERE web_sessions."key" = ?'
SAVE_SESSION = (
    "UPDATE web_sessions SET version=?, record=?, expires_at=? "
    'WHERE web_sessions."key" = ? AND web_sessions.version = ?'
)
ACCOUNTS = (
    "SELECT accounts.id, accounts.user_id, accounts.balance FROM accounts "
    "WHERE accounts.id IN (?, ?) ORDER BY accounts.id"
)
ACCOUNT = "SELECT accounts.balance FROM accounts WHERE accounts.id = ? AND accounts.user_id = ?"
CHANGE_BALANCE = "UPDATE accounts SET balance=(accounts.balance + ?) WHERE accounts.id = ?"
TRANSFER = (
    "INSERT INTO transfers (from_account_id, to_account_id, amount, created_at) "
    "VALUES (?, ?, ?, ?) RETURNING id, from_account_id, to_account_id, amount, created_at"
)
ORDER = (
    "INSERT INTO orders (user_id, status, total, payment_method, account_id, payment_key, "
    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id, created_at"
)
ITEM = "INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES (?, ?, ?, ?)"
CHANGE_STOCK = "UPDATE products SET stock=(products.stock + ?) WHERE products.id = ?"


def _in(count: int) -> str:
    """``IN (?, …, ?)``: the ORM renders one parameter per value."""
    return "IN (" + ", ".join("?" for _ in range(count)) + ")"


def prices_sql(count: int) -> str:
    return f"SELECT products.id, products.price FROM products WHERE products.id {_in(count)}"


def products_sql(count: int) -> str:
    return (
        "SELECT products.id, products.stock, products.price FROM products "
        f"WHERE products.id {_in(count)} ORDER BY products.id"
    )


# --- the app -------------------------------------------------------------------------------


def _connect(path: str, factory: type[sqlite3.Connection] = sqlite3.Connection) -> Any:
    """A connection set up as the shop's engine sets up its own (see above)."""
    connection = sqlite3.connect(path, isolation_level=None, factory=factory)
    for pragma in (
        f"busy_timeout = {BUSY_TIMEOUT_MS}",
        "foreign_keys = ON",
        "synchronous = NORMAL",
        "journal_mode = WAL",
    ):
        connection.execute(f"PRAGMA {pragma}")
    return connection


#: the connection of reads outside a transaction (a session's, on a cache miss)
reader: Any = None
#: the one connection of writes, in turn
writer: Any = None
write_lock = asyncio.Lock()


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    global reader, writer
    reader, writer = _connect(DATABASE), _connect(DATABASE)
    try:
        yield
    finally:
        reader.close()
        writer.close()


app = FastAPI(lifespan=lifespan)


@asynccontextmanager
async def _writing() -> AsyncIterator[Any]:
    """The writer connection in a ``BEGIN IMMEDIATE`` transaction, one writer at a time in
    arrival order; committed at the end, rolled back on an exception (a refusal too)."""
    async with write_lock:
        writer.execute("BEGIN IMMEDIATE")
        try:
            yield writer
            writer.execute("COMMIT")
        except BaseException:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            raise


def _timestamp() -> tuple[datetime, str]:
    """Now, and as SQLAlchemy's SQLite DateTime sends it."""
    now = datetime.now(UTC)
    return now, now.strftime("%Y-%m-%d %H:%M:%S.%f")


# --- the web session: a process-local cache, autocommit reads, compare-and-set at commit -----

sessions = SessionCache()


def _load(key: str) -> Record:
    record = sessions.get(key)
    if record is not None:
        return logged_in(record)
    row = reader.execute(SESSION, (key,)).fetchone()  # autocommit: no BEGIN, no COMMIT
    return sessions.fill(key, None if row is None else row[0])


def _save(connection: Any, key: str, record: Record, order_id: int | None) -> Record | None:
    """The session's compare-and-set before COMMIT (the order id appended, if any); if it
    updated no row, read again in the transaction and repeat. None if the session is gone."""
    now = time.time()
    current: Record | None = sessions.newer(key, record["version"]) or record
    for _ in range(COMPARE_AND_SET_ATTEMPTS):
        if current is None:
            row = connection.execute(SESSION, (key,)).fetchone()
            if row is None:
                return None
            current = json.loads(row[0])
        updated, text, expires_at = next_record(current, order_id, now)
        saved = connection.execute(
            SAVE_SESSION, (updated["version"], text, expires_at, key, current["version"])
        )
        if saved.rowcount == 1:
            return updated
        current = None
    raise RuntimeError("web session kept changing")


# --- transfer ------------------------------------------------------------------------------


@app.post("/api/transfers", status_code=201)
@refusals
async def transfer(request: Request) -> Response:
    key = session_key(request)
    source, target, amount = transfer_request(await body(request))
    record = _load(key)
    user_id = int(record["user_id"])
    saved = None
    async with _writing() as connection:
        rows = connection.execute(ACCOUNTS, sorted((source, target)))
        locked = {row[0]: (row[1], row[2]) for row in rows}
        owner, balance = locked.get(source, (None, 0))
        if owner != user_id or target not in locked:
            raise Refused(404, "No such account.")
        if balance < amount:
            raise Refused(409, "Insufficient funds.")
        connection.execute(CHANGE_BALANCE, (-amount, source))
        connection.execute(CHANGE_BALANCE, (amount, target))
        created = _timestamp()[1]
        transfer_id = connection.execute(TRANSFER, (source, target, amount, created)).fetchone()[0]
        if touch_due(record):
            saved = _save(connection, key, record, None)
    if saved is not None:
        sessions.keep(key, saved)
    return answer(transfer_answer(transfer_id, source, target, amount))


# --- account checkout ----------------------------------------------------------------------


def _priced(connection: Any, ids: Sequence[int]) -> dict[int, int]:
    """Product id -> price."""
    prices = dict(connection.execute(prices_sql(len(ids)), ids).fetchall())
    if len(prices) != len(ids):
        raise Refused(404, "No such product.")
    return prices


def _take_stock(connection: Any, lines: Lines, prices: dict[int, int]) -> None:
    """Read the products in id order, then take each quantity."""
    ids = [product_id for product_id, _ in lines]
    rows = connection.execute(products_sql(len(ids)), ids)
    current = {row[0]: (row[1], row[2]) for row in rows}
    for product_id, quantity in lines:
        stock, price = current[product_id]
        if stock < quantity or price != prices[product_id]:
            raise Refused(409, "No stock, or the price changed.")
        connection.execute(CHANGE_STOCK, (-quantity, product_id))


@app.post("/api/orders", status_code=201)
@refusals
async def checkout(request: Request) -> Response:
    key = session_key(request)
    payload = await body(request)
    lines = order_lines(payload)
    if payload["payment"]["method"] != "account":
        raise Refused(422, "Only account checkouts here.")
    account_id = int(payload["payment"]["account_id"])
    record = _load(key)
    user_id = int(record["user_id"])
    async with _writing() as connection:
        prices = _priced(connection, [product_id for product_id, _ in lines])
        total = order_total(lines, prices)
        row = connection.execute(ACCOUNT, (account_id, user_id)).fetchone()
        if row is None:
            raise Refused(404, "No such account.")
        if row[0] < total:
            raise Refused(402, "Insufficient funds.")
        connection.execute(CHANGE_BALANCE, (-total, account_id))
        created, text = _timestamp()
        order = (user_id, "paid", total, "account", account_id, None, text, text)
        order_id = connection.execute(ORDER, order).fetchone()[0]
        for product_id, quantity in lines:
            connection.execute(ITEM, (order_id, product_id, quantity, prices[product_id]))
        _take_stock(connection, lines, prices)
        saved = _save(connection, key, record, order_id)
    if saved is not None:
        sessions.keep(key, saved)
    return answer(order_answer(order_id, "paid", lines, prices, created))
