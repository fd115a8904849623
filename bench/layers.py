"""Where a request's time goes, layer by layer, measured in one process (no HTTP, no wrk).

    python -m bench.layers                 # PostgreSQL at BENCH_POSTGRES_URL (a throw-away db)
    python -m bench.layers --rounds 1 --requests 20    # checks the tool works

Two tables, each from interleaved rounds in one process (medians, in microseconds):

1. An authenticated session read, built up one layer at a time: a bare route; the FastAPI
   idiom of the shop's GET /api/session (a router included under a prefix, a dependency that
   depends on another, a response model) with dependencies that do nothing; the same with
   AtomicMiddleware; the same with the real web session (the SQL store and its cache); the shop
   itself; and Starlette's signed-cookie session (the target's baseline).
2. One UPDATE in a transaction, CPU per statement: raw asyncpg against SQLAlchemy's
   AsyncConnection and the unit of work's AsyncSession (the shop's statements are Core
   statements built once, as here).
3. An account checkout on SQLite (target T12's write), requests a second with 64 at once, each
   the next of 64 customers in turn as the benchmark's load sends them: the popular recipe
   (T12's baseline), the shop's checkout service on a plain AsyncSession (no FastAPI, none of
   the library), the same in an idiomatic FastAPI route (body and response models, the
   AsyncSession from a yield dependency, still none of the library), and the shop's POST
   /api/orders. It says what share of the target the idiomatic stack leaves to the library.
   One row adds to that route the least the library's promise costs, and nothing else: the
   customer's web-session row (the shop's table, with its change-log trigger) appended the new
   order id in the order's transaction, by one UPDATE (``baselines/session_row.py``, as ``make
   bench``'s reference row). What lies between that row and the shop's is the rest of the
   library's work and the shop's, per request.

The ASGI app is called directly with a prepared scope, so what is measured is the app's own
work; uvicorn's parsing and the socket come on top of every row alike. The garbage collector is
frozen after the set-up, as `shop serve` does.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, Table, bindparam, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.types import ASGIApp, Message

from bench.baselines import session_row
from bench.run import ADMIN, SECRET, Databases
from fastapi_atomic import AtomicMiddleware, atomic, create_engine
from fastapi_atomic.engine import SQLITE_BEGIN_OPTION, writer_engine
from fastapi_atomic.websession import WebSessionDep, WebSessionManager
from shop.api.schemas import AccountPayment, OrderIn, OrderOut
from shop.app import create_app
from shop.services import orders
from shop.settings import Settings

ROUNDS = 9
REQUESTS = 1000
#: the checkout table: customers checking out at once, and seconds of each round
CUSTOMERS = 64
SECONDS = 3.0


def scope_for(path: str, cookie: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"cookie", cookie.encode()), (b"user-agent", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


async def per_request(app: ASGIApp, scope: dict[str, Any], count: int) -> float:
    """Microseconds per request of ``app`` answering ``scope`` ``count`` times in a row."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.perf_counter()
    for _ in range(count):
        await app(dict(scope), receive, send)
    elapsed = time.perf_counter() - started
    assert set(statuses) == {200}, set(statuses)
    return elapsed / count * 1e6


class Out(BaseModel):
    id: int
    csrf_token: str


async def nothing_session(request: Request) -> dict[str, str]:
    return {"user_id": "1", "csrf_token": "token"}


NothingSession = Annotated[dict[str, str], Depends(nothing_session)]


async def nothing_user(websession: NothingSession) -> int:
    return int(websession["user_id"])


NothingUser = Annotated[int, Depends(nothing_user)]


async def session_user(websession: WebSessionDep) -> int:
    return int(websession.user_id or 0)


SessionUser = Annotated[int, Depends(session_user)]


def layer(kind: str, engine: AsyncEngine, manager: WebSessionManager) -> FastAPI:
    app = FastAPI()
    if kind == "bare route":

        @app.get("/api/session")
        async def bare() -> dict[str, int]:
            return {"id": 1}

        return app
    router = APIRouter()
    if kind.endswith("web session"):

        @router.get("/session")
        async def real(user: SessionUser, websession: WebSessionDep) -> Out:
            return Out(id=user, csrf_token=websession.csrf_token or "")
    else:

        @router.get("/session")
        async def idiom(user: NothingUser, websession: NothingSession) -> Out:
            return Out(id=user, csrf_token=websession["csrf_token"])

    app.include_router(router, prefix="/api")
    if kind != "FastAPI idiom":
        app.add_middleware(AtomicMiddleware, engine=engine, websessions=manager)
    return app


def popular_app(database_url: str) -> FastAPI:
    """The popular recipe's app on ``database_url`` (the module reads it as it is imported)."""
    os.environ["BENCH_DATABASE_URL"] = database_url
    os.environ["BENCH_SECRET"] = SECRET
    import bench.baselines.popular as module

    app: FastAPI = importlib.reload(module).app
    return app


def shop_and_popular(database_url: str) -> tuple[FastAPI, FastAPI]:
    """The shop (with the benchmark's administrator) and the popular recipe, on one database."""
    settings = Settings(
        database_url=database_url,
        secret_keys=[SECRET],
        cookie_secure=False,
        admin_email=ADMIN["email"],
        admin_password=ADMIN["password"],
    )
    return create_app(settings), popular_app(database_url)


async def session_read_layers(database_url: str) -> list[tuple[str, float]]:
    shop, popular = shop_and_popular(database_url)

    async with LifespanManager(shop):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=shop), base_url="http://b")
        credentials = {"email": "layers@example.com", "password": "layers-password"}
        await client.post("/api/users", json={"name": "Layers", **credentials})
        await client.post("/api/session", json=credentials)
        cookie = f"shop_session={client.cookies['shop_session']}"
        baseline = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=popular), base_url="http://b"
        )
        await baseline.post("/api/session", json={"email": credentials["email"]})
        popular_cookie = f"session={baseline.cookies['session']}"

        middleware: Any = shop.middleware_stack
        while not isinstance(middleware, AtomicMiddleware):
            middleware = middleware.app
        manager = middleware.websessions
        assert manager is not None
        rows: dict[str, tuple[ASGIApp, dict[str, Any]]] = {
            kind: (layer(kind, shop.state.engine, manager), scope_for("/api/session", cookie))
            for kind in (
                "bare route",
                "FastAPI idiom",
                "+ AtomicMiddleware",
                "+ the web session",
            )
        }
        rows["the shop's GET /api/session"] = (shop, scope_for("/api/session", cookie))
        rows["Starlette cookie session (baseline)"] = (
            popular,
            scope_for("/api/session", popular_cookie),
        )
        return await interleaved(rows)


async def interleaved(rows: dict[str, tuple[ASGIApp, dict[str, Any]]]) -> list[tuple[str, float]]:
    for app, scope in rows.values():
        await per_request(app, scope, max(REQUESTS // 3, 1))
    gc.collect()
    gc.freeze()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(ROUNDS):
        for name, (app, scope) in rows.items():
            times[name].append(await per_request(app, scope, REQUESTS))
    return [(name, statistics.median(values)) for name, values in times.items()]


metadata = MetaData()
counters = Table(
    "layers_counters", metadata, Column("id", Integer, primary_key=True), Column("n", Integer)
)
INCREMENT = update(counters).where(counters.c.id == bindparam("counter")).values(n=counters.c.n + 1)


async def statement_costs(database_url: str) -> list[tuple[str, float]]:
    """CPU microseconds per UPDATE inside a transaction, each way of sending it."""
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        await connection.execute(counters.insert().values(id=1, n=0))
    raw = await asyncpg.connect(database_url.replace("+asyncpg", ""))

    async def raw_asyncpg(count: int) -> None:
        async with raw.transaction():
            for _ in range(count):
                await raw.execute("UPDATE layers_counters SET n = n + 1 WHERE id = $1", 1)

    async def async_connection(count: int) -> None:
        async with engine.begin() as connection:
            for _ in range(count):
                await connection.execute(INCREMENT, {"counter": 1})

    async def unit_of_work(count: int) -> None:
        async with atomic(engine) as uow:
            for _ in range(count):
                await uow.db.execute(INCREMENT, {"counter": 1})

    ways: dict[str, Callable[[int], Awaitable[None]]] = {
        "raw asyncpg": raw_asyncpg,
        "SQLAlchemy AsyncConnection": async_connection,
        "the unit of work's AsyncSession": unit_of_work,
    }
    try:
        costs: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(ROUNDS):
            for name, way in ways.items():
                # CPU of a transaction of 11 statements less that of one of 1: 10 statements.
                spent = []
                for count in (1, 11):
                    started = time.process_time()
                    for _ in range(50):
                        await way(count)
                    spent.append(time.process_time() - started)
                costs[name].append((spent[1] - spent[0]) / 50 / 10 * 1e6)
        return [(name, statistics.median(values)) for name, values in costs.items()]
    finally:
        await raw.close()
        await engine.dispose()


@dataclass(frozen=True)
class Customer:
    user_id: int
    account_id: int
    #: the shop's session cookie and CSRF token, and the popular recipe's cookie
    cookie: str
    csrf_token: str
    popular_cookie: str


def checkout_body(customer: Customer, product: int) -> bytes:
    payment = {"method": "account", "account_id": customer.account_id}
    return json.dumps(
        {"items": [{"product_id": product, "quantity": 1}], "payment": payment}
    ).encode()


async def post(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """One POST to ``app``, called directly; its status."""
    chunks = [{"type": "http.request", "body": body, "more_body": False}]
    statuses: list[int] = []

    async def receive() -> Message:
        return chunks.pop() if chunks else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        **scope_for(path, ""),
        "method": "POST",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    await app(scope, receive, send)
    return statuses[0]


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction on the app's SQLite writer (``BEGIN IMMEDIATE``, as the shop's unit of
    work begins a write there), committed as the dependency ends."""
    async with AsyncSession(request.app.state.writer, expire_on_commit=False) as db, db.begin():
        await db.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        yield db


DB = Annotated[AsyncSession, Depends(get_db)]


def fastapi_route(
    writer: AsyncEngine, users: dict[int, int], sessions: dict[int, str] | None = None
) -> FastAPI:
    """The shop's checkout service in an idiomatic FastAPI route, with none of the library.

    With ``sessions`` (the key of a web-session row, by account), the route also appends the
    order id to the customer's row in the order's transaction: the one write the library adds
    to keep the session with the data, without its cookie check, cache, compare-and-set or
    hooks."""
    app = FastAPI()
    app.state.writer = writer

    @app.post("/api/orders", status_code=201)
    async def place_order(body: OrderIn, db: DB) -> OrderOut:
        assert isinstance(body.payment, AccountPayment)  # the benchmark pays from accounts
        account = body.payment.account_id  # the user is the account's: no web session here
        lines = [orders.Line(item.product_id, item.quantity) for item in body.items]
        order = await orders.checkout_with_account(
            db, user_id=users[account], lines=lines, account_id=account
        )
        if sessions is not None:
            await session_row.append_order_id(db, sessions[account], order.id)
        return OrderOut.model_validate(order)

    return app


async def sqlite_checkout_layers(database_url: str) -> list[tuple[str, float]]:
    """Account checkouts a second on one SQLite file, each way, ``CUSTOMERS`` at once."""
    shop, popular = shop_and_popular(database_url)

    async with LifespanManager(shop):
        transport = httpx.ASGITransport(app=shop)
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as admin:
            login = await admin.post("/api/session", json=ADMIN)
            headers = {"X-CSRF-Token": login.json()["csrf_token"]}
            products = []
            for n in range(8):
                made = await admin.post(
                    "/api/products",
                    json={"sku": f"layers-{n}", "name": f"Layers {n}", "price": 1, "stock": 10**9},
                    headers=headers,
                )
                products.append(int(made.json()["id"]))
        customers = []
        for n in range(CUSTOMERS):
            credentials = {"email": f"layers-{n}@example.com", "password": "layers-password"}
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                created = (
                    await client.post("/api/users", json={"name": "L", **credentials})
                ).json()
                token = (await client.post("/api/session", json=credentials)).json()["csrf_token"]
                account = int(created["accounts"][0]["id"])
                deposit = {"amount": 10**8, "card_number": "4242424242424242"}
                deposited = await client.post(
                    f"/api/accounts/{account}/deposits",
                    json=deposit,
                    headers={"X-CSRF-Token": token},
                )
                deposited.raise_for_status()
                cookie = f"shop_session={client.cookies['shop_session']}"
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=popular), base_url="http://b"
            ) as baseline:
                await baseline.post("/api/session", json={"email": credentials["email"]})
                popular_cookie = f"session={baseline.cookies['session']}"
            customers.append(Customer(int(created["id"]), account, cookie, token, popular_cookie))

        writer = writer_engine(shop.state.engine)
        users = {customer.account_id: customer.user_id for customer in customers}
        route = fastapi_route(writer, users)
        # A row of its own for each customer: the shop's goes on with the shop's checkouts.
        async with writer.begin() as connection:
            sessions = {
                customer.account_id: await session_row.create(
                    connection, customer.user_id, "L", f"layers-{customer.user_id}@example.com"
                )
                for customer in customers
            }
        route_with_session = fastapi_route(writer, users, sessions)

        async def service(customer: Customer, product: int) -> int:
            async with AsyncSession(writer, expire_on_commit=False) as db, db.begin():
                await db.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                await orders.checkout_with_account(
                    db,
                    user_id=customer.user_id,
                    lines=[orders.Line(product, 1)],
                    account_id=customer.account_id,
                )
            return 201

        async def in_route(customer: Customer, product: int) -> int:
            return await post(route, "/api/orders", [], checkout_body(customer, product))

        async def in_route_with_session(customer: Customer, product: int) -> int:
            body = checkout_body(customer, product)
            return await post(route_with_session, "/api/orders", [], body)

        async def the_shop(customer: Customer, product: int) -> int:
            headers = [
                (b"cookie", customer.cookie.encode()),
                (b"x-csrf-token", customer.csrf_token.encode()),
            ]
            return await post(shop, "/api/orders", headers, checkout_body(customer, product))

        async def the_recipe(customer: Customer, product: int) -> int:
            headers = [(b"cookie", customer.popular_cookie.encode())]
            return await post(popular, "/api/orders", headers, checkout_body(customer, product))

        ways: dict[str, Callable[[Customer, int], Awaitable[int]]] = {
            "the popular recipe (T12's baseline)": the_recipe,
            "the shop's checkout service on a plain AsyncSession": service,
            "the same in a FastAPI route (models, a yield dependency)": in_route,
            "the same route, appending to its web-session row in the order's transaction": (
                in_route_with_session
            ),
            "the shop's POST /api/orders": the_shop,
        }

        async def rate(way: Callable[[Customer, int], Awaitable[int]], seconds: float) -> float:
            until = time.perf_counter() + seconds

            # As the benchmark's load is sent (bench/lua/rotate.lua in each of wrk's two
            # threads): each thread's connections take the next customer of one counter per
            # thread, so requests of one session overlap, as they do over HTTP.
            turns = [0, 0]

            async def connection(thread: int) -> int:
                done = 0
                while time.perf_counter() < until:
                    turns[thread] += 1
                    customer = customers[turns[thread] % len(customers)]
                    status = await way(customer, products[done % len(products)])
                    assert status == 201, status
                    done += 1
                return done

            started = time.perf_counter()
            done = await asyncio.gather(*(connection(n % 2) for n in range(len(customers))))
            return sum(done) / (time.perf_counter() - started)

        for way in ways.values():
            await rate(way, min(1.0, SECONDS))
        gc.collect()
        gc.freeze()
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(ROUNDS):
            for name, way in ways.items():
                rates[name].append(await rate(way, SECONDS))
        return [(name, statistics.median(values)) for name, values in rates.items()]


def main() -> None:
    global ROUNDS, REQUESTS, CUSTOMERS, SECONDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="requests a round")
    parser.add_argument(
        "--customers", type=int, default=CUSTOMERS, help="checkouts at once (the third table)"
    )
    parser.add_argument("--seconds", type=float, default=SECONDS, help="seconds a checkout round")
    arguments = parser.parse_args()
    ROUNDS, REQUESTS = arguments.rounds, arguments.requests
    CUSTOMERS, SECONDS = arguments.customers, arguments.seconds
    # The folder goes at the end too, with the databases, as in bench.run.
    with tempfile.TemporaryDirectory(prefix="bench-layers-") as folder:
        databases = Databases(Path(folder))
        try:
            url = databases.postgres()
            reads = asyncio.run(session_read_layers(url))
            statements = asyncio.run(statement_costs(databases.postgres()))
            checkouts = asyncio.run(sqlite_checkout_layers(databases.sqlite()))
        finally:
            databases.drop()
    print("| an authenticated session read, in-process | µs a request |")
    print("| --- | ---: |")
    for name, micros in reads:
        print(f"| {name} | {micros:.0f} |")
    print()
    print("| one UPDATE in a transaction | CPU µs a statement |")
    print("| --- | ---: |")
    for name, micros in statements:
        print(f"| {name} | {micros:.0f} |")
    print()
    print(f"| an account checkout on SQLite, {CUSTOMERS} at once, in-process | req/s | x recipe |")
    print("| --- | ---: | ---: |")
    recipe = checkouts[0][1]
    for name, per_second in checkouts:
        print(f"| {name} | {per_second:.0f} | {per_second / recipe:.2f} |")


if __name__ == "__main__":
    main()
