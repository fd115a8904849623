"""The engine's pool on real databases: requests waiting for a connection get one in turn."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.pool import AsyncAdaptedQueuePool

from fastapi_atomic import atomic, create_engine
from fastapi_atomic.engine import writer_engine
from fastapi_atomic.pool import FairAsyncAdaptedQueuePool


async def served_first(database_url: str, **options: object) -> str:
    """A pool of one, held by X; A asks and waits. Then, in one turn of the event loop, X
    gives the connection back and Y, which was already running, asks for one. Who gets it?"""
    engine = create_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=5, **options)
    order: list[str] = []
    go, checked_out = asyncio.Event(), asyncio.Event()

    async def use(name: str) -> None:
        async with engine.connect() as connection:
            order.append(name)
            await connection.execute(text("SELECT 1"))

    async def x() -> None:
        connection = await engine.connect()
        checked_out.set()
        await go.wait()
        await connection.close()  # no transaction to end: nothing to wait for

    async def y() -> None:
        await go.wait()
        await use("Y")

    try:
        holder = asyncio.create_task(x())
        await checked_out.wait()
        waiter = asyncio.create_task(use("A"))
        await asyncio.sleep(0.05)  # A is waiting for the connection
        newcomer = asyncio.create_task(y())
        await asyncio.sleep(0)  # X and Y both wait on the event, X first
        go.set()
        await asyncio.gather(holder, waiter, newcomer)
    finally:
        await engine.dispose()
    return order[0]


async def test_the_engine_uses_the_fair_pool(database_url: str) -> None:
    engine = create_engine(database_url)
    assert isinstance(engine.sync_engine.pool, FairAsyncAdaptedQueuePool)
    await engine.dispose()


async def test_a_returned_connection_goes_to_the_request_that_waited(database_url: str) -> None:
    assert await served_first(database_url) == "A"


async def test_sqlalchemys_own_pool_gives_it_to_whoever_asks_first(postgres_url: str) -> None:
    """What the fair pool replaces: the waiter is overtaken, and queues again at the back.
    (On SQLite giving a connection back waits for the driver's thread, so A is woken first.)"""
    assert await served_first(postgres_url, poolclass=AsyncAdaptedQueuePool) == "Y"


async def test_writers_on_a_sqlite_file_take_turns_in_arrival_order(sqlite_url: str) -> None:
    """SQLite's busy handler lets a locked-out writer in whenever it happens to look again;
    the writer engine's one connection serves them in the order they came instead."""
    engine = create_engine(sqlite_url, pool_size=8)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE turns (name TEXT)"))
    started: list[str] = []

    async def write(name: str, hold: float) -> None:
        async with atomic(engine) as uow:
            await uow.db.execute(text("INSERT INTO turns VALUES (:name)"), {"name": name})
            started.append(name)
            await asyncio.sleep(hold)

    try:
        first = asyncio.create_task(write("first", 0.2))
        await asyncio.sleep(0.05)
        others = []
        for name in ("second", "third", "fourth"):
            others.append(asyncio.create_task(write(name, 0.01)))
            await asyncio.sleep(0.02)
        await asyncio.gather(first, *others)
        assert started == ["first", "second", "third", "fourth"]
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT name FROM turns"))).scalars().all()
        assert rows == ["first", "second", "third", "fourth"]
        assert writer_engine(engine) is not engine
        assert writer_engine(engine).sync_engine.pool.size() == 1
    finally:
        await engine.dispose()
    assert writer_engine(engine).sync_engine.pool.checkedin() == 0  # disposed with the engine


async def test_a_server_database_has_no_separate_writer(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        assert writer_engine(engine) is engine
    finally:
        await engine.dispose()
