"""The unit of work on real databases: commit, rollback, commit failure, retries, hooks.

A small app of its own (one table of items) keeps these tests about the library, not the shop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from prometheus_client import CollectorRegistry
from sqlalchemy import Column, Integer, MetaData, String, Table, event, func, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase

from fastapi_atomic import (
    AtomicMetrics,
    AtomicMiddleware,
    Backoff,
    BodyStream,
    ConfigurationError,
    DBDep,
    TooLate,
    UnitOfWorkDep,
    create_engine,
    isolation_level,
)
from fastapi_atomic.engine import writer_engine

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False, unique=True),
    Column("grp", String(20), nullable=False, default="a"),
)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __table__ = items


FAST_RETRIES = Backoff(attempts=4, base=0.001, cap=0.005)


@dataclass
class Harness:
    engine: AsyncEngine
    client: httpx.AsyncClient
    metrics: AtomicMetrics
    hooks: list[str] = field(default_factory=list)
    checkouts: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def names(self) -> list[str]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(items.c.name).order_by(items.c.id))
            return [row[0] for row in rows]

    def count(self, counter: Any, **labels: str) -> float:
        metric = counter.labels(**labels) if labels else counter
        return float(metric._value.get())


def build_app(harness: Harness, barrier: asyncio.Barrier | None = None) -> FastAPI:
    app = FastAPI(max_body_size=1000)
    app.add_middleware(
        AtomicMiddleware, engine=harness.engine, backoff=FAST_RETRIES, metrics=harness.metrics
    )
    first_attempts: set[str] = set()

    @app.post("/items/{name}")
    async def add(name: str, db: DBDep, uow: UnitOfWorkDep) -> dict[str, str]:
        await db.execute(insert(items).values(name=name))
        uow.on_commit(lambda: harness.hooks.append(f"committed {name}"))
        return {"name": name}

    @app.post("/fail-after-flush/{name}")
    async def fail(name: str, db: DBDep) -> None:
        await db.execute(insert(items).values(name=name))
        raise RuntimeError("boom after the flush")

    @app.post("/conflict-after-flush/{name}")
    async def conflict(name: str, db: DBDep, uow: UnitOfWorkDep) -> None:
        await db.execute(insert(items).values(name=name))
        uow.on_commit(lambda: harness.hooks.append("must not run"))
        raise HTTPException(409, "conflict after a write")

    @app.post("/commit-fails/{name}")
    async def commit_fails(name: str, db: DBDep) -> dict[str, str]:
        # A constraint checked only at COMMIT: the handler succeeds, the commit does not.
        if db.bind.dialect.name == "postgresql":
            await db.execute(text("SET CONSTRAINTS ALL DEFERRED"))
            await db.execute(text("INSERT INTO children (parent_id) VALUES (999999)"))
        else:
            await db.execute(text("PRAGMA defer_foreign_keys = ON"))
            await db.execute(text("INSERT INTO children (parent_id) VALUES (999999)"))
        await db.execute(insert(items).values(name=name))
        return {"name": name}

    @app.post("/savepoint/{name}")
    async def savepoint(name: str, db: DBDep, uow: UnitOfWorkDep) -> dict[str, bool]:
        duplicate = False
        try:
            async with uow.savepoint():
                uow.on_commit(lambda: harness.hooks.append("inside rolled-back savepoint"))
                await db.execute(insert(items).values(name="taken"))
        except IntegrityError:
            duplicate = True
        await db.execute(insert(items).values(name=name))
        return {"duplicate": duplicate}

    @app.post("/write-skew/{name}", dependencies=[Depends(isolation_level("SERIALIZABLE"))])
    async def write_skew(name: str, request: Request, db: DBDep) -> dict[str, int]:
        # Classic write skew: both read the group's count, both insert; SERIALIZABLE aborts one.
        seen = (
            await db.execute(select(func.count()).select_from(items).where(items.c.grp == "g"))
        ).scalar_one()
        if barrier is not None and name not in first_attempts:
            first_attempts.add(name)
            await asyncio.wait_for(barrier.wait(), timeout=10)
        await db.execute(insert(items).values(name=name, grp="g"))
        return {"seen": seen}

    @app.get("/isolation", dependencies=[Depends(isolation_level("SERIALIZABLE"))])
    async def isolation(db: DBDep) -> dict[str, str]:
        level = (await db.execute(text("SHOW transaction_isolation"))).scalar_one()
        return {"level": str(level)}

    @app.post("/always-locked")
    async def always_locked(db: DBDep) -> None:
        harness.hooks.append("attempt")
        raise OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"body": (await request.body()).decode()}

    @app.post("/retry-body")
    async def retry_body(request: Request, db: DBDep) -> dict[str, Any]:
        harness.hooks.append((await request.body()).decode())
        if len(harness.hooks) == 1:
            raise OperationalError("...", {}, sqlite3.OperationalError("database is locked"))
        return {"attempts": len(harness.hooks)}

    @app.post("/retry-request-id")
    async def retry_request_id(uow: UnitOfWorkDep) -> dict[str, Any]:
        harness.hooks.append(uow._request_id)  # type: ignore[attr-defined]  # made on first use
        if len(harness.hooks) == 1:
            raise OperationalError("...", {}, sqlite3.OperationalError("database is locked"))
        return {"attempts": len(harness.hooks)}

    @app.post("/failing-hook/{name}")
    async def failing_hook(name: str, db: DBDep, uow: UnitOfWorkDep) -> dict[str, str]:
        def explode() -> None:
            raise RuntimeError("hook failed")

        await db.execute(insert(items).values(name=name))
        uow.on_commit(explode)
        uow.on_commit(lambda: harness.hooks.append("second hook still runs"))
        return {"name": name}

    @app.post("/slow-write/{name}")
    async def slow_write(name: str, db: DBDep) -> dict[str, str]:
        await db.execute(insert(items).values(name=name))
        harness.hooks.append("wrote")
        harness.entered.set()
        if harness.hooks.count("wrote") == 1:
            await asyncio.wait_for(harness.gate.wait(), 10)
            await db.execute(insert(items).values(name=name + "-second"))
        return {"name": name}

    @app.post("/release-after/{what}")
    async def release_after(what: str, db: DBDep, uow: UnitOfWorkDep) -> dict[str, bool]:
        if what == "write":
            await db.execute(insert(items).values(name="written"))
        else:
            await db.execute(select(items.c.id))
        try:
            await uow.release()
        except TooLate:
            return {"released": False}
        return {"released": True}

    @app.post("/echo-up-to-5000", max_body_size=5000)
    async def echo_bigger(request: Request) -> dict[str, int]:
        return {"length": len(await request.body())}

    @app.post("/stream-then-locked")
    async def stream_then_locked(body: BodyStream) -> None:
        harness.hooks.append(str(sum([len(chunk) async for chunk in body])))
        raise OperationalError("...", {}, sqlite3.OperationalError("database is locked"))

    @app.post("/commit-from-the-route/{name}")
    async def commit_from_the_route(name: str, db: DBDep) -> None:
        await db.execute(insert(items).values(name=name))
        try:
            await db.commit()
        except ConfigurationError as exc:
            harness.hooks.append(str(exc))
            raise HTTPException(409, "refused") from exc

    @app.post("/loaded-before-a-phase/{name}")
    async def loaded_before_a_phase(name: str, uow: UnitOfWorkDep) -> dict[str, str]:
        item = await uow.db.scalar(select(Item).where(Item.name == "taken"))
        assert item is not None

        async def reserve(db: Any) -> None:
            await db.execute(insert(items).values(name=name))

        await uow.run_phase(reserve)
        return {"loaded": item.name, "group": item.grp}

    @app.get("/no-db")
    async def no_db() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/phase/{name}")
    async def phase(name: str, uow: UnitOfWorkDep, idempotent: bool = False) -> None:
        async def insert_once(db: Any) -> None:
            harness.hooks.append("phase ran")
            found = await db.scalar(select(items.c.id).where(items.c.name == name))
            if found is None or not idempotent:
                await db.execute(insert(items).values(name=name))

        await uow.run_phase(insert_once, idempotent=idempotent)

    @app.post("/phase-then-decline/{name}")
    async def phase_then_decline(name: str, uow: UnitOfWorkDep) -> None:
        async def reserve(db: Any) -> None:
            await db.execute(insert(items).values(name=name))

        await uow.run_phase(reserve)
        await uow.db.execute(insert(items).values(name=name + "-main"))
        raise HTTPException(402, "declined after the phase committed")

    return app


@pytest.fixture
async def harness(database_url: str) -> AsyncIterator[Harness]:
    async with _harness(database_url) as h:
        yield h


@pytest.fixture
async def pg_harness(postgres_url: str) -> AsyncIterator[Harness]:
    async with _harness(postgres_url) as h:
        yield h


@contextlib.asynccontextmanager
async def _harness(database_url: str) -> AsyncIterator[Harness]:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.execute(text("DROP TABLE IF EXISTS children"))
        await connection.execute(text("DROP TABLE IF EXISTS parents"))
        await connection.run_sync(metadata.create_all)
        await connection.execute(text("CREATE TABLE parents (id INTEGER PRIMARY KEY)"))
        postgres = connection.dialect.name == "postgresql"
        key = "SERIAL PRIMARY KEY" if postgres else "INTEGER PRIMARY KEY"
        deferrable = "DEFERRABLE" if postgres else ""
        await connection.execute(
            text(
                f"CREATE TABLE children (id {key}, parent_id INTEGER "
                f"REFERENCES parents (id) {deferrable})"
            )
        )
    h = Harness(engine=engine, client=None, metrics=AtomicMetrics.create(CollectorRegistry()))  # type: ignore[arg-type]

    @event.listens_for(engine.sync_engine, "checkout")
    def _count(*_args: Any) -> None:
        h.checkouts += 1

    yield h
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.execute(text("DROP TABLE IF EXISTS children"))
        await connection.execute(text("DROP TABLE IF EXISTS parents"))
    await engine.dispose()


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_commit_on_success(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        response = await client.post("/items/one")
    assert response.status_code == 200
    assert await harness.names() == ["one"]
    assert harness.hooks == ["committed one"]


async def test_exception_after_flush_rolls_back(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        response = await client.post("/fail-after-flush/ghost")
    assert response.status_code == 500
    assert await harness.names() == []


async def test_error_status_after_write_rolls_back_and_skips_hooks(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        response = await client.post("/conflict-after-flush/ghost")
    assert response.status_code == 409
    assert response.json() == {"detail": "conflict after a write"}
    assert await harness.names() == []
    assert harness.hooks == []


async def test_failed_commit_is_never_a_success(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        response = await client.post("/commit-fails/lost")
    assert response.status_code == 503
    assert "nothing was changed" in response.json()["detail"]
    assert await harness.names() == []
    assert harness.count(harness.metrics.rollbacks, reason="commit_failed") == 1


async def test_savepoint_undoes_only_its_block_and_its_hooks(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        assert (await client.post("/items/taken")).status_code == 200
        harness.hooks.clear()
        response = await client.post("/savepoint/kept")
    assert response.json() == {"duplicate": True}
    assert await harness.names() == ["taken", "kept"]
    assert harness.hooks == []


async def test_retries_are_bounded(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        response = await client.post("/always-locked")
    assert response.status_code == 503
    assert harness.hooks == ["attempt"] * FAST_RETRIES.attempts
    assert harness.count(harness.metrics.retries, reason="database_locked") == (
        FAST_RETRIES.attempts - 1
    )


async def test_a_retried_request_reads_its_body_again(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        response = await client.post("/retry-body", content=b"payload")
    assert response.json() == {"attempts": 2}
    assert harness.hooks == ["payload", "payload"]


async def test_a_retried_request_keeps_its_request_id(harness: Harness) -> None:
    # The id owns idempotency-key locks: a retry that got a new one would lock itself out.
    async with client_for(build_app(harness)) as client:
        first = await client.post("/retry-request-id")
        second = await client.post("/retry-request-id")
    assert first.json() == {"attempts": 2}
    assert second.json() == {"attempts": 3}
    assert harness.hooks[0] == harness.hooks[1] != harness.hooks[2]
    assert len(harness.hooks[0]) == 32


async def test_body_over_the_limit_is_413(harness: Harness) -> None:
    """The limit is FastAPI's own (the app's, or a route's); the middleware keeps what is read."""
    async with client_for(build_app(harness)) as client:
        response = await client.post("/echo", content=b"x" * 1001)
        small = await client.post("/echo", content=b"x" * 1000)
        bigger = await client.post("/echo-up-to-5000", content=b"x" * 4000)
        too_big = await client.post("/echo-up-to-5000", content=b"x" * 5001)
    assert response.status_code == 413
    assert small.status_code == 200
    assert bigger.json() == {"length": 4000}
    assert too_big.status_code == 413


async def test_a_streamed_body_is_not_kept_so_the_request_is_not_rerun(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        response = await client.post("/stream-then-locked", content=b"x" * 800)
    assert response.status_code == 503
    assert harness.hooks == ["800"]  # one attempt: the body is gone


async def test_a_route_cannot_commit_the_requests_transaction(harness: Harness) -> None:
    """A commit from a route would make a later error unable to undo the write."""
    async with client_for(build_app(harness)) as client:
        response = await client.post("/commit-from-the-route/early")
    assert response.status_code == 409
    assert await harness.names() == []
    assert "Don't call commit()" in harness.hooks[0]


async def test_objects_loaded_before_a_phase_stay_loaded(harness: Harness) -> None:
    """A phase ends the request's read-only transaction first; what it loaded stays usable."""
    async with client_for(build_app(harness)) as client:
        assert (await client.post("/items/taken")).status_code == 200
        response = await client.post("/loaded-before-a-phase/reserved")
    assert response.status_code == 200, response.text
    assert response.json() == {"loaded": "taken", "group": "a"}
    assert await harness.names() == ["taken", "reserved"]


async def test_request_without_database_work_takes_no_connection(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        before = harness.checkouts
        response = await client.get("/no-db")
    assert response.status_code == 200
    assert harness.checkouts == before


async def test_a_transaction_that_wrote_is_never_released(harness: Harness) -> None:
    """release() ends a read-only transaction before a slow call, but never drops a write."""
    async with client_for(build_app(harness)) as client:
        read = await client.post("/release-after/read")
        wrote = await client.post("/release-after/write")
    assert read.json() == {"released": True}
    assert wrote.json() == {"released": False}
    assert await harness.names() == ["written"]


async def test_phase_commits_even_when_the_request_fails(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        response = await client.post("/phase-then-decline/order")
    assert response.status_code == 402
    assert await harness.names() == ["order"]  # the phase stays, the main transaction does not


async def test_serialization_failure_is_retried_on_postgres(pg_harness: Harness) -> None:
    harness = pg_harness
    barrier = asyncio.Barrier(2)
    async with client_for(build_app(harness, barrier)) as client:
        first, second = await asyncio.gather(
            client.post("/write-skew/first"), client.post("/write-skew/second")
        )
    assert (first.status_code, second.status_code) == (200, 200)
    assert sorted([first.json()["seen"], second.json()["seen"]]) == [0, 1]
    assert sorted(await harness.names()) == ["first", "second"]
    assert harness.count(harness.metrics.retries, reason="serialization_failure") == 1


async def test_isolation_level_per_route_on_postgres(pg_harness: Harness) -> None:
    async with client_for(build_app(pg_harness)) as client:
        response = await client.get("/isolation")
    assert response.json() == {"level": "serializable"}


async def test_failing_after_commit_hook_keeps_the_request_committed(harness: Harness) -> None:
    async with client_for(build_app(harness)) as client:
        response = await client.post("/failing-hook/kept")
    assert response.status_code == 200
    assert await harness.names() == ["kept"]
    assert harness.hooks == ["second hook still runs"]


async def test_a_connection_killed_mid_transaction_leaves_nothing_half_done(
    pg_harness: Harness,
) -> None:
    """The server kills our connection after the first insert: the request is re-run whole."""
    harness = pg_harness
    async with client_for(build_app(harness)) as client:
        request = asyncio.create_task(client.post("/slow-write/once"))
        await asyncio.wait_for(harness.entered.wait(), 10)
        async with harness.engine.connect() as admin:
            killed = await admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND state = 'idle in transaction'"
                )
            )
            assert killed.all(), "no transaction to kill"
        harness.gate.set()
        response = await request
    assert response.status_code == 200
    assert harness.hooks == ["wrote", "wrote"]  # the whole request ran again
    assert await harness.names() == ["once"]  # the re-run's row only; nothing half-done
    assert harness.count(harness.metrics.retries, reason="connection_lost") == 1


async def test_a_failed_statement_never_shows_its_bound_values(harness: Harness) -> None:
    """A unique violation carried an e-mail: its error, and so its logged traceback, must not."""
    secret = "customer-secret@example.com"
    async with harness.engine.begin() as connection:
        await connection.execute(insert(items).values(name=secret))
    with pytest.raises(IntegrityError) as raised:
        async with harness.engine.begin() as connection:
            await connection.execute(insert(items).values(name=secret))
    assert secret not in str(raised.value)
    assert "parameters hidden" in str(raised.value)


@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_phase_whose_commit_lost_its_connection_runs_again_only_if_idempotent(
    harness: Harness, idempotent: bool
) -> None:
    """The COMMIT reached the database, then the connection broke: the phase's work is there.
    Run again, a phase that does not look for its earlier work would do it twice (a second
    row here, a duplicate key in the shop); the request must not be re-run either."""
    failed = False

    def commit_then_lose_the_connection(connection: Any) -> None:
        nonlocal failed
        if not failed:
            failed = True
            connection.connection.commit()  # it landed...
            raise OperationalError("COMMIT", {}, Exception("lost"), connection_invalidated=True)

    writer = writer_engine(harness.engine).sync_engine
    event.listen(writer, "commit", commit_then_lose_the_connection)
    try:
        async with client_for(build_app(harness)) as client:
            response = await client.post(f"/phase/once?idempotent={str(idempotent).lower()}")
    finally:
        event.remove(writer, "commit", commit_then_lose_the_connection)
    assert await harness.names() == ["once"]  # its work done once, whatever the answer
    if idempotent:
        assert response.status_code == 200
        assert harness.hooks == ["phase ran", "phase ran"]  # found its earlier work
    else:
        assert response.status_code == 503
        assert harness.hooks == ["phase ran"]  # not the phase again, nor the request
