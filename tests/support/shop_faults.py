"""Concurrent shop traffic under injected faults, and the checks that it left nothing half-done.

A fault test builds a :class:`ShopWorld` (customers with money, products with stock), runs
:func:`run_load` while its fault plays out, then asks:

- :func:`response_problems`: was every answer the documented success or failure, or a JSON
  503 with ``Retry-After`` (never a 500, a body that is not JSON, or no answer at all)?
- :func:`state_problems`: does the database add up? Money: balances plus what accounts paid
  for orders equal the card deposits that succeeded. Stock: what is left plus what paid (or
  still reserved) orders hold equals what there was. Every 2xx names data that is there, and
  every order id a session remembers is a paid order of its user.
- :func:`settle_and_check`: after ``shop payments reconcile`` (run as a function, with the
  in-process fake gateway), nothing is pending and every card charge is one settled payment of
  a paid order or a succeeded deposit, and the other way round.
- :func:`recovered`: once the fault is lifted, new requests succeed without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from fault_proxy import FaultProxy
from shop_testing import ADMIN, OK_CARD, Shopper, add_product
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.types import ASGIApp, Receive, Scope, Send

from fastapi_atomic.idempotency import IdempotencyKey
from shop.api.deps import get_gateway
from shop.payments import FakeGateway
from shop.reconcile import reconcile

#: what each kind of request may answer besides a 503 (docs/http-api.md)
DOCUMENTED: dict[str, frozenset[int]] = {
    "transfer": frozenset({201, 409}),  # 409: insufficient funds
    "account_order": frozenset({201, 402, 409}),  # 402: account short; 409: stock short
    "card_order": frozenset({201}),  # the card always charges
    "deposit": frozenset({201}),
    "session": frozenset({200}),
    "orders": frozenset({200}),
    "accounts": frozenset({200}),
    "products": frozenset({200}),
    "logout": frozenset({204}),
    "login": frozenset({200}),
    # a cookie whose log-out was answered 204: dead from then on, wherever it is sent
    "dead_session": frozenset({401}),
}
#: the session cookie's name (SHOP_COOKIE_HOST_PREFIX unset)
COOKIE = "shop_session"
#: the kinds :func:`run_load` mixes, with their weights
MIX: dict[str, int] = {
    "transfer": 4,
    "account_order": 3,
    "card_order": 2,
    "deposit": 1,
    "session": 1,
    "orders": 1,
}
NOTHING_CHANGED = "The request could not be saved; nothing was changed. Try again."


@dataclass
class Outcome:
    """One request and what came back (``status`` None: no answer at all)."""

    kind: str
    shopper: Shopper | None
    status: int | None
    body: Any = None
    content_type: str = ""
    retry_after: str | None = None
    error: str | None = None
    key: str | None = None
    sent: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def detail(self) -> str | None:
        return self.body.get("detail") if isinstance(self.body, dict) else None


class ErrorRecorder:
    """Wraps the app to keep each exception that escaped it (httpx's in-process transport
    turns it into a bare 500), so a failing scenario can say what went wrong where."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.errors: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            ours = [
                f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
                for frame in traceback.extract_tb(exc.__traceback__)
                if "/src/" in frame.filename and "site-packages" not in frame.filename
            ]
            message = str(exc).splitlines()[0] if str(exc) else ""
            where = " <- ".join(reversed(ours[-4:]))
            self.errors.append(f"{type(exc).__name__}: {message} at {where}")
            raise

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self, raise_app_exceptions=False)
        return httpx.AsyncClient(transport=transport, base_url="http://shop.test")

    async def log_in(self, email: str, password: str) -> tuple[httpx.AsyncClient, str]:
        browser = self.client()
        response = await browser.post("/api/session", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return browser, str(response.json()["csrf_token"])


@dataclass
class ShopWorld:
    """What a fault test made in its own database: customers with money, products."""

    app: ErrorRecorder
    gateway: FakeGateway
    admin: Shopper
    shoppers: list[Shopper]
    #: product id -> (price, stock at the start)
    products: dict[int, tuple[int, int]]
    rng: random.Random = field(default_factory=lambda: random.Random(20261202))
    #: numbers transfers and deposits, so each request's rows can be told from any other's
    sequence: Iterator[int] = field(default_factory=itertools.count)
    #: customers who only log in and out (e-mail, password), so the others stay logged in
    churners: list[tuple[str, str]] = field(default_factory=list)
    #: customers the random load never picks: each places orders one at a time, so a fault
    #: can be aimed at a request of theirs that nothing else races with
    solo: list[Shopper] = field(default_factory=list)
    #: session cookies whose log-out was answered 204
    dead_cookies: list[str] = field(default_factory=list)

    async def aclose(self) -> None:
        for shopper in [self.admin, *self.shoppers, *self.solo]:
            await shopper.client.aclose()


async def build_world(
    app: FastAPI,
    *,
    shoppers: int = 5,
    money: int = 20_000,
    stock: int = 5_000,
    churners: int = 0,
    solo: int = 0,
) -> ShopWorld:
    """Customers who deposited ``money`` each by card (``shoppers`` for the random load,
    ``solo`` more on their own), three products, and ``churners`` who will only log in and
    out: all before any fault."""
    gateway = FakeGateway()
    app.dependency_overrides[get_gateway] = lambda: gateway
    recorder = ErrorRecorder(app)
    browser, csrf = await recorder.log_in(*ADMIN)
    me = (await browser.get("/api/session")).json()["user"]
    admin = Shopper(browser, me["id"], 0, ADMIN[0], ADMIN[1], csrf)
    tag = uuid.uuid4().hex[:6]
    products = {}
    for number, price in enumerate((150, 275, 990)):
        product_id = await add_product(admin, f"fault-{tag}-{number}", price=price, stock=stock)
        products[product_id] = (price, stock)
    customers = []
    for number in range(shoppers + solo):
        email, password = f"fault-{tag}-{number}@example.com", "a good password"
        async with recorder.client() as anonymous:
            created = await anonymous.post(
                "/api/users",
                json={"name": f"Customer {number}", "email": email, "password": password},
            )
        assert created.status_code == 201, created.text
        client, token = await recorder.log_in(email, password)
        body = created.json()
        shopper = Shopper(client, body["id"], body["accounts"][0]["id"], email, password, token)
        response = await shopper.post(
            f"/api/accounts/{shopper.account_id}/deposits",
            {"amount": money, "card_number": OK_CARD},
        )
        assert response.status_code == 201, response.text
        customers.append(shopper)
    world = ShopWorld(recorder, gateway, admin, customers[:shoppers], products)
    world.solo = customers[shoppers:]
    for number in range(churners):
        email, password = f"fault-{tag}-churn{number}@example.com", "a good password"
        async with recorder.client() as anonymous:
            created = await anonymous.post(
                "/api/users", json={"name": "Churner", "email": email, "password": password}
            )
        assert created.status_code == 201, created.text
        world.churners.append((email, password))
    return world


# --- sending requests ----------------------------------------------------------------------


async def send(
    kind: str,
    shopper: Shopper | None,
    request: Callable[[], Awaitable[httpx.Response]],
    *,
    key: str | None = None,
    sent: dict[str, Any] | None = None,
    answer_within: float = 60.0,
) -> Outcome:
    """Send one request; whatever happens (no answer included) becomes an :class:`Outcome`."""
    started = time.monotonic()
    outcome = Outcome(kind, shopper, None, key=key, sent=sent or {})
    try:
        async with asyncio.timeout(answer_within):
            response = await request()
    except TimeoutError:
        outcome.error = f"no answer within {answer_within} s"
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    else:
        outcome.status = response.status_code
        outcome.content_type = response.headers.get("content-type", "")
        outcome.retry_after = response.headers.get("retry-after")
        if response.content:
            try:
                outcome.body = response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                outcome.body = response.text[:200]
                outcome.error = "not JSON"
    outcome.seconds = time.monotonic() - started
    return outcome


def random_request(
    world: ShopWorld, kind: str, by: Shopper | None = None
) -> Callable[[], Awaitable[Outcome]]:
    """A request of ``kind`` by ``by`` or a random customer, half of the unsafe ones with a
    key (an order or a request that reads; a transfer is always between random customers)."""
    rng = world.rng
    shopper = by or rng.choice(world.shoppers)
    key = f"fault-{uuid.uuid4().hex}" if rng.random() < 0.5 else None
    headers = {"Idempotency-Key": key} if key else {}
    product_ids = list(world.products)

    def items() -> list[dict[str, int]]:
        chosen = rng.sample(product_ids, rng.randint(1, 2))
        return [{"product_id": p, "quantity": rng.randint(1, 3)} for p in sorted(chosen)]

    body: dict[str, Any]
    if kind == "transfer":
        # (sender, receiver, amount) names one request: a row found twice ran twice
        number = next(world.sequence)
        everyone = len(world.shoppers)
        pairs = everyone * (everyone - 1)
        shopper = world.shoppers[number % everyone]
        others = [s for s in world.shoppers if s is not shopper]
        receiver = others[(number // everyone) % len(others)]
        body = {
            "from_account_id": shopper.account_id,
            "to_account_id": receiver.account_id,
            "amount": 1 + number // pairs,
        }
        path = "/api/transfers"
    elif kind == "account_order":
        body = {
            "items": items(),
            "payment": {"method": "account", "account_id": shopper.account_id},
        }
        path = "/api/orders"
    elif kind == "card_order":
        body = {"items": items(), "payment": {"method": "card", "card_number": OK_CARD}}
        path = "/api/orders"
    elif kind == "deposit":
        # a deposit's amount names its request (the first deposits are larger than any)
        body = {"amount": 100 + next(world.sequence), "card_number": OK_CARD}
        path = f"/api/accounts/{shopper.account_id}/deposits"
    else:
        path = {"session": "/api/session", "orders": "/api/orders", "accounts": "/api/accounts"}[
            kind
        ]
        return lambda: send(kind, shopper, lambda: shopper.client.get(path))
    return lambda: send(
        kind,
        shopper,
        lambda: shopper.post(path, body, **headers),
        key=key,
        sent=body,
    )


async def dead_check(app: ErrorRecorder, cookie: str) -> Outcome:
    """The session behind a logged-out ``cookie``, asked for by a browser of its own."""
    browser = app.client()
    async with browser:
        return await send(
            "dead_session",
            None,
            lambda: browser.get("/api/session", headers={"Cookie": f"{COOKIE}={cookie}"}),
        )


async def churn_once(world: ShopWorld, email: str, password: str) -> list[Outcome]:
    """Log in, read the session, log out; once a log-out was answered 204, its cookie must
    never again be a live session."""
    browser = world.app.client()
    async with browser:
        credentials = {"email": email, "password": password}
        login = await send("login", None, lambda: browser.post("/api/session", json=credentials))
        if login.status != 200 or not isinstance(login.body, dict):
            return [login]
        cookie = browser.cookies.get(COOKIE)
        assert cookie is not None, "logged in without a session cookie"
        token = {"X-CSRF-Token": str(login.body["csrf_token"])}
        read = await send("session", None, lambda: browser.get("/api/session"))
        logout = await send("logout", None, lambda: browser.delete("/api/session", headers=token))
    outcomes = [login, read, logout]
    if logout.status == 204:
        world.dead_cookies.append(cookie)
        outcomes.append(await dead_check(world.app, cookie))
    return outcomes


async def run_load(
    world: ShopWorld,
    fault: Callable[[], Awaitable[None]],
    *,
    concurrency: int = 30,
    mix: dict[str, int] | None = None,
    fault_within: float = 60.0,
) -> list[Outcome]:
    """``concurrency`` customers send requests back to back while ``fault()`` runs its course,
    each solo customer places orders one at a time, and each churner logs in and out; each
    stops after what it is sending when ``fault()`` returns. Every cookie logged out before is
    asked for again on the way."""
    weights = mix or MIX
    kinds, counts = list(weights), list(weights.values())
    done = asyncio.Event()
    outcomes: list[Outcome] = []

    async def customer() -> None:
        while not done.is_set():
            kind = world.rng.choices(kinds, counts)[0]
            outcome = await random_request(world, kind)()
            outcomes.append(outcome)

    async def alone(shopper: Shopper) -> None:
        orders = [kind for kind in kinds if kind.endswith("order")]
        order_weights = [weights[kind] for kind in orders]
        while not done.is_set():
            kind = world.rng.choices(orders, order_weights)[0]
            outcomes.append(await random_request(world, kind, by=shopper)())

    async def churner(email: str, password: str) -> None:
        while not done.is_set():
            outcomes.extend(await churn_once(world, email, password))
            if world.dead_cookies:
                cookie = world.rng.choice(world.dead_cookies)
                outcomes.append(await dead_check(world.app, cookie))

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(customer())
        for email, password in world.churners:
            group.create_task(churner(email, password))
        for shopper in world.solo:
            group.create_task(alone(shopper))
        try:
            async with asyncio.timeout(fault_within):
                await fault()
        finally:
            done.set()
    return outcomes


# --- what came back ------------------------------------------------------------------------


def response_problems(outcomes: Sequence[Outcome]) -> list[str]:
    """Every answer that is neither documented nor a JSON 503 with Retry-After: 1."""
    problems = []
    for outcome in outcomes:
        what = f"{outcome.kind} -> {outcome.status}"
        if outcome.status is None:
            problems.append(f"{what}: no answer ({outcome.error})")
        elif outcome.error is not None:
            problems.append(f"{what}: {outcome.error}: {outcome.body!r}")
        elif outcome.status == 503:
            if outcome.retry_after != "1":
                problems.append(f"{what} without Retry-After: 1: {outcome.body!r}")
            if not isinstance(outcome.detail, str) or "json" not in outcome.content_type:
                problems.append(f"{what} without a JSON detail: {outcome.body!r}")
        elif outcome.status not in DOCUMENTED[outcome.kind]:
            problems.append(f"{what}: {outcome.body!r}")
        elif outcome.body is not None and "json" not in outcome.content_type:
            problems.append(f"{what}: content-type {outcome.content_type!r}")
    return problems


def summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Statuses by kind, and the 503 details: for the report a fault test prints."""
    statuses: Counter[str] = Counter(f"{o.kind} {o.status}" for o in outcomes)
    details: Counter[str] = Counter(
        f"{o.status} {o.detail}" for o in outcomes if o.status not in (200, 201, 204)
    )
    slowest = sorted(outcomes, key=lambda o: o.seconds, reverse=True)[:3]
    return {
        "requests": len(outcomes),
        "statuses": dict(sorted(statuses.items())),
        "failures": dict(details.most_common()),
        "slowest": [f"{o.kind} {o.status} {o.seconds:.2f}s" for o in slowest],
    }


def report(
    name: str,
    proxy_faults: Counter[str],
    outcomes: Sequence[Outcome],
    errors: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> None:
    """One line per scenario on stdout (``pytest -s`` shows it): what was injected, and seen,
    and the exceptions that escaped the app (behind each 500)."""
    seen = {"faults": dict(proxy_faults), **summary(outcomes)}
    if errors:
        seen["exceptions"] = dict(Counter(errors).most_common())
    if notes:
        seen["notes"] = list(notes)
    print(f"\nFAULT-SCENARIO {name}: " + json.dumps(seen, sort_keys=True))


def through(url: str, proxy: FaultProxy) -> str:
    """A database or Redis ``url`` with its host and port replaced by the proxy's."""
    return make_url(url).set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)


# --- what the database holds ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def direct_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's own database that does not go through the proxy."""
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _rows(engine: AsyncEngine, query: str, **parameters: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(query), parameters)).all())


async def state_problems(
    engine: AsyncEngine, world: ShopWorld, outcomes: Sequence[Outcome], *, settled: bool
) -> list[str]:
    """What does not add up in the database; ``settled``: reconcile ran, nothing may pend."""
    problems: list[str] = []
    (balances, deposited, spent) = (
        await _rows(
            engine,
            """SELECT (SELECT coalesce(sum(balance), 0) FROM accounts),
                      (SELECT coalesce(sum(amount), 0) FROM deposits WHERE status = 'succeeded'),
                      (SELECT coalesce(sum(total), 0) FROM orders
                        WHERE status = 'paid' AND payment_method = 'account')""",
        )
    )[0]
    if balances + spent != deposited:
        problems.append(
            f"money: balances {balances} + paid from accounts {spent} != deposited {deposited}"
        )
    negative = await _rows(engine, "SELECT id, balance FROM accounts WHERE balance < 0")
    if negative:
        problems.append(f"negative balances: {negative}")

    held = "('paid')" if settled else "('paid', 'pending')"
    stocks = {row[0]: row[1] for row in await _rows(engine, "SELECT id, stock FROM products")}
    taken = {
        row[0]: row[1]
        for row in await _rows(
            engine,
            f"""SELECT i.product_id, sum(i.quantity) FROM order_items i
                  JOIN orders o ON o.id = i.order_id
                 WHERE o.status IN {held} GROUP BY i.product_id""",
        )
    }
    for product_id, (_, initial) in world.products.items():
        left, sold = stocks[product_id], taken.get(product_id, 0)
        if left + sold != initial:
            problems.append(f"stock of {product_id}: {left} left + {sold} held != {initial}")

    pending_kinds = await _rows(
        engine,
        """SELECT 'order ' || id || ' paid by ' || payment_method FROM orders
            WHERE status = 'pending' AND (payment_method <> 'card' OR NOT EXISTS (
                  SELECT 1 FROM payments WHERE order_id = orders.id AND status = 'pending'))
           UNION ALL
           SELECT 'deposit ' || id FROM deposits WHERE status = 'pending' AND NOT EXISTS (
                  SELECT 1 FROM payments WHERE deposit_id = deposits.id AND status = 'pending')""",
    )
    if pending_kinds:
        problems.append(f"pending without a pending card payment: {pending_kinds}")
    if settled:
        pending = await _rows(
            engine,
            """SELECT 'payment ' || gateway_key FROM payments WHERE status = 'pending'
               UNION ALL SELECT 'order ' || id FROM orders WHERE status = 'pending'
               UNION ALL SELECT 'deposit ' || id FROM deposits WHERE status = 'pending'""",
        )
        if pending:
            problems.append(f"still pending after reconcile: {pending}")

    problems += await _answers_problems(engine, outcomes)
    problems += await _once_problems(engine, outcomes)
    problems += await _sessions_problems(engine, world, outcomes)
    return problems


async def _answers_problems(engine: AsyncEngine, outcomes: Sequence[Outcome]) -> list[str]:
    """No 2xx for data that is not there, and no "nothing was changed" for a change."""
    problems = []
    transfers = {
        row[0]: tuple(row[1:])
        for row in await _rows(
            engine, "SELECT id, from_account_id, to_account_id, amount FROM transfers"
        )
    }
    orders = {
        row[0]: tuple(row[1:])
        for row in await _rows(engine, "SELECT id, user_id, status, total FROM orders")
    }
    deposits = {
        row[0]: tuple(row[1:])
        for row in await _rows(engine, "SELECT id, account_id, status, amount FROM deposits")
    }
    payment_keys = {
        row[0]: row[1] for row in await _rows(engine, "SELECT gateway_key, status FROM payments")
    }
    for outcome in outcomes:
        if outcome.status == 201 and isinstance(outcome.body, dict):
            found: tuple[Any, ...] | None
            body, sent = outcome.body, outcome.sent
            if outcome.kind == "transfer":
                found = transfers.get(body["id"])
                expected: tuple[Any, ...] = (
                    sent["from_account_id"],
                    sent["to_account_id"],
                    sent["amount"],
                )
            elif outcome.kind in ("account_order", "card_order"):
                assert outcome.shopper is not None
                found = orders.get(body["id"])
                expected = (outcome.shopper.user_id, "paid", body["total"])
            else:
                assert outcome.shopper is not None
                found = deposits.get(body["id"])
                expected = (outcome.shopper.account_id, "succeeded", sent["amount"])
            if found != expected:
                problems.append(f"{outcome.kind} 201 {body} but the database holds {found}")
        if (
            outcome.status == 503
            and outcome.detail == NOTHING_CHANGED
            and outcome.key
            and outcome.kind in ("card_order", "deposit")
            and outcome.shopper is not None
        ):
            purpose = "order" if outcome.kind == "card_order" else "deposit"
            claimed = IdempotencyKey(str(outcome.shopper.user_id), outcome.key, "")
            gateway_key = claimed.external_key(purpose)
            if gateway_key in payment_keys:
                problems.append(
                    f"{outcome.kind} 503 {NOTHING_CHANGED!r}, but its payment "
                    f"{gateway_key} is {payment_keys[gateway_key]}"
                )
    return problems


async def _once_problems(engine: AsyncEngine, outcomes: Sequence[Outcome]) -> list[str]:
    """Each request's writes are there once or not at all: never twice (a request re-run after
    its COMMIT went through), never for a failure that changed nothing."""
    problems = []
    transfers: Counter[tuple[int, int, int]] = Counter(
        (row[0], row[1], row[2])
        for row in await _rows(
            engine, "SELECT from_account_id, to_account_id, amount FROM transfers"
        )
    )
    deposits: Counter[tuple[int, int]] = Counter(
        (row[0], row[1])
        for row in await _rows(
            engine, "SELECT account_id, amount FROM deposits WHERE status <> 'failed'"
        )
    )
    for outcome in outcomes:
        sent = outcome.sent
        if outcome.kind == "transfer":
            found = transfers[(sent["from_account_id"], sent["to_account_id"], sent["amount"])]
        elif outcome.kind == "deposit":
            assert outcome.shopper is not None
            found = deposits[(outcome.shopper.account_id, sent["amount"])]
        else:
            continue
        unchanged = outcome.status in (402, 409) or outcome.detail == NOTHING_CHANGED
        if found > 1 or (outcome.status == 201 and found != 1) or (unchanged and found):
            problems.append(
                f"{outcome.kind} {sent} answered {outcome.status} {outcome.detail or ''} "
                f"is in the database {found} times (key {outcome.key})"
            )
    # orders carry nothing of their request: count them per customer and payment method
    paid: Counter[tuple[int, str]] = Counter(
        (row[0], row[1])
        for row in await _rows(
            engine, "SELECT user_id, payment_method FROM orders WHERE status = 'paid'"
        )
    )
    answered: dict[tuple[int, str], Counter[str]] = {}
    for outcome in outcomes:
        if outcome.kind in ("account_order", "card_order") and outcome.shopper is not None:
            method = "account" if outcome.kind == "account_order" else "card"
            seen = answered.setdefault((outcome.shopper.user_id, method), Counter())
            seen["ok" if outcome.status == 201 else "maybe" if outcome.status == 503 else "no"] += 1
    for (user_id, method), seen in answered.items():
        count = paid[(user_id, method)]
        if not seen["ok"] <= count <= seen["ok"] + seen["maybe"]:
            problems.append(
                f"user {user_id}: {count} paid {method} orders for {seen['ok']} answered 201 "
                f"and {seen['maybe']} answered 503"
            )
    return problems


async def _sessions_problems(
    engine: AsyncEngine, world: ShopWorld, outcomes: Sequence[Outcome]
) -> list[str]:
    """Every order id a session remembers is a paid order of its user; every 201 order is
    remembered by the session that placed it."""
    problems = []
    paid = {
        row[0]: row[1]
        for row in await _rows(engine, "SELECT id, user_id FROM orders WHERE status = 'paid'")
    }
    for shopper in [*world.shoppers, *world.solo]:
        response = await shopper.get("/api/session")
        if response.status_code != 200:
            problems.append(f"session of {shopper.email}: {response.status_code} {response.text}")
            continue
        remembered = response.json()["order_ids"]
        for order_id in remembered:
            if paid.get(order_id) != shopper.user_id:
                problems.append(f"session of {shopper.email} lists order {order_id}, not paid")
        placed = {
            o.body["id"]
            for o in outcomes
            if o.shopper is shopper and o.kind.endswith("order") and o.status == 201
        }
        if placed - set(remembered):
            problems.append(f"session of {shopper.email} forgot orders {placed - set(remembered)}")
    return problems


async def settle_and_check(
    engine: AsyncEngine, world: ShopWorld, outcomes: Sequence[Outcome], notes: list[str]
) -> list[str]:
    """Run reconcile (as `shop payments reconcile --min-age 0` would, with the in-process
    gateway), then: nothing pending, and charges and settled payments match one to one.

    A payment its request charged but could not save is settled in the background: given a few
    seconds first. A request that stopped without ending its charge lease leaves its payment to
    reconcile only once the lease ran out: the lease is run out here (the test's own rows), and
    what was still leased is returned in ``notes``."""
    charged = [key for key, _ in world.gateway.charges]
    deadline = time.monotonic() + 5
    query = "SELECT 1 FROM payments WHERE status = 'pending' AND gateway_key = ANY(:charged)"
    while await _rows(engine, query, charged=charged):
        if time.monotonic() > deadline:
            break  # reconcile settles them below; the background settle did not
        await asyncio.sleep(0.1)
    leased = await _rows(
        engine,
        "SELECT gateway_key FROM payments WHERE status = 'pending' AND charging_until > now()",
    )
    if leased:
        notes.append(f"{len(leased)} payments pending with a running lease after every answer")
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE payments SET charging_until = now() WHERE status = 'pending'")
            )
    await reconcile(engine, world.gateway, min_age_seconds=0)
    problems = await state_problems(engine, world, outcomes, settled=True)
    amounts: dict[str, int] = {}
    for key, amount in world.gateway.charges:
        if key in amounts:
            problems.append(f"gateway charged {key} twice")
        amounts[key] = amount
    settled = {
        row[0]: tuple(row[1:])
        for row in await _rows(
            engine,
            """SELECT p.gateway_key, p.amount, coalesce(o.status, d.status) FROM payments p
                 LEFT JOIN orders o ON o.id = p.order_id
                 LEFT JOIN deposits d ON d.id = p.deposit_id
                WHERE p.status = 'succeeded'""",
        )
    }
    for key, amount in amounts.items():
        if settled.get(key, (None,))[0] != amount:
            problems.append(f"charge {key} of {amount} has payment {settled.get(key)}")
    for key, (amount, purchase) in settled.items():
        if key not in amounts:
            problems.append(f"payment {key} of {amount} succeeded without a charge")
        if purchase not in ("paid", "succeeded"):
            problems.append(f"payment {key} succeeded but its purchase is {purchase}")
    return problems


# --- after the fault -------------------------------------------------------------------------


async def recovered(world: ShopWorld, *, within: float = 15.0, rounds: int = 2) -> list[Outcome]:
    """Once one probe passes (within ``within`` seconds), ``rounds`` of every kind of request
    must all succeed: the service recovered on its own; and every cookie logged out is dead.
    Returns what they answered."""
    deadline = time.monotonic() + within
    shopper = world.shoppers[0]
    while True:
        probe = await send("accounts", shopper, lambda: shopper.get("/api/accounts"))
        if probe.status == 200:
            break
        if time.monotonic() > deadline:
            return [probe]
        await asyncio.sleep(0.2)
    outcomes = []
    for _ in range(rounds):
        for kind in ("transfer", "account_order", "card_order", "deposit", "session", "orders"):
            outcomes.append(await random_request(world, kind)())
        for email, password in world.churners:
            outcomes += await churn_once(world, email, password)
    for cookie in world.dead_cookies:
        outcomes.append(await dead_check(world.app, cookie))
    return outcomes


def recovery_problems(outcomes: Sequence[Outcome]) -> list[str]:
    """After recovery only the documented answers: no 503 any more."""
    return [
        f"after the fault: {o.kind} -> {o.status} {o.body!r} {o.error or ''}"
        for o in outcomes
        if o.status is None or o.status not in DOCUMENTED[o.kind]
    ]
