"""The ceilings (bench/baselines/bare.py, bare_sqlite.py) send what the shop sends, write by write.

Each write runs once to warm up and once recorded, in the shop (its engines' events) and in the
ceiling (asyncpg's query loggers; on SQLite, its connections' ``execute``), on one throw-away
PostgreSQL database, or SQLite file. The two sequences of round trips must be the same: every
statement's verb and table, its row lock, the transactions around them (``BEGIN IMMEDIATE`` on
SQLite) and the reads made outside any. A change to the shop's statements that this catches is
a change the ceiling must follow (its docstring lists them).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"email": "bench-admin@example.com", "password": "bench-admin-password"}
CARD = "4242424242424242"
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", re.IGNORECASE)


def signature(statement: str) -> str:
    """What a statement is as a round trip: verb, table, row lock (not its exact text)."""
    words = statement.replace(";", " ").split()
    verb = words[0].upper()
    if verb in {"BEGIN", "COMMIT", "ROLLBACK"}:
        return " ".join(words).upper()  # BEGIN IMMEDIATE on SQLite
    table = _TABLE.search(statement)
    lock = " FOR NO KEY UPDATE" if "FOR NO KEY UPDATE" in statement.upper() else ""
    return f"{verb} {table.group(1) if table else '?'}{lock}"


class Recorder:
    """Round trips in order; a statement outside BEGIN ... COMMIT is marked autocommit."""

    def __init__(self) -> None:
        self.on = False
        self.sent: list[str] = []
        self._in_transaction = False

    def note(self, statement: str) -> None:
        if not self.on:
            return
        kind = signature(statement)
        if kind.startswith("BEGIN"):
            self._in_transaction = True
        elif kind in {"COMMIT", "ROLLBACK"}:
            self._in_transaction = False
        elif not self._in_transaction:
            kind = f"autocommit {kind}"
        self.sent.append(kind)

    async def record(self, send: Callable[[], Any]) -> list[str]:
        (await send()).raise_for_status()  # warm-up: caches filled, statements prepared
        self.sent, self.on = [], True
        try:
            (await send()).raise_for_status()
        finally:
            self.on = False
        return self.sent


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))
    import bench.baselines.bare

    return bench.baselines.bare


@pytest.fixture
def bare_sqlite(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))
    import bench.baselines.bare_sqlite

    return bench.baselines.bare_sqlite


async def _customers(client: httpx.AsyncClient) -> tuple[int, list[tuple[str, str, int]]]:
    """A product, and two customers with money: (cookie, CSRF token, account id) each."""
    token = (await client.post("/api/session", json=ADMIN)).json()["csrf_token"]
    product = await client.post(
        "/api/products",
        json={"sku": "bench-0", "name": "Bench", "price": 100, "stock": 1000},
        headers={"X-CSRF-Token": token},
    )
    product.raise_for_status()
    client.cookies.clear()
    customers = []
    for n in range(2):
        credentials = {"email": f"bench-{n}@example.com", "password": "bench-password"}
        created = await client.post("/api/users", json={"name": f"Bench {n}", **credentials})
        created.raise_for_status()
        account = int(created.json()["accounts"][0]["id"])
        login = await client.post("/api/session", json=credentials)
        login.raise_for_status()
        cookie, csrf = client.cookies["shop_session"], login.json()["csrf_token"]
        deposit = await client.post(
            f"/api/accounts/{account}/deposits",
            json={"amount": 1_000_000, "card_number": CARD},
            headers={"X-CSRF-Token": csrf},
        )
        deposit.raise_for_status()
        client.cookies.clear()
        customers.append((cookie, csrf, account))
    return int(product.json()["id"]), customers


def _writes(
    client: httpx.AsyncClient, product: int, customers: list[tuple[str, str, int]]
) -> dict[str, Callable[[], Any]]:
    """One request of each write, as the benchmark sends them (no Idempotency-Key)."""
    (cookie, csrf, account), (_, _, other) = customers
    headers = {"Cookie": f"shop_session={cookie}", "X-CSRF-Token": csrf}
    items = [{"product_id": product, "quantity": 1}]
    requests: dict[str, tuple[str, dict[str, Any]]] = {
        "transfer": (
            "/api/transfers",
            {"from_account_id": account, "to_account_id": other, "amount": 1},
        ),
        "account checkout": (
            "/api/orders",
            {"items": items, "payment": {"method": "account", "account_id": account}},
        ),
        "card checkout": (
            "/api/orders",
            {"items": items, "payment": {"method": "card", "card_number": CARD}},
        ),
    }

    def sender(path: str, body: dict[str, Any]) -> Callable[[], Any]:
        return lambda: client.post(path, json=body, headers=headers)

    return {name: sender(path, body) for name, (path, body) in requests.items()}


@asynccontextmanager
async def _shop(database_url: str) -> AsyncIterator[Any]:
    """The shop's app on ``database_url``, started, as the benchmark's shop rows run it."""
    from shop.app import create_app
    from shop.settings import Settings

    settings = Settings(
        database_url=database_url,
        session_store="sql",
        secret_keys=["bench-secret-key-" + "b" * 40],
        cookie_secure=False,
        admin_email=ADMIN["email"],
        admin_password=ADMIN["password"],
    )
    app = create_app(settings)
    async with LifespanManager(app):
        yield app


@pytest.fixture
async def shop_app(postgres_url: str) -> AsyncIterator[Any]:
    async with _shop(postgres_url) as app:
        yield app


async def test_the_ceiling_sends_what_the_shop_sends(
    shop_app: Any, bare: ModuleType, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop_sent, bare_sent = Recorder(), Recorder()
    engine = shop_app.state.engine.sync_engine

    def autocommit(connection: Any) -> bool:
        return bool(connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        if not autocommit(connection):
            shop_sent.note("BEGIN")

    @event.listens_for(engine, "commit")
    def _commit(connection: Any) -> None:
        if not autocommit(connection):
            shop_sent.note("COMMIT")

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        shop_sent.note(statement)

    shop = httpx.AsyncClient(transport=httpx.ASGITransport(app=shop_app), base_url="http://shop")
    async with shop:
        product, customers = await _customers(shop)
        shop_writes = _writes(shop, product, customers)
        expected = {name: await shop_sent.record(send) for name, send in shop_writes.items()}

    real_create_pool = bare.asyncpg.create_pool

    def create_pool(*args: Any, **kwargs: Any) -> Any:
        async def init(connection: Any) -> None:
            connection.add_query_logger(lambda logged: bare_sent.note(logged.query))

        return real_create_pool(*args, init=init, **kwargs)

    monkeypatch.setattr(bare.asyncpg, "create_pool", create_pool)
    monkeypatch.setattr(bare, "DSN", postgres_url.replace("postgresql+asyncpg", "postgresql"))
    monkeypatch.setattr(bare, "GATEWAY_LATENCY", 0.0)
    monkeypatch.setattr(bare, "sessions", bare.SessionCache())
    async with LifespanManager(bare.app):
        ceiling = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=bare.app), base_url="http://bare"
        )
        async with ceiling:
            ceiling_writes = _writes(ceiling, product, customers)
            sent = {name: await bare_sent.record(send) for name, send in ceiling_writes.items()}

    assert sent == expected
    # What the docstring says, for a reader of a failure: the locks, and the session written.
    assert expected["transfer"][:2] == ["BEGIN", "SELECT accounts FOR NO KEY UPDATE"]
    assert expected["account checkout"][-2:] == ["UPDATE web_sessions", "COMMIT"]
    assert expected["card checkout"].count("BEGIN") == 2


async def test_the_sqlite_ceiling_sends_what_the_shop_sends(
    sqlite_url: str, bare_sqlite: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a throw-away SQLite file: the transfer and account checkout (the SQLite ceiling has no
    card checkout), the shop's statements recorded on both its engines (reads and the one
    writer), where BEGIN IMMEDIATE is a statement of the engine's ``begin`` listener."""
    from fastapi_atomic.engine import writer_engine

    shop_sent, bare_sent = Recorder(), Recorder()
    kinds = ("transfer", "account checkout")

    def autocommit(connection: Any) -> bool:
        return bool(connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

    def _commit(connection: Any) -> None:
        if not autocommit(connection):
            shop_sent.note("COMMIT")

    def _statement(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        shop_sent.note(statement)

    async with _shop(sqlite_url) as shop_app:
        for engine in {shop_app.state.engine, writer_engine(shop_app.state.engine)}:
            event.listen(engine.sync_engine, "commit", _commit)
            event.listen(engine.sync_engine, "before_cursor_execute", _statement)
        transport = httpx.ASGITransport(app=shop_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as shop:
            product, customers = await _customers(shop)
            shop_writes = _writes(shop, product, customers)
            expected = {name: await shop_sent.record(shop_writes[name]) for name in kinds}

    class Traced(sqlite3.Connection):
        """Notes each statement: the ceiling sends every one through ``execute``."""

        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            bare_sent.note(sql)
            return super().execute(sql, parameters)

    real_connect = bare_sqlite._connect
    monkeypatch.setattr(bare_sqlite, "_connect", lambda path: real_connect(path, Traced))
    monkeypatch.setattr(bare_sqlite, "DATABASE", sqlite_url.partition(":///")[2])
    monkeypatch.setattr(bare_sqlite, "sessions", bare_sqlite.SessionCache())
    async with LifespanManager(bare_sqlite.app):
        transport = httpx.ASGITransport(app=bare_sqlite.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bare") as ceiling:
            ceiling_writes = _writes(ceiling, product, customers)
            sent = {name: await bare_sent.record(ceiling_writes[name]) for name in kinds}

    assert sent == expected
    # What the docstring says, for a reader of a failure: the write lock taken first, no row
    # lock, and the session written.
    assert expected["transfer"][:2] == ["BEGIN IMMEDIATE", "SELECT accounts"]
    assert expected["account checkout"][-2:] == ["UPDATE web_sessions", "COMMIT"]
