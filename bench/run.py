"""The benchmark: every scenario against its baselines, measured in the same run.

    python -m bench.run                  # full run (10 s per scenario), writes bench/results/
    python -m bench.run --quick --out D  # 1 s each, few connections: checks the harness works
    python -m bench.run --only "shop transfer on postgres" --duration 3
                                         # the rows whose name has this text, the baselines of
                                         # their targets, and the floor

Each server runs as its own process (uvicorn, one worker, no access log) on this machine; the
load comes from wrk (or, where wrk is missing, a small Python client, said so in the report).
Scenarios that write check their invariants afterwards.

The targets (:data:`TARGETS`) compare a shop row with a baseline row of the same run, at 64
connections: each write with its bare statements on raw asyncpg (``baselines/bare.py``) and,
where it has one, the popular recipe's; the session reads with Starlette's cookie sessions. On
SQLite, the embedded default: the transfer and account checkout with the popular recipe on the
same SQLite file (and an absolute p99 bound), the session read with the floor. The SQLite
ceiling rows (the transfer and account checkout as their bare statements on sqlite3,
``baselines/bare_sqlite.py``) are references, judged by no target: what the machine allows those
statements on one file. So are the FastAPI routes of the judged SQLite rows with none of the
library (``baselines/idiom.py``, ``baselines/idiom_writes.py``): how near its target the idiom
itself lets each come on this machine. The floor (the stack answering a constant) is measured
first and last and every throughput is also shown as a share of it, for reference.

The revocation windows close the run: two shop processes on one database (PostgreSQL with its
SQL or Redis store, one SQLite file), a logout on one, the other asked until it answers 401.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
LUA = HERE / "lua"
PYTHON = sys.executable
#: the servers to make throw-away databases (and key prefixes) on: BENCH_*, else the tests' own
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL") or os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL") or os.environ.get(
    "TEST_REDIS_URL", "redis://127.0.0.1:6379/0"
)
SECRET = "bench-secret-key-" + "b" * 40
#: the shop as `shop serve` runs it: built from the SHOP_* environment, then frozen out of the
#: garbage collector (gc.freeze(), which moved there from the app's start-up in ededa7a)
SHOP_APP = "shop.cli:serving_app"
ADMIN = {"email": "bench-admin@example.com", "password": "bench-admin-password"}


# --- infrastructure ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 1):
            return True
    except OSError:
        return False


def run_sql(url: str, statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def go() -> None:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(go())


def query(url: str, statement: str) -> list[tuple[Any, ...]]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def go() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return [tuple(row) for row in await connection.execute(text(statement))]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def snapshot(url: str, statements: list[str]) -> list[list[tuple[Any, ...]]]:
    """Several queries over one consistent snapshot (REPEATABLE READ): requests still in flight
    when the load stops commit meanwhile, and must not be counted by one query and not another."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def go() -> list[list[tuple[Any, ...]]]:
        sqlite = url.startswith("sqlite")
        engine = create_async_engine(
            url, **({} if sqlite else {"isolation_level": "REPEATABLE READ"})
        )
        try:
            async with engine.connect() as connection:
                if sqlite:  # a read transaction in WAL mode is a snapshot from its first read
                    await connection.exec_driver_sql("BEGIN")
                return [
                    [tuple(row) for row in await connection.execute(text(statement))]
                    for statement in statements
                ]
        finally:
            await engine.dispose()

    return asyncio.run(go())


@dataclass
class Databases:
    """Throw-away databases for this run, dropped at the end."""

    workdir: Path
    created: list[str] = field(default_factory=list)
    postgres_template: str | None = None

    def postgres(self) -> str:
        """A fresh, migrated database: a copy of one migrated once per run (CREATE ... TEMPLATE
        takes a fraction of a second, the migrations over a second)."""
        from sqlalchemy.engine import make_url

        base = make_url(POSTGRES_URL)
        admin = base.set(database="postgres").render_as_string(False)
        if self.postgres_template is None:
            template = f"bench_{uuid.uuid4().hex[:10]}_template"
            run_sql(admin, f'CREATE DATABASE "{template}"')
            self.created.append(template)
            migrate(base.set(database=template).render_as_string(False))
            self.postgres_template = template
        name = f"bench_{uuid.uuid4().hex[:10]}"
        run_sql(admin, f'CREATE DATABASE "{name}" TEMPLATE "{self.postgres_template}"')
        self.created.append(name)
        return base.set(database=name).render_as_string(False)

    def sqlite(self) -> str:
        template = self.workdir / "bench-template.db"
        if not template.exists():
            migrate(f"sqlite+aiosqlite:///{template}")
        path = self.workdir / f"bench-{uuid.uuid4().hex[:8]}.db"
        shutil.copyfile(template, path)
        return f"sqlite+aiosqlite:///{path}"

    def drop(self) -> None:
        from sqlalchemy.engine import make_url

        admin = make_url(POSTGRES_URL).set(database="postgres").render_as_string(False)
        for name in self.created:
            run_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str) -> None:
    from shop.db.migrate import upgrade_sync

    upgrade_sync(url)


#: the SIGTERM received, if one was: kept, so that one whose SystemExit Python lost still stops
#: the run at the next :func:`stop_if_terminated`
_sigterm: int | None = None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    global _sigterm
    _sigterm = signum
    raise SystemExit(128 + signum)


def stop_if_terminated() -> None:
    if _sigterm is not None:
        raise SystemExit(128 + _sigterm)


def start_process(args: list[str], **options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen``; then, if a SIGTERM came meanwhile, the child is killed and the run
    unwinds. With a ``preexec_fn`` the fork runs Python's at-fork hooks; a SIGTERM that lands
    there has its handler run inside one, and the SystemExit it raises is lost ("Exception
    ignored in ... _releaseLock")."""
    process = subprocess.Popen(args, **options)
    if _sigterm is not None:
        process.kill()
        process.wait()
        stop_if_terminated()
    return process


def _die_with_parent() -> None:
    """In the server's process, before it runs: the kernel ends it when the benchmark's process
    ends, however that ends (a SIGKILL too), so no server outlives its run."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Server:
    def __init__(self, target: str, env: dict[str, str], factory: bool, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [PYTHON, "-m", "uvicorn", target, "--port", str(self.port), "--workers", "1"]
        args += ["--no-access-log", "--log-level", "warning"] + (["--factory"] if factory else [])
        self.log = workdir / f"server-{self.port}.log"
        with self.log.open("wb") as log:
            self.process = start_process(
                args,
                env={**os.environ, "PYTHONPATH": str(HERE.parent), **env},
                cwd=workdir,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server died: {self.log.read_text()[-1500:]}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- load ---------------------------------------------------------------------------------


@dataclass
class Load:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    #: "{n}" becomes a unique counter; with sessions, "{account}" and "{product}" rotate too
    body: str | None = None
    #: many logged-in customers (cookie, CSRF token, account id), one per request in turn
    sessions: list[tuple[str, str, int, str]] = field(default_factory=list)
    products: list[int] = field(default_factory=list)


def measure(url: str, load: Load, connections: int, duration: float) -> dict[str, Any]:
    if load.body:  # unique per measurement, so a warm-up and the run never collide
        load = replace(load, body=load.body.replace("{n}", f"{uuid.uuid4().hex[:6]}-{{n}}"))
    generator = os.environ.get("BENCH_LOAD_GENERATOR") or ("wrk" if shutil.which("wrk") else "")
    if generator == "wrk":
        return _wrk(url, load, connections, duration)
    return asyncio.run(_python_load(url, load, connections, duration))


def _wrk(url: str, load: Load, connections: int, duration: float) -> dict[str, Any]:
    env = {**os.environ, "BENCH_LUA_DIR": str(LUA), "BENCH_BODY": load.body or ""}
    if load.sessions:
        script = LUA / "rotate.lua"
        sessions_file = Path(tempfile.mkstemp(suffix=".tsv")[1])
        sessions_file.write_text("".join("\t".join(map(str, row)) + "\n" for row in load.sessions))
        env.update(
            BENCH_SESSIONS_FILE=str(sessions_file),
            BENCH_PRODUCTS=",".join(map(str, load.products)),
            BENCH_METHOD=load.method,
        )
    else:
        script = LUA / ("post_json.lua" if load.method == "POST" else "get.lua")
    args = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
    ]
    args += ["--timeout", "10s", "-s", str(script)]
    for name, value in load.headers.items():
        args += ["-H", f"{name}: {value}"]
    output = subprocess.run(
        [*args, url + load.path], env=env, capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH_JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    result["tool"] = "wrk"
    return result


async def _python_load(url: str, load: Load, connections: int, duration: float) -> dict[str, Any]:
    """What wrk does (the lua scripts), where wrk is missing: one client a connection, each
    request as the next logged-in customer (cookie, CSRF token, account, product) in turn."""
    latencies: list[float] = []
    errors = non_2xx = 0
    counter = 0
    deadline = time.monotonic() + duration

    def next_request() -> tuple[dict[str, str], str | None]:
        nonlocal counter
        counter += 1
        headers = {**load.headers, "content-type": "application/json"}
        body = load.body.replace("{n}", str(counter)) if load.body else None
        if load.sessions:
            cookie, csrf, account, email = load.sessions[counter % len(load.sessions)]
            other = load.sessions[(counter + 1) % len(load.sessions)]
            headers.update({"cookie": cookie, "x-csrf-token": csrf})
            product = load.products[counter % len(load.products)] if load.products else 0
            if body is not None:
                body = (
                    body.replace("{account}", str(account))
                    .replace("{product}", str(product))
                    .replace("{other}", str(other[2]))
                    .replace("{email}", email)
                )
        return headers, body

    async def worker() -> None:
        nonlocal errors, non_2xx
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
            while time.monotonic() < deadline:
                headers, body = next_request()
                started = time.monotonic()
                try:
                    response = await client.request(
                        load.method, load.path, content=body, headers=headers
                    )
                except httpx.HTTPError:
                    errors += 1
                    continue
                client.cookies.clear()  # the next request is another customer's
                latencies.append(time.monotonic() - started)
                non_2xx += not 200 <= response.status_code < 400

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else 0
        )

    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "socket_errors": errors,
        "non_2xx": non_2xx,
        "tool": "python" if shutil.which("wrk") else "python (wrk not installed)",
    }


# --- scenarios ----------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    app: str  # "floor", "shop", "popular", "starsessions", "bare", "idiom", "idiom_writes"
    load: Callable[[str, str, int], Load]  # server URL, database URL, customers: what to send
    database: str | None = None  # "postgres" | "sqlite"
    store: str | None = None
    needs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    #: measured at each of these connection counts (the issue's 1, 16, 64 for the key paths)
    connection_counts: tuple[int, ...] = (64,)
    #: seconds measured by --quick: longer for rows whose requests take most of a second
    quick_duration: float = 1.0
    invariants: Callable[[str], list[str]] | None = None
    health: str = "/healthz"
    #: a database the shop's row of this write fills and the other rows of the write (the
    #: popular recipe's, the idiom's) then reuse (its customers, accounts and products):
    #: "transfer" or "account checkout"
    shares: str | None = None


def shop_customers(url: str, count: int, *, money: bool) -> list[tuple[str, str, int, str]]:
    """Sign up and log in ``count`` customers (with money, if asked): cookie, CSRF, account."""
    customers = []
    prefix = uuid.uuid4().hex[:6]
    for n in range(count):
        email, password = f"bench-{prefix}-{n}@example.com", "bench-password"
        with httpx.Client(base_url=url, timeout=30) as client:
            created = client.post(
                "/api/users", json={"name": f"Bench {n}", "email": email, "password": password}
            )
            created.raise_for_status()
            account_id = int(created.json()["accounts"][0]["id"])
            login = client.post("/api/session", json={"email": email, "password": password})
            login.raise_for_status()
            cookie = f"shop_session={client.cookies['shop_session']}"
            csrf = login.json()["csrf_token"]
            for _ in range(2 if money else 0):
                client.post(
                    f"/api/accounts/{account_id}/deposits",
                    json={"amount": 100_000_000, "card_number": "4242424242424242"},
                    headers={"X-CSRF-Token": csrf},
                ).raise_for_status()
        customers.append((cookie, csrf, account_id, email))
    return customers


def baseline_cookie(url: str, name: str, email: str = "nobody@example.com") -> str:
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/api/session", json={"email": email})
        response.raise_for_status()
        return f"{name}={client.cookies[name]}"


def session_read(url: str, database_url: str, users: int) -> Load:
    return Load("GET", "/api/session", sessions=shop_customers(url, users, money=False))


BENCH_PRODUCTS = 8
BENCH_STOCK = 100_000_000


def bench_products(url: str) -> list[int]:
    with httpx.Client(base_url=url, timeout=30) as admin:
        token = admin.post("/api/session", json=ADMIN).json()["csrf_token"]
        ids = []
        for n in range(BENCH_PRODUCTS):
            product = admin.post(
                "/api/products",
                json={
                    "sku": f"bench-{n}",
                    "name": f"Bench {n}",
                    "price": 100,
                    "stock": BENCH_STOCK,
                },
                headers={"X-CSRF-Token": token},
            )
            product.raise_for_status()
            ids.append(int(product.json()["id"]))
    return ids


def checkout_load(payment: str) -> Callable[[str, str, int], Load]:
    def make(url: str, database_url: str, users: int) -> Load:
        products = bench_products(url)
        customers = shop_customers(url, users, money=payment == "account")
        pay = (
            '{"method": "account", "account_id": {account}}'
            if payment == "account"
            else '{"method": "card", "card_number": "4242424242424242"}'
        )
        body = '{"items": [{"product_id": {product}, "quantity": 1}], "payment": ' + pay + "}"
        return Load("POST", "/api/orders", body=body, sessions=customers, products=products)

    return make


STOCK_SQL = (
    "SELECT (SELECT SUM(stock) FROM products WHERE sku LIKE 'bench-%'), "
    "COALESCE((SELECT SUM(i.quantity) FROM order_items i JOIN orders o "
    "ON o.id = i.order_id WHERE o.status IN ('paid', 'pending')), 0)"
)
MONEY_SQL = (
    "SELECT COALESCE(SUM(a.balance), 0), (SELECT COALESCE(SUM(total), 0) FROM orders "
    "WHERE status = 'paid' AND payment_method = 'account'), (SELECT COALESCE(SUM(amount), 0) "
    "FROM deposits WHERE status = 'succeeded'), (SELECT COUNT(*) FROM accounts "
    "WHERE balance < 0) FROM accounts a"
)
CHARGES_SQL = (
    "SELECT COUNT(*) FROM orders o WHERE o.status = 'paid' AND o.payment_method = 'card' "
    "AND (SELECT COUNT(*) FROM payments p WHERE p.order_id = o.id "
    "AND p.status = 'succeeded') <> 1"
)
PAID_SQL = "SELECT COUNT(*) FROM orders WHERE status = 'paid'"
SESSIONS_SQL = "SELECT record FROM web_sessions"


def money_problems(stock_row: tuple[Any, ...], money_row: tuple[Any, ...]) -> list[str]:
    problems: list[str] = []
    stock, sold = stock_row
    initial = BENCH_PRODUCTS * BENCH_STOCK
    if stock is not None and stock + sold != initial:
        problems.append(f"stock {stock} + sold {sold} != {initial} (lost updates)")
    balance, spent, deposited, negative = money_row
    if balance + spent != deposited:  # (PostgreSQL's SUM is a Decimal: shown as an integer)
        problems.append(
            f"balances {int(balance)} + spent {int(spent)} != deposited {int(deposited)}"
        )
    if negative:
        problems.append(f"{negative} negative balances")
    return problems


def money_invariants(database_url: str) -> list[str]:
    """Stock and money add up: nothing sold that was not paid, nothing paid twice."""
    stock, money = snapshot(database_url, [STOCK_SQL, MONEY_SQL])
    return money_problems(stock[0], money[0])


def shop_invariants(database_url: str) -> list[str]:
    """The money checks, plus one charge per paid card order and every order in its session."""
    stock, money, charges, paid, sessions = snapshot(
        database_url, [STOCK_SQL, MONEY_SQL, CHARGES_SQL, PAID_SQL, SESSIONS_SQL]
    )
    problems = money_problems(stock[0], money[0])
    if charges[0][0]:
        problems.append(f"{charges[0][0]} paid card orders without exactly one charge")
    in_sessions = sum(
        len(json.loads(record)["data"].get("order_ids", [])) for (record,) in sessions
    )
    if in_sessions != paid[0][0]:
        problems.append(f"{paid[0][0]} paid orders but {in_sessions} order ids in web sessions")
    return problems


def transfer_load(url: str, database_url: str, users: int) -> Load:
    customers = shop_customers(url, max(users, 2), money=True)
    body = '{"from_account_id": {account}, "to_account_id": {other}, "amount": 1}'
    return Load("POST", "/api/transfers", body=body, sessions=customers)


# --- the rows the targets name ---------------------------------------------------------------

FLOOR = "floor: constant JSON"
FLOOR_AGAIN = "floor: constant JSON, measured again at the end"
SESSION_READ_SQL = "shop session read, sql store on postgres"
SESSION_READ_SQLITE = "shop session read, sql store on sqlite"
SESSION_READ_REDIS = "shop session read, redis store on postgres"
POPULAR_SESSION_READ = "popular: Starlette cookie session read"
SHOP_TRANSFER = "shop transfer on postgres"
SHOP_ACCOUNT_CHECKOUT = "shop account checkout on postgres"
SHOP_CARD_CHECKOUT = "shop card checkout (gateway 50 ms) on postgres"
POPULAR_ACCOUNT_CHECKOUT = "popular: account checkout on postgres"
POPULAR_TRANSFER = "popular: transfer on postgres"
SHOP_TRANSFER_SQLITE = "shop transfer on sqlite"
SHOP_ACCOUNT_CHECKOUT_SQLITE = "shop account checkout on sqlite"
POPULAR_TRANSFER_SQLITE = "popular: transfer on sqlite"
POPULAR_ACCOUNT_CHECKOUT_SQLITE = "popular: account checkout on sqlite"
CEILING_TRANSFER = "ceiling: transfer, its bare statements on raw asyncpg, on postgres"
CEILING_ACCOUNT_CHECKOUT = (
    "ceiling: account checkout, its bare statements on raw asyncpg, on postgres"
)
CEILING_CARD_CHECKOUT = (
    "ceiling: card checkout (gateway 50 ms), its bare statements on raw asyncpg, on postgres"
)
CEILING_TRANSFER_SQLITE = "ceiling: transfer, its bare statements on sqlite3, on sqlite"
CEILING_ACCOUNT_CHECKOUT_SQLITE = (
    "ceiling: account checkout, its bare statements on sqlite3, on sqlite"
)
#: the session read's shape in FastAPI with nothing behind it (baselines/idiom.py): how near
#: the floor the idiom itself lets a session read come (a reference, judged by nothing)
IDIOM_SESSION_READ = "ceiling: the session read's FastAPI route, nothing behind it"
#: the SQLite writes' services in idiomatic FastAPI routes, none of the library's request
#: handling (baselines/idiom_writes.py): how near 2 x the popular recipe the idiom itself lets
#: a write come (references, judged by nothing)
IDIOM_TRANSFER_SQLITE = "ceiling: the transfer's FastAPI route, none of the library, on sqlite"
IDIOM_ACCOUNT_CHECKOUT_SQLITE = (
    "ceiling: the account checkout's FastAPI route, none of the library, on sqlite"
)
#: the same route keeping its session in a web-session row, appended to in the order's
#: transaction (``BENCH_SESSION_ROW``): the least keeping the session with the data costs
IDIOM_ACCOUNT_CHECKOUT_SESSION_ROW_SQLITE = (
    "ceiling: the account checkout's FastAPI route and its web-session row, none of the rest "
    "of the library, on sqlite"
)
#: the reference rows of each judged row, run beside it by --only
REFERENCES = {
    SESSION_READ_SQLITE: (IDIOM_SESSION_READ,),
    SHOP_TRANSFER_SQLITE: (IDIOM_TRANSFER_SQLITE,),
    SHOP_ACCOUNT_CHECKOUT_SQLITE: (
        IDIOM_ACCOUNT_CHECKOUT_SQLITE,
        IDIOM_ACCOUNT_CHECKOUT_SESSION_ROW_SQLITE,
    ),
}
#: the ceiling rows, each write's bare statements: on raw asyncpg (baselines/bare.py), the
#: baselines of the PostgreSQL targets; on sqlite3 (baselines/bare_sqlite.py), references
#: (the SQLite targets compare with the popular recipe)
CEILINGS_POSTGRES = (CEILING_TRANSFER, CEILING_ACCOUNT_CHECKOUT, CEILING_CARD_CHECKOUT)
CEILINGS_SQLITE = (CEILING_TRANSFER_SQLITE, CEILING_ACCOUNT_CHECKOUT_SQLITE)
CEILINGS = CEILINGS_POSTGRES + CEILINGS_SQLITE
#: the connection count the targets are judged at
JUDGED_AT = 64


@dataclass(frozen=True)
class Target:
    """``scenario``'s ``metric`` against ``factor`` x the same metric of ``baseline``, measured in
    the same run at the same connection count: at least that much throughput (``rps``), or at
    most that much latency (``p99_ms``).

    Without a baseline, ``factor`` is the bound itself, in the metric's unit (the SQLite writes'
    p99 <= 300 ms): the one kind of target that does not move with the machine.
    """

    scenario: str
    metric: str  # "rps" | "p99_ms"
    factor: float
    baseline: str | None = None

    @property
    def at_least(self) -> bool:
        return self.metric == "rps"

    @property
    def label(self) -> str:
        """E.g. "req/s >= 0.75 x baseline", "p99 <= 1.3 x baseline", "p99 <= 300 ms"."""
        what, sign = ("req/s", ">=") if self.at_least else ("p99", "<=")
        if self.baseline is None:
            return f"{what} {sign} {self.factor:g}{'' if self.at_least else ' ms'}"
        return f"{what} {sign} {'' if self.factor == 1 else f'{self.factor:g} x '}baseline"

    def threshold(self, baseline: float | None) -> float:
        """The value the row must reach (at least) or stay under (at most)."""
        return self.factor if self.baseline is None else self.factor * (baseline or 0.0)

    def judge(self, value: float, baseline: float | None) -> tuple[float | None, bool]:
        """The ratio measured (value / baseline; None without a baseline) and whether the
        target is met."""
        if self.baseline is None:
            return None, (value >= self.factor if self.at_least else value <= self.factor)
        ratio = value / baseline if baseline else float("inf")
        return ratio, (ratio >= self.factor if self.at_least else ratio <= self.factor)


TARGETS: tuple[Target, ...] = (
    # Each write against its bare statements on raw asyncpg: 3/4 of their throughput, and a p99
    # at most 30% above theirs; and at least the popular recipe's throughput where it has the
    # write (the account checkout).
    Target(SHOP_TRANSFER, "rps", 0.75, CEILING_TRANSFER),
    Target(SHOP_TRANSFER, "p99_ms", 1.3, CEILING_TRANSFER),
    Target(SHOP_ACCOUNT_CHECKOUT, "rps", 0.75, CEILING_ACCOUNT_CHECKOUT),
    Target(SHOP_ACCOUNT_CHECKOUT, "p99_ms", 1.3, CEILING_ACCOUNT_CHECKOUT),
    Target(SHOP_ACCOUNT_CHECKOUT, "rps", 1.0, POPULAR_ACCOUNT_CHECKOUT),
    Target(SHOP_CARD_CHECKOUT, "rps", 0.75, CEILING_CARD_CHECKOUT),
    Target(SHOP_CARD_CHECKOUT, "p99_ms", 1.3, CEILING_CARD_CHECKOUT),
    # The authenticated session read: at least Starlette's signed-cookie sessions, which read
    # no store at all.
    Target(SESSION_READ_SQL, "rps", 1.0, POPULAR_SESSION_READ),
    Target(SESSION_READ_REDIS, "rps", 1.0, POPULAR_SESSION_READ),
    # The embedded default, SQLite: each write at least twice the popular recipe's throughput
    # on the same engine (sqlite3, sync, in the thread pool), with a p99 of at most 300 ms;
    # the session read at least 60% of the floor (the higher of its two measurements).
    Target(SHOP_TRANSFER_SQLITE, "rps", 2.0, POPULAR_TRANSFER_SQLITE),
    Target(SHOP_TRANSFER_SQLITE, "p99_ms", 300.0),
    Target(SHOP_ACCOUNT_CHECKOUT_SQLITE, "rps", 2.0, POPULAR_ACCOUNT_CHECKOUT_SQLITE),
    Target(SHOP_ACCOUNT_CHECKOUT_SQLITE, "p99_ms", 300.0),
    Target(SESSION_READ_SQLITE, "rps", 0.6, FLOOR),
)


def scenarios() -> list[Scenario]:
    def hello(url: str, database_url: str, users: int) -> Load:
        return Load("GET", "/hello")

    judged = {target.scenario for target in TARGETS} | {target.baseline for target in TARGETS}
    #: the rows a target judges or compares with, at 1 and 16 connections too (to see the curve)
    curve = (1, 16, JUDGED_AT)
    list_ = [Scenario(FLOOR, "floor", hello, health="/hello", connection_counts=curve)]
    list_.append(
        Scenario(
            "shop GET /healthz", "shop", lambda url, db, users: Load("GET", "/healthz"), "sqlite"
        )
    )
    for store, database, needs in (
        ("sql", "postgres", ("postgres",)),
        ("sql", "sqlite", ()),
        ("redis", "postgres", ("postgres", "redis")),
        ("memory", "sqlite", ()),
    ):
        name = f"shop session read, {store} store on {database}"
        list_.append(
            Scenario(
                name,
                "shop",
                session_read,
                database,
                store,
                needs,
                connection_counts=curve if name in judged else (JUDGED_AT,),
            )
        )
    list_.append(
        Scenario(
            IDIOM_SESSION_READ,
            "idiom",
            lambda url, db, users: Load("GET", "/api/session"),
            connection_counts=curve,
        )
    )
    list_.append(
        Scenario(
            POPULAR_SESSION_READ,
            "popular",
            lambda url, db, users: Load(
                "GET", "/api/session", {"Cookie": baseline_cookie(url, "session")}
            ),
            "postgres",
            needs=("postgres",),
            health="/docs",
        )
    )
    list_.append(
        Scenario(
            "starsessions on Redis session read",
            "starsessions",
            lambda url, db, users: Load(
                "GET", "/api/session", {"Cookie": baseline_cookie(url, "session")}
            ),
            needs=("redis",),
            health="/docs",
        )
    )
    list_.append(
        Scenario(
            "shop sign-up (argon2id) on postgres",
            "shop",
            lambda url, db, users: Load(
                "POST",
                "/api/users",
                body='{"name":"x","email":"u{n}@bench.io","password":"password1"}',
            ),
            "postgres",
            "sql",
            ("postgres",),
            connection_counts=(8,),
            quick_duration=3.0,  # argon2id: a request takes most of a second on two cores
        )
    )
    list_.append(
        Scenario(
            "shop login (argon2id) on postgres",
            "shop",
            lambda url, db, users: Load(
                "POST",
                "/api/session",
                body='{"email": "{email}", "password": "bench-password"}',
                sessions=shop_customers(url, users, money=False),
            ),
            "postgres",
            "sql",
            ("postgres",),
            connection_counts=(8,),
            quick_duration=3.0,  # argon2id: a request takes most of a second on two cores
        )
    )
    # (the last item: the write whose database a popular row reuses, see Scenario.shares)
    for name, load, env, shares in (
        (SHOP_TRANSFER, transfer_load, {}, "transfer"),
        (SHOP_ACCOUNT_CHECKOUT, checkout_load("account"), {}, "account checkout"),
        (
            SHOP_CARD_CHECKOUT,
            checkout_load("card"),
            {"SHOP_FAKE_GATEWAY_LATENCY_MS": "50"},
            None,
        ),
    ):
        list_.append(
            Scenario(
                name,
                "shop",
                load,
                "postgres",
                "sql",
                ("postgres",),
                env=env,
                connection_counts=curve,
                invariants=shop_invariants,
                shares=shares,
            )
        )
    for name, load, env, shares in (
        (SHOP_TRANSFER_SQLITE, transfer_load, {}, "transfer"),
        (SHOP_ACCOUNT_CHECKOUT_SQLITE, checkout_load("account"), {}, "account checkout"),
        (
            "shop card checkout (gateway 50 ms) on sqlite",
            checkout_load("card"),
            {"SHOP_FAKE_GATEWAY_LATENCY_MS": "50"},
            None,
        ),
    ):
        list_.append(
            Scenario(
                name,
                "shop",
                load,
                "sqlite",
                "sql",
                env=env,
                invariants=shop_invariants,
                shares=shares,
            )
        )
    # The SQLite writes by the idiom's routes, logged in as the popular recipe's customers are,
    # on the database the shop's row made: before the popular recipe's row, which breaks its
    # invariants.
    for name, load, shares, env in (
        (IDIOM_TRANSFER_SQLITE, popular_transfer, "transfer", {}),
        (IDIOM_ACCOUNT_CHECKOUT_SQLITE, popular_checkout, "account checkout", {}),
        (
            IDIOM_ACCOUNT_CHECKOUT_SESSION_ROW_SQLITE,
            popular_checkout,
            "account checkout",
            {"BENCH_SESSION_ROW": "1"},
        ),
    ):
        list_.append(
            Scenario(
                name,
                "idiom_writes",
                load,
                "sqlite",
                env=env,
                invariants=money_invariants,
                shares=shares,
            )
        )
    # The popular recipe's writes, each on the database the shop's row of the same write made
    # (its customers with money, its products), checked for the same money and stock.
    for name, load, database, needs, counts, shares in (
        (
            POPULAR_ACCOUNT_CHECKOUT,
            popular_checkout,
            "postgres",
            ("postgres",),
            curve,
            "account checkout",
        ),
        (POPULAR_TRANSFER, popular_transfer, "postgres", ("postgres",), (JUDGED_AT,), "transfer"),
        (POPULAR_TRANSFER_SQLITE, popular_transfer, "sqlite", (), (JUDGED_AT,), "transfer"),
        (
            POPULAR_ACCOUNT_CHECKOUT_SQLITE,
            popular_checkout,
            "sqlite",
            (),
            (JUDGED_AT,),
            "account checkout",
        ),
    ):
        list_.append(
            Scenario(
                name,
                "popular",
                load,
                database,
                needs=needs,
                connection_counts=counts,
                invariants=money_invariants,
                health="/docs",
                shares=shares,
            )
        )
    for kind, name in zip(("transfer", "account", "card"), CEILINGS_POSTGRES, strict=True):
        list_.append(
            Scenario(
                name,
                "bare",
                bare_load(kind),
                "postgres",
                needs=("postgres",),
                env={"BENCH_GATEWAY_LATENCY_MS": "50"},
                connection_counts=curve,
                invariants=shop_invariants,
                health="/docs",
            )
        )
    # On SQLite, with the load, connection counts and checks of the shop's SQLite rows: no
    # target judges them, they show what the machine allows these statements on one file.
    for kind, name in zip(("transfer", "account"), CEILINGS_SQLITE, strict=True):
        list_.append(
            Scenario(
                name,
                "bare",
                bare_load(kind),
                "sqlite",
                invariants=shop_invariants,
                health="/docs",
            )
        )
    return list_


#: the shop's bench customers with money, in the order they signed up
CUSTOMERS_SQL = (
    "SELECT u.email, a.id FROM users u JOIN accounts a ON a.user_id = u.id "
    "WHERE u.email LIKE 'bench-%' AND a.balance > 0 ORDER BY u.id"
)
PRODUCTS_SQL = "SELECT id FROM products WHERE sku LIKE 'bench-%'"


def popular_sessions(url: str, database_url: str, users: int) -> list[tuple[str, str, int, str]]:
    """The shop's bench customers, logged in to the popular app (its own cookie sessions)."""
    rows = query(database_url, CUSTOMERS_SQL)[:users]
    return [
        (baseline_cookie(url, "session", email), "-", account, email) for email, account in rows
    ]


def popular_checkout(url: str, database_url: str, users: int) -> Load:
    """The same checkout the popular way, by the customers and products the shop's run made."""
    products = [r[0] for r in query(database_url, PRODUCTS_SQL)]
    body = (
        '{"items": [{"product_id": {product}, "quantity": 1}], '
        '"payment": {"method": "account", "account_id": {account}}}'
    )
    sessions = popular_sessions(url, database_url, users)
    return Load("POST", "/api/orders", body=body, sessions=sessions, products=products)


def popular_transfer(url: str, database_url: str, users: int) -> Load:
    """The same transfer the popular way (each customer to the next), by the shop's customers."""
    sessions = popular_sessions(url, database_url, max(users, 2))
    body = '{"from_account_id": {account}, "to_account_id": {other}, "amount": 1}'
    return Load("POST", "/api/transfers", body=body, sessions=sessions)


def bare_load(kind: str) -> Callable[[str, str, int], Load]:
    """The shop's transfer or checkout load, its customers (and products) made by a shop server
    on the same database (the bare app has no sign-up or log-in of its own)."""

    def make(url: str, database_url: str, users: int) -> Load:
        with tempfile.TemporaryDirectory(prefix="bench-bare-") as workdir:
            shop = Server(SHOP_APP, shop_env(database_url, "sql", {}), True, Path(workdir))
            try:
                shop.wait("/healthz")
                make_load = transfer_load if kind == "transfer" else checkout_load(kind)
                return make_load(shop.url, database_url, users)
            finally:
                shop.stop()

    return make


# --- the run ----------------------------------------------------------------------------


def shop_env(database_url: str, store: str | None, extra: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SHOP_")}
    env.update(
        SHOP_DATABASE_URL=database_url,
        SHOP_SESSION_STORE=store or "sql",
        SHOP_REDIS_URL=REDIS_URL,
        SHOP_REDIS_PREFIX=f"bench:{uuid.uuid4().hex[:8]}:",
        SHOP_SECRET_KEYS=SECRET,
        SHOP_COOKIE_SECURE="false",
        SHOP_ADMIN_EMAIL=ADMIN["email"],
        SHOP_ADMIN_PASSWORD=ADMIN["password"],
        SHOP_DB_POOL_SIZE="20",
        **extra,
    )
    return env


def run_scenario(
    scenario: Scenario,
    databases: Databases,
    duration: float,
    counts: tuple[int, ...],
    workdir: Path,
    shared: dict[str, str],
) -> list[dict[str, Any]]:
    """Measure one row at each connection count, on its own server (and database, unless it
    reuses the one ``shared`` names for its write: see :attr:`Scenario.shares`)."""
    database_url = ""
    fresh = databases.postgres if scenario.database == "postgres" else databases.sqlite
    #: the database this write's shop row made, for the write's other rows to reuse
    share = f"{scenario.shares} on {scenario.database}" if scenario.shares else None
    if scenario.database is not None:
        if share and scenario.app != "shop":
            database_url = shared.get(share) or shared.setdefault(share, fresh())
        else:
            database_url = fresh()
    if scenario.app == "shop":
        env = shop_env(database_url, scenario.store, scenario.env)
        server = Server(SHOP_APP, env, True, workdir)
    elif scenario.app == "popular":
        env = {"BENCH_DATABASE_URL": database_url, "BENCH_SECRET": SECRET}
        server = Server("bench.baselines.popular:app", env, False, workdir)
    elif scenario.app == "bare":
        env = {"BENCH_DATABASE_URL": database_url, **scenario.env}
        bare = "bare_sqlite" if scenario.database == "sqlite" else "bare"
        server = Server(f"bench.baselines.{bare}:app", env, False, workdir)
    elif scenario.app == "idiom":
        server = Server("bench.baselines.idiom:app", {}, False, workdir)
    elif scenario.app == "idiom_writes":
        env = {"BENCH_DATABASE_URL": database_url, "BENCH_SECRET": SECRET, **scenario.env}
        server = Server("bench.baselines.idiom_writes:app", env, False, workdir)
    elif scenario.app == "starsessions":
        env = {"BENCH_REDIS_URL": REDIS_URL}
        server = Server("bench.baselines.starsessions_app:app", env, False, workdir)
    else:
        server = Server("bench.baselines.floor:app", {}, False, workdir)
    results = []
    try:
        server.wait(scenario.health)
        users = min(64, max(counts))
        if share and scenario.app != "shop":
            prepare_shared(database_url, workdir, users, transfer=scenario.shares == "transfer")
        load = scenario.load(server.url, database_url, users)
        if share and scenario.app == "shop":
            shared.setdefault(share, database_url)
        for connections in counts:
            # Warm up at the count measured: the pools fill and the caches settle first.
            measure(server.url, load, connections, min(2.0, duration / 5))
            result = measure(server.url, load, connections, duration)
            violations = scenario.invariants(database_url) if scenario.invariants else []
            results.append({**result, "connections": connections, "violations": violations})
    finally:
        server.stop()
    return results


def prepare_shared(database_url: str, workdir: Path, users: int, *, transfer: bool) -> None:
    """The popular recipe's and the idiom's rows need the shop's bench data (customers with
    money; products for a checkout): on a database the shop's row did not make (``--only``
    without it), a shop server makes it."""
    ready = len(query(database_url, CUSTOMERS_SQL)) >= (2 if transfer else 1)
    if ready and not transfer:
        ready = bool(query(database_url, PRODUCTS_SQL))
    if not ready:
        shop = Server(SHOP_APP, shop_env(database_url, "sql", {}), True, workdir)
        try:
            shop.wait("/healthz")
            make_load = transfer_load if transfer else checkout_load("account")
            make_load(shop.url, database_url, users)
        finally:
            shop.stop()


# --- revocation window -----------------------------------------------------------------------


#: the revocation windows measured: store, database, what they need
REVOCATION_WINDOWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("sql", "postgres", ("postgres",)),
    ("redis", "postgres", ("postgres", "redis")),
    ("sql", "sqlite", ()),
)


class CacheProbe:
    """Whether a shop process with this environment keeps its web-session cache live (its
    store's change feed subscribed). With the cache off every read asks the store, and a
    revocation window is one read: what it says of a database with no feed.

    Asked in a process of its own, with the servers' environment and folder so that it sees
    exactly the settings they saw, started with them and read after the window (its imports
    take seconds); :meth:`answer` is None if it cannot tell."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.process = start_process(
            [PYTHON, "-c", "import bench.run as run; run.print_session_cache_live()"],
            env={**os.environ, "PYTHONPATH": str(HERE.parent), **env},
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )

    def answer(self) -> bool | None:
        try:
            out, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.stop()
            print("note  session cache state unknown: the probe took over 60 s", flush=True)
            return None
        said = out.strip().splitlines()[-1:] if self.process.returncode == 0 else []
        if said not in (["true"], ["false"]):  # a store whose feed changed shape, say
            print(f"note  session cache state unknown: {err[-500:]}", flush=True)
            return None
        return said == ["true"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def print_session_cache_live() -> None:
    """In the probe's process (see :class:`CacheProbe`): the shop's store, built from
    the SHOP_* environment and started as the app starts it, then asked if its cache is live."""
    from shop.app import build_engine, build_session_store
    from shop.settings import Settings

    async def live() -> bool:
        settings = Settings()
        store, engine = build_session_store(settings), build_engine(settings)
        try:
            await store.start(engine)
            return store.cache is not None and bool(store.cache.live)
        finally:
            await store.aclose()
            await engine.dispose()

    print(json.dumps(asyncio.run(live())))


def revocation_window(
    databases: Databases, workdir: Path, store: str, trials: int, database: str = "postgres"
) -> dict[str, Any]:
    """Log out through one process, then poll another that had the session cached.

    Two shop servers share the database (and Redis): on SQLite, one file, as two `shop serve`
    processes (or workers) on it would. Each trial logs in on A, reads the session on B twice
    (with the cache on, the second read is served from B's cache), logs out on A and, from the
    moment A's response arrives, asks B until B answers 401. The window is how long B still
    accepted the dead session: the delay of the NOTIFY or PUBLISH (or whatever feed the store
    has) that evicts it; with no feed, the cache is off and the window is B's first read.
    """
    database_url = databases.postgres() if database == "postgres" else databases.sqlite()
    env = shop_env(database_url, store, {})
    # B is not given the administrator to create: two start-ups creating it at once race for a
    # SQLite file's single write lock (`shop serve` creates it once, before its workers start).
    no_admin = {name: value for name, value in env.items() if not name.startswith("SHOP_ADMIN_")}
    servers: list[Server] = []
    probe: CacheProbe | None = None
    windows: list[float] = []
    stale_reads = 0
    try:  # started inside: a SIGTERM between two start-ups stops the first one too
        servers.append(Server(SHOP_APP, env, True, workdir))
        servers.append(Server(SHOP_APP, no_admin, True, workdir))
        probe = CacheProbe(env, workdir)
        for server in servers:
            server.wait("/healthz")
        a, b = (httpx.Client(base_url=server.url, timeout=10) for server in servers)
        credentials = {
            "email": f"revoke-{uuid.uuid4().hex[:6]}@example.com",
            "password": "pw-12345678",
        }
        a.post("/api/users", json={"name": "Revoke", **credentials}).raise_for_status()
        for _ in range(trials):
            login = a.post("/api/session", json=credentials)
            login.raise_for_status()
            cookie = {"Cookie": f"shop_session={a.cookies['shop_session']}"}
            for _ in range(2):
                b.get("/api/session", headers=cookie).raise_for_status()
            a.delete(
                "/api/session", headers={**cookie, "X-CSRF-Token": login.json()["csrf_token"]}
            ).raise_for_status()
            a.cookies.clear()
            logged_out = time.perf_counter()
            while b.get("/api/session", headers=cookie).status_code == 200:
                stale_reads += 1
                if time.perf_counter() - logged_out > 10:
                    raise RuntimeError("the other process kept a revoked session for 10 s")
            windows.append((time.perf_counter() - logged_out) * 1000)
        a.close()
        b.close()
        cache_live = probe.answer()
    finally:
        if probe is not None:
            probe.stop()
        for server in servers:
            server.stop()
    windows.sort()
    return {
        "store": store,
        "database": database,
        "cache_live": cache_live,
        "trials": trials,
        "stale_reads": stale_reads,
        "p50_ms": windows[len(windows) // 2],
        "max_ms": windows[-1],
    }


def available(needs: tuple[str, ...]) -> str | None:
    for need in needs:
        if need == "postgres" and not reachable("127.0.0.1", 5432):
            return "PostgreSQL not reachable on 127.0.0.1:5432"
        if need == "redis" and not reachable("127.0.0.1", 6379):
            return "Redis not reachable on 127.0.0.1:6379"
    return None


def selected(only: str) -> set[str]:
    """The scenarios ``--only`` runs: those whose name contains ``only``, and the baseline rows
    of the targets that judge them (a target compares rows of the same run)."""
    names = {scenario.name for scenario in scenarios() if only in scenario.name}
    baselines = {t.baseline for t in TARGETS if t.scenario in names and t.baseline is not None}
    # each judged row's reference: what FastAPI's shape of it allows, beside its baseline
    references = {ref for name in names for ref in REFERENCES.get(name, ())}
    return names | baselines | references


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 s per scenario (argon2id: 3 s), 4 connections"
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=None)
    parser.add_argument(
        "--only",
        help="run the scenarios whose name contains this text, the baselines their targets"
        " compare them with, and the floor",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    # A SIGTERM (a test's time-out, a CI job cancelled) unwinds like an exception: the servers
    # stop, the databases are dropped and the temporary folder goes, as after a normal run.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    duration = 1.0 if args.quick else args.duration
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    windows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        databases = Databases(workdir)
        shared: dict[str, str] = {}
        try:
            # The floor is measured first and again last; its share uses the higher of the two,
            # so a floor taken while the machine was disturbed cannot flatter every other figure.
            all_scenarios = scenarios()
            floor = next(s for s in all_scenarios if s.app == "floor")
            again = replace(floor, name=FLOOR_AGAIN)
            chosen = selected(args.only) if args.only else None
            # (--quick checks the harness, not the numbers: one floor is enough there.)
            for scenario in all_scenarios if args.quick else [*all_scenarios, again]:
                stop_if_terminated()
                if chosen is not None and scenario.app != "floor" and scenario.name not in chosen:
                    continue
                missing = available(scenario.needs)
                row: dict[str, Any] = {"scenario": scenario.name}
                if missing:
                    rows.append({**row, "skipped": missing})
                    print(f"skip  {scenario.name}: {missing}", flush=True)
                    continue
                if args.quick:
                    counts: tuple[int, ...] = (4,)
                elif args.connections:
                    counts = (args.connections,)
                else:
                    counts = scenario.connection_counts
                began = time.monotonic()
                seconds = max(duration, scenario.quick_duration) if args.quick else duration
                for result in run_scenario(scenario, databases, seconds, counts, workdir, shared):
                    rows.append({**row, **result})
                    print(
                        f"done  {scenario.name} @{result['connections']}: {result['rps']:.0f} req/s,"
                        f" p99 {result['p99_ms']:.1f} ms, non-2xx {result['non_2xx']},"
                        f" violations {len(result['violations'])}"
                        f" ({time.monotonic() - began:.1f} s with set-up)",
                        flush=True,
                    )
            for store, database, needs in REVOCATION_WINDOWS:
                name = f"revocation window, {store} store on {database}"
                if args.only and args.only not in name:
                    continue
                if available(needs) is None:
                    trials = 3 if args.quick else 50
                    window = revocation_window(databases, workdir, store, trials, database)
                    windows.append(window)
                    print(f"done  {name}: {window}", flush=True)
        finally:
            databases.drop()
    write_report(
        rows,
        args.out,
        quick=args.quick,
        argv=sys.argv[1:] if argv is None else argv,
        windows=windows,
    )
    return 0


def judge_targets(
    rows: Sequence[dict[str, Any]], targets: Sequence[Target] = TARGETS
) -> list[dict[str, Any]]:
    """Every target with its baseline row, the two measurements, their ratio and a verdict:
    "met", "not met", or "not judged" (with the reason: a row skipped or not measured).

    Judged at :data:`JUDGED_AT` connections, or, in a run that did not measure that count on
    both rows (``--quick``, ``--connections``), at the highest count both rows measured. The
    floor, as a baseline, is the higher of its two measurements (as in the % of floor column),
    so a floor taken while the machine was disturbed cannot flatter the row judged. A baseline
    that broke its invariants (the popular recipe loses updates) says so beside the verdict."""
    measured: dict[str, dict[int, dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    for row in rows:
        if "skipped" in row:
            skipped[row["scenario"]] = f"skipped ({row['skipped']})"
        elif "rps" in row:
            name = FLOOR if row["scenario"] == FLOOR_AGAIN else row["scenario"]
            held = measured.setdefault(name, {}).get(row["connections"])
            if held is None or row["rps"] > held["rps"]:
                measured[name][row["connections"]] = row
    judged = []
    for number, target in enumerate(targets, 1):
        result: dict[str, Any] = {
            "id": f"T{number}",
            "scenario": target.scenario,
            "baseline": target.baseline,
            "metric": target.metric,
            "factor": target.factor,
            "target": target.label,
            "connections": None,
            "value": None,
            "baseline_value": None,
            "threshold": None,
            "ratio": None,
            "verdict": "not judged",
            "reason": "",
            "baseline_row": None,
            "baseline_violations": [],
        }
        mine = measured.get(target.scenario, {})
        # An absolute bound has no baseline row: the row judged stands in for it.
        theirs = mine if target.baseline is None else measured.get(target.baseline, {})
        counts = set(mine) & set(theirs)
        if not counts:
            if not mine:
                why = skipped.get(target.scenario, "not in this run")
                result["reason"] = f"the row judged: {why}"
            elif not theirs:
                why = skipped.get(target.baseline or "", "not in this run")
                result["reason"] = f"the baseline: {why}"
            else:
                result["reason"] = "no connection count measured on both rows"
            judged.append(result)
            continue
        count = JUDGED_AT if JUDGED_AT in counts else max(counts)
        value = mine[count][target.metric]
        baseline = None if target.baseline is None else theirs[count][target.metric]
        result.update(connections=count, value=value, baseline_value=baseline)
        if target.baseline is not None:
            # the row measured (the floor's second measurement, where it is the higher)
            result["baseline_row"] = theirs[count]["scenario"]
            result["baseline_violations"] = list(theirs[count].get("violations", []))
        if baseline is not None and baseline <= 0:
            result["reason"] = f"the baseline measured {baseline}"
        else:
            ratio, met = target.judge(value, baseline)
            result.update(
                ratio=None if ratio is None else round(ratio, 3),
                threshold=target.threshold(baseline),
                verdict="met" if met else "not met",
            )
            if count != JUDGED_AT:
                result["reason"] = (
                    f"at {count} connections, not {JUDGED_AT}: no verdict on the target"
                )
        judged.append(result)
    return judged


def _measure(metric: str, value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f} req/s" if metric == "rps" else f"p99 {value:.1f} ms"


def write_report(
    rows: list[dict[str, Any]],
    out: Path,
    *,
    quick: bool,
    argv: list[str],
    windows: Sequence[dict[str, Any]] = (),
) -> None:
    floors: dict[int, float] = {}
    for r in rows:
        if r["scenario"].startswith("floor") and "rps" in r:
            floors[r["connections"]] = max(floors.get(r["connections"], 0.0), r["rps"])
    for row in rows:
        if "rps" in row:
            floor = floors.get(row["connections"]) or max(floors.values(), default=0.0)
            row["percent_of_floor"] = round(100 * row["rps"] / floor, 1) if floor else None
    targets = judge_targets(rows)
    #: (scenario, connections) -> what the targets say of that row
    notes: dict[tuple[str, int | None], list[str]] = {}
    for t in targets:
        verdict = "met" if t["verdict"] == "met" else f"**{t['verdict']}**"
        notes.setdefault((t["scenario"], t["connections"]), []).append(f"{t['id']} {verdict}")
        if t["baseline"] is not None:
            baseline = (t["baseline_row"] or t["baseline"], t["connections"])
            notes.setdefault(baseline, []).append(f"baseline of {t['id']}")
    lines = [
        "# Benchmark results",
        "",
        f"Run: {datetime.now(UTC).isoformat(timespec='seconds')} — `python -m bench.run {shlex.join(argv)}`"
        + (" (quick: harness check only, numbers mean nothing)" if quick else ""),
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()};"
        " servers, load generator, PostgreSQL and Redis share this machine.",
        "",
        "## Targets",
        "",
        f"Each target compares a shop row with a baseline row measured in the same run, at {JUDGED_AT}"
        " connections (a run that did not measure that count judges at the highest count both rows"
        " measured, and says so), except the bounds with no baseline row (p99 <= 300 ms on SQLite)."
        " Ratio: the shop's measurement divided by the baseline's. The floor as a baseline: the"
        " higher of its two measurements. A baseline whose invariants failed (lost updates) says so"
        " beside the verdict.",
        "",
        "| target | row judged | baseline row | conns | shop | baseline | ratio | target | verdict |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for t in targets:
        ratio = f"{t['ratio']:.2f}" if t["ratio"] is not None else ""
        verdict = "met" if t["verdict"] == "met" else f"**{t['verdict']}**"
        remarks = [t["reason"]] if t["reason"] else []
        if t["baseline_violations"]:
            remarks.append(
                f"the baseline's invariants failed: {'; '.join(t['baseline_violations'])}"
            )
        if remarks:
            verdict += f" ({'; '.join(remarks)})"
        baseline_row = t["baseline"] or "none: an absolute bound"
        lines.append(
            f"| {t['id']} | {t['scenario']} | {baseline_row} | {t['connections'] or ''} | "
            f"{_measure(t['metric'], t['value'])} | {_measure(t['metric'], t['baseline_value'])} | "
            f"{ratio} | {t['target']} | {verdict} |"
        )
    lines += [
        "",
        "## Every row",
        "",
        "% of floor: the share of the floor (the same stack answering a constant) at the same"
        " connection count, the higher of its two measurements (first and last); a reference, not"
        " a target.",
        "",
        "| scenario | conns | req/s | % of floor | p50 ms | p99 ms | non-2xx | errors | invariants | targets |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        if "skipped" in row:
            said = ", ".join(notes.get((row["scenario"], None), []))
            lines.append(
                f"| {row['scenario']} | | skipped: {row['skipped']} | | | | | | | {said} |"
            )
            continue
        share = row["percent_of_floor"]
        invariants = "ok" if not row["violations"] else "; ".join(row["violations"])
        said = ", ".join(notes.get((row["scenario"], row["connections"]), []))
        lines.append(
            f"| {row['scenario']} | {row['connections']} | {row['rps']:.0f} | "
            f"{'' if share is None else f'{share:.0f}%'} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['non_2xx']} | {row['socket_errors']} | "
            f"{invariants} | {said} |"
        )
    tools = {row.get("tool") for row in rows if "tool" in row}
    lines += [
        "",
        f"Load generator: {', '.join(sorted(t for t in tools if t))}. Invariants are checked on"
        " the scenario's database after each measurement and are cumulative: a row includes what"
        " the warm-ups (at the count measured, a fifth of the duration, at most 2 s) and the lower connection counts before it did.",
    ]
    if windows:
        lines += [
            "",
            "Revocation window: a logout answered by one shop process, then another process on"
            " the same database (on SQLite, the same file), which had read the session twice, is"
            " asked until it answers 401. Session cache: whether a shop process keeps its cache"
            " live there (its store's change feed subscribed); where it is off, every read asks"
            " the store and the window is one read.",
            "",
            "| store | database | session cache | trials | stale answers | p50 ms | max ms |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: |",
        ]
        cache = {True: "on", False: "off", None: "unknown"}
        lines += [
            f"| {w['store']} | {w['database']} | {cache[w['cache_live']]} | {w['trials']} |"
            f" {w['stale_reads']} | {w['p50_ms']:.1f} | {w['max_ms']:.1f} |"
            for w in windows
        ]
    (out / "latest.md").write_text("\n".join(lines) + "\n")
    clean = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
    report = {"scenarios": clean, "targets": targets, "revocation_windows": list(windows)}
    (out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    chart(clean, targets, out / "latest.png", quick=quick)


# --- the chart ---------------------------------------------------------------------------------

SHOP_COLOR, CEILING_COLOR, BASELINE_COLOR, FLOOR_COLOR = "#4c72b0", "#dd8452", "#999999", "#cccccc"
MET_COLOR, NOT_MET_COLOR, UNJUDGED_COLOR = "#2ca02c", "#d62728", "#7f7f7f"


def _panel_of(name: str) -> str:
    """Which panel draws a row: "reads", "writes" (on PostgreSQL), "sqlite writes" or "other"
    (argon2id sign-up and login: no target)."""
    if name.startswith("floor") or "session read" in name or "healthz" in name:
        return "reads"
    if "transfer" in name or "checkout" in name:
        return "sqlite writes" if name.endswith("on sqlite") else "writes"
    return "other"


def _bar_color(name: str) -> str:
    if name.startswith("shop"):
        return SHOP_COLOR
    if name.startswith("ceiling"):
        return CEILING_COLOR
    return FLOOR_COLOR if name.startswith("floor") else BASELINE_COLOR


def _verdict_color(target: dict[str, Any]) -> str:
    """Green for met, red for not met; grey when not judged, or judged at another count than
    the targets' (a quick run)."""
    if target["connections"] != JUDGED_AT:
        return UNJUDGED_COLOR
    return {"met": MET_COLOR, "not met": NOT_MET_COLOR}.get(target["verdict"], UNJUDGED_COLOR)


def _write_kind(name: str) -> int:
    """Group the writes panel by write: transfer, account checkout, card checkout."""
    return 0 if "transfer" in name else 1 if "account checkout" in name else 2


def chart(
    rows: list[dict[str, Any]],
    targets: Sequence[dict[str, Any]],
    path: Path,
    *,
    quick: bool = False,
) -> None:
    """req/s (and p99 for the writes) per row, at the highest connection count measured, in
    panels of their own scales, each target drawn at its threshold on the bar it judges and its
    verdict written beside the panel. A row not measured is labelled, not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    top: dict[str, dict[str, Any]] = {}
    for row in rows:
        name, held = row["scenario"], top.get(row["scenario"])
        if held is None or (
            "rps" in row and ("rps" not in held or row["connections"] > held["connections"])
        ):
            top[name] = row
    panels: dict[str, list[dict[str, Any]]] = {
        "reads": [],
        "writes": [],
        "sqlite writes": [],
        "other": [],
    }
    for row in top.values():
        panels[_panel_of(row["scenario"])].append(row)
    for writes in (panels["writes"], panels["sqlite writes"]):
        writes.sort(key=lambda r: _write_kind(r["scenario"]))  # stable: shop row first
    specs = [  # title, rows, metric, log scale
        ("Reads: requests per second", panels["reads"], "rps", False),
        ("Writes on PostgreSQL: requests per second", panels["writes"], "rps", False),
        ("Writes on PostgreSQL: p99 latency, ms", panels["writes"], "p99_ms", False),
        ("Writes on SQLite: requests per second", panels["sqlite writes"], "rps", False),
        ("Writes on SQLite: p99 latency, ms", panels["sqlite writes"], "p99_ms", False),
        ("No target (argon2id sign-up and login): req/s, log scale", panels["other"], "rps", True),
    ]
    specs = [spec for spec in specs if spec[1]]
    heights = [max(2, len(spec[1])) for spec in specs]
    fig, axes = plt.subplots(
        len(specs),
        1,
        figsize=(16, 0.5 * sum(heights) + 1.2 * len(specs) + 1.5),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for axis, (title, panel, metric, log) in zip(axes[:, 0], specs, strict=True):
        ys = list(range(len(panel)))
        measured = [
            (y, row, float(row[metric])) for y, row in zip(ys, panel, strict=True) if "rps" in row
        ]
        judged = [
            (y, t)
            for y, row in zip(ys, panel, strict=True)
            for t in targets
            if t["scenario"] == row["scenario"] and t["metric"] == metric
        ]
        drawn = [(y, t, t["threshold"]) for y, t in judged if t["threshold"] is not None]
        right = max([v for _, _, v in measured] + [x for _, _, x in drawn], default=1.0)
        # A log scale starts at the power of ten below the smallest value (argon2id rows in a
        # quick run answer less than one request a second).
        smallest = min((v for _, _, v in measured if v > 0), default=1.0)
        left = 10 ** math.floor(math.log10(min(smallest, 1.0))) if log else 0.0
        axis.barh(
            [y for y, _, _ in measured],
            [value - left for _, _, value in measured],
            left=left,
            color=[_bar_color(row["scenario"]) for _, row, _ in measured],
            height=0.7,
        )
        if log:
            axis.set_xscale("log")
            axis.set_xlim(left, right * 3)
        else:
            axis.set_xlim(0, right * 1.15)
        unit = " ms" if metric == "p99_ms" else ""
        for y, _, value in measured:
            axis.text(value, y, f" {value:.0f}{unit}", va="center", fontsize=8)
        for y, row in zip(ys, panel, strict=True):
            if "rps" not in row:
                why = row.get("skipped", "not measured")
                axis.text(left, y, f"  skipped: {why}", va="center", fontsize=8, style="italic")
        # Each target: a line at its threshold across the bar it judges, with a triangle that
        # points to the side meeting it; its verdict is written right of the panel.
        for y, t, threshold in drawn:
            color = _verdict_color(t)
            axis.vlines(threshold, y - 0.45, y + 0.45, colors=color, linewidth=2.5, zorder=3)
            marker = ">" if t["metric"] == "rps" else "<"
            axis.plot([threshold], [y - 0.45], marker=marker, color=color, markersize=8, zorder=3)
        beside = blended_transform_factory(axis.transAxes, axis.transData)
        for y, t in judged:
            on_row = [other for other_y, other in judged if other_y == y]
            offset = 0.0 if len(on_row) == 1 else 0.4 * on_row.index(t) - 0.2 * (len(on_row) - 1)
            sign = ">=" if t["metric"] == "rps" else "<="
            if t["baseline"] is None:  # an absolute bound
                text = f"{t['id']} {sign} {t['factor']:g}{unit}"
            else:  # "ceiling", "popular" or "floor"
                short = t["baseline"].partition(":")[0]
                text = f"{t['id']} {sign} {t['factor']:g} x {short}"
                if t["threshold"] is not None:
                    text += f" = {t['threshold']:.0f}{unit}"
            verdict = t["verdict"]
            if t["connections"] not in (None, JUDGED_AT):
                verdict += f" at {t['connections']} connections (no verdict)"
            color = _verdict_color(t)
            axis.text(
                1.01,
                y + offset,
                f"{text}: {verdict}",
                transform=beside,
                va="center",
                fontsize=8,
                color=color,
                clip_on=False,
            )
        names = [
            textwrap.fill(
                f"{r['scenario']} @{r['connections']}" if "rps" in r else r["scenario"], 52
            )
            for r in panel
        ]
        axis.set_yticks(ys, names, fontsize=8)
        axis.set_ylim(len(panel) - 0.5, -0.75)  # first row on top, room for the markers
        axis.set_title(title, loc="left", fontsize=10)
        axis.grid(axis="x", alpha=0.3)
    legend: list[Artist] = [
        Patch(color=SHOP_COLOR, label="shop"),
        Patch(color=CEILING_COLOR, label="ceiling: its bare statements (asyncpg, sqlite3)"),
        Patch(color=BASELINE_COLOR, label="popular recipe, starsessions"),
        Patch(color=FLOOR_COLOR, label="floor: constant JSON (reference)"),
    ]
    for marker, what in ((">", "at least"), ("<", "at most")):
        for color, verdict in ((MET_COLOR, "met"), (NOT_MET_COLOR, "not met")):
            legend.append(
                Line2D(
                    [],
                    [],
                    color=color,
                    marker=marker,
                    linestyle="-",
                    linewidth=2.5,
                    label=f"target: {what} this ({verdict})",
                )
            )
    fig.legend(handles=legend, loc="upper center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, 0.975))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(
        f"Benchmark of {when}: each row at the highest connection count measured; targets"
        f" judged at {JUDGED_AT} connections against baselines of the same run"
        + (" (quick run: numbers mean nothing)" if quick else ""),
        fontsize=11,
        y=0.995,
    )
    fig.tight_layout(rect=(0, 0, 0.86, 0.94))
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
