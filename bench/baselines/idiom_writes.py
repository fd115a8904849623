"""The shop's SQLite writes as FastAPI has them, with none of the library's request handling:
how near twice the popular recipe the idiom itself lets a write come on this machine.

The shop's own services (``shop.services.orders.checkout_with_account`` and
``shop.services.transfers.transfer``, the one implementation of each rule) in routes of the
idiomatic shape: async routes with the shop's body and response models, the AsyncSession from
a ``yield`` dependency that commits as it ends, and the popular recipe's signed-cookie session
(Starlette's SessionMiddleware, logged in the same way) holding the user and the order ids. No
web session store, CSRF token, idempotency key, unit of work, retry, access log or request id.

The engine is the fastest SQLite path there is here, the library's
(``fastapi_atomic.create_engine``: its statements run on the event loop, with no thread hop),
and a write takes the file's lock first (``BEGIN IMMEDIATE``), as the shop's do. So this row is
generous: it is what any library could reach from this stack, before doing any of its work.

With ``BENCH_SESSION_ROW=1`` the checkout keeps the customer's session where the shop keeps it,
in a row of the shop's ``web_sessions`` table (with its change-log trigger), and appends the
order id to it in the order's transaction: one UPDATE, the JSON appended by SQLite itself, no
read (``session_row.py``). That is the least that keeping the session with the data can cost,
and nothing else of the library (no cookie check, cache, compare-and-set, CSRF token,
idempotency key or hooks): how near twice the popular recipe a checkout that keeps that
promise can come.

Environment: BENCH_DATABASE_URL (``sqlite+aiosqlite:///…``, a file the shop made), BENCH_SECRET,
BENCH_SESSION_ROW.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.middleware.sessions import SessionMiddleware

from fastapi_atomic import create_engine
from fastapi_atomic.engine import SQLITE_BEGIN_OPTION, writer_engine
from shop.api.schemas import AccountPayment, OrderIn, OrderOut, TransferIn, TransferOut
from shop.db.models import User
from shop.services import orders, transfers

from . import session_row

engine = create_engine(os.environ.get("BENCH_DATABASE_URL", "sqlite+aiosqlite:///bench.db"))
SESSION_ROW = os.environ.get("BENCH_SESSION_ROW") == "1"
writer = writer_engine(engine)
app = FastAPI(max_body_size=1024 * 1024)
app.add_middleware(SessionMiddleware, secret_key=os.environ.get("BENCH_SECRET", "s" * 40))


async def get_db() -> AsyncIterator[AsyncSession]:
    """One write transaction, committed as the dependency ends (rolled back on an error)."""
    async with AsyncSession(writer, expire_on_commit=False) as db, db.begin():
        await db.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        yield db


DB = Annotated[AsyncSession, Depends(get_db)]


async def current_user(request: Request) -> int:
    user_id = request.session.get("user_id")
    if not user_id:
        raise HTTPException(401, "Not logged in.")
    return int(user_id)


CurrentUser = Annotated[int, Depends(current_user)]


@app.post("/api/session")
async def login(request: Request, body: dict[str, str]) -> dict[str, Any]:
    async with AsyncSession(engine) as db:
        user = await db.scalar(select(User).where(User.email == body["email"]))
    request.session["user_id"] = user.id if user else 0
    if SESSION_ROW and user is not None:
        async with writer.begin() as connection:
            key = await session_row.create(connection, user.id, user.name, user.email)
        request.session["session_row"] = key
    else:
        request.session["order_ids"] = []
    return {"user": {"id": request.session["user_id"]}}


@app.post("/api/orders", status_code=201)
async def place_order(request: Request, body: OrderIn, user_id: CurrentUser, db: DB) -> OrderOut:
    if not isinstance(body.payment, AccountPayment):
        raise HTTPException(422, "This baseline pays from accounts only.")
    order = await orders.checkout_with_account(
        db,
        user_id=user_id,
        lines=[orders.Line(item.product_id, item.quantity) for item in body.items],
        account_id=body.payment.account_id,
    )
    if "session_row" in request.session:
        await session_row.append_order_id(db, request.session["session_row"], order.id)
    else:
        request.session["order_ids"] = [*request.session["order_ids"], order.id]
    return OrderOut.model_validate(order)


@app.post("/api/transfers", status_code=201)
async def transfer(body: TransferIn, user_id: CurrentUser, db: DB) -> TransferOut:
    record = await transfers.transfer(
        db,
        user_id=user_id,
        from_account_id=body.from_account_id,
        to_account_id=body.to_account_id,
        amount=body.amount,
    )
    return TransferOut.model_validate(record)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
