"""The popular way, as FastAPI's SQL tutorial teaches it: a signed-cookie session (Starlette's
SessionMiddleware), a sync SQLAlchemy engine with a ``def get_db`` dependency, ``def`` routes
(run in the thread pool) and try/commit/except/rollback in the route. Same database and tables
as the shop, to compare: psycopg on PostgreSQL; on SQLite the standard library's sqlite3 with
``check_same_thread=False``, as the tutorial creates its engine, and no pragma of its own:
the shop's file is already in WAL mode (a file keeps it), ``synchronous`` stays FULL,
sqlite3's busy timeout is 5 s and its transaction begins at the first write (the reads before
it see whatever was committed last, so concurrent writes lose updates, as on PostgreSQL).

Environment: BENCH_DATABASE_URL (the shop's URL: postgresql+asyncpg://… or
sqlite+aiosqlite:///…), BENCH_SECRET.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware

from shop.db.models import Account, Order, OrderItem, Product, Transfer, User

url = make_url(os.environ.get("BENCH_DATABASE_URL", "sqlite:///bench.db"))
sqlite = url.get_backend_name() == "sqlite"
engine = create_engine(
    url.set(drivername="sqlite+pysqlite" if sqlite else "postgresql+psycopg"),
    connect_args={"check_same_thread": False} if sqlite else {},
    pool_size=10,
    max_overflow=10,
)
SessionLocal = sessionmaker(bind=engine, autoflush=False, expire_on_commit=False)
app = FastAPI()
app.add_middleware(SessionMiddleware, secret_key=os.environ.get("BENCH_SECRET", "s" * 40))


def get_db() -> Iterator[Session]:
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


DB = Annotated[Session, Depends(get_db)]


@app.post("/api/session")
def login(request: Request, body: dict[str, str], db: DB) -> dict[str, Any]:
    user = db.execute(select(User).where(User.email == body["email"])).scalar_one_or_none()
    request.session["user_id"] = user.id if user else 0
    request.session["order_ids"] = []
    return {"user": {"id": request.session["user_id"]}}


@app.get("/api/session")
async def read_session(request: Request) -> dict[str, Any]:
    if "user_id" not in request.session:
        raise HTTPException(401, "Not logged in.")
    return {"user": {"id": request.session["user_id"]}, "order_ids": request.session["order_ids"]}


@app.post("/api/orders", status_code=201)
def checkout(request: Request, body: dict[str, Any], db: DB) -> dict[str, Any]:
    if "user_id" not in request.session:
        raise HTTPException(401, "Not logged in.")
    try:
        total = 0
        lines = []
        for item in body["items"]:
            product = db.get(Product, item["product_id"])
            if product is None or product.stock < item["quantity"]:
                raise HTTPException(409, "Not enough stock.")
            product.stock -= item["quantity"]  # read-modify-write: oversells under load
            total += product.price * item["quantity"]
            lines.append((product, item["quantity"]))
        account = db.get(Account, body["payment"]["account_id"])
        if account is None or account.balance < total:
            raise HTTPException(402, "Insufficient funds.")
        account.balance -= total
        order = Order(
            user_id=request.session["user_id"],
            status="paid",
            total=total,
            payment_method="account",
            account_id=account.id,
        )
        db.add(order)
        db.flush()
        for product, quantity in lines:
            db.add(
                OrderItem(
                    order_id=order.id,
                    product_id=product.id,
                    quantity=quantity,
                    unit_price=product.price,
                )
            )
        db.commit()
    except Exception:
        db.rollback()
        raise
    request.session["order_ids"] = [*request.session["order_ids"], order.id]
    return {"id": order.id, "status": "paid", "total": total}


@app.post("/api/transfers", status_code=201)
def transfer(request: Request, body: dict[str, int], db: DB) -> dict[str, Any]:
    if "user_id" not in request.session:
        raise HTTPException(401, "Not logged in.")
    try:
        source = db.get(Account, body["from_account_id"])
        destination = db.get(Account, body["to_account_id"])
        if source is None or source.user_id != request.session["user_id"]:
            raise HTTPException(404, "Account not found.")
        if destination is None or destination is source:
            raise HTTPException(404, "Account not found.")
        amount = body["amount"]
        if amount <= 0 or source.balance < amount:
            raise HTTPException(409, "Insufficient funds.")
        source.balance -= amount  # read-modify-write: loses updates under load
        destination.balance += amount
        record = Transfer(from_account_id=source.id, to_account_id=destination.id, amount=amount)
        db.add(record)
        db.commit()
    except Exception:
        db.rollback()
        raise
    return {"id": record.id, "amount": amount}
