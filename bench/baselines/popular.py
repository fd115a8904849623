"""The popular way, as FastAPI's SQL tutorial teaches it: a signed-cookie session (Starlette's
SessionMiddleware), a sync SQLAlchemy engine (psycopg) with a ``def get_db`` dependency, ``def``
routes (run in the thread pool) and try/commit/except/rollback in the route. Same database and
tables as the shop, to compare.

Environment: BENCH_DATABASE_URL (postgresql+asyncpg://…, the shop's URL), BENCH_SECRET.
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

from shop.db.models import Account, Order, OrderItem, Product, User

url = make_url(os.environ.get("BENCH_DATABASE_URL", "sqlite:///bench.db"))
engine = create_engine(
    url.set(drivername="postgresql+psycopg") if url.get_backend_name() == "postgresql" else url,
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
