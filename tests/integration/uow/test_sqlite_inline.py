"""SQLite statements on the event loop (fastapi_atomic.sqlite): where they run, what happens when
another connection holds the file's write lock, and who copies the write-ahead log back."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import atomic, create_engine
from fastapi_atomic.engine import writer_engine
from fastapi_atomic.sqlite import Checkpointer, InlineConnection, is_busy


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}", pool_size=4)
    async with atomic(engine) as uow:
        await uow.db.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        await uow.db.execute(text("INSERT INTO counter VALUES (1, 0)"))
    yield engine
    await engine.dispose()


def database_file(engine: AsyncEngine) -> str:
    database = engine.url.database
    assert database
    return database


def threads_running_statements(engine: AsyncEngine) -> list[int]:
    """The ids of the threads SQLite runs each statement of ``engine``'s connections in."""
    seen: list[int] = []

    @event.listens_for(engine.sync_engine, "connect")
    def _trace(dbapi_connection: Any, _record: Any) -> None:
        raw: sqlite3.Connection = dbapi_connection._connection._conn
        raw.set_trace_callback(lambda _sql: seen.append(threading.get_ident()))

    return seen


async def increment(engine: AsyncEngine) -> None:
    async with atomic(engine) as uow:
        await uow.db.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))


async def count(engine: AsyncEngine) -> int:
    async with atomic(engine) as uow:
        return int((await uow.db.execute(text("SELECT n FROM counter WHERE id = 1"))).scalar_one())


async def test_statements_run_on_the_event_loops_thread(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'thread.db'}")
    writer = writer_engine(engine)
    seen = threads_running_statements(engine)
    seen_by_writer = threads_running_statements(writer)
    try:
        async with atomic(engine) as uow:
            await uow.db.execute(text("CREATE TABLE t (x INTEGER)"))
            await uow.db.execute(text("INSERT INTO t VALUES (1)"))
        async with engine.connect() as connection:  # a reader of the engine's own pool
            assert (await connection.execute(text("SELECT x FROM t"))).scalar_one() == 1
        async with writer.connect() as connection:
            raw = await connection.get_raw_connection()
            assert isinstance(raw.driver_connection, InlineConnection)
    finally:
        await engine.dispose()
    assert seen and seen_by_writer
    assert set(seen) | set(seen_by_writer) == {threading.get_ident()}


async def test_a_statement_is_one_call_on_the_connection(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening, fetching and closing the cursor are not calls of their own: each is a switch
    out of SQLAlchemy's greenlet and back, and costs more than the statement itself."""
    calls: list[str] = []
    original = InlineConnection._execute

    async def counted(self: InlineConnection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))  # the connection's set-up, out of the count
        monkeypatch.setattr(InlineConnection, "_execute", counted)
        rows = await connection.execute(text("SELECT id, n FROM counter"))
        assert rows.all() == [(1, 0)]
        changed = await connection.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
        assert changed.rowcount == 1
        await connection.execute(
            text("INSERT INTO counter VALUES (:id, 0)"), [{"id": 2}, {"id": 3}]
        )
        await connection.commit()
    # the pool's reset of the connection as it goes back is the last call
    assert calls == ["execute", "execute", "executemany", "commit", "rollback"]
    assert await count(engine) == 1


async def test_a_closed_inline_connection_fails_as_the_dbapi_says(engine: AsyncEngine) -> None:
    """As with SQLAlchemy's own cursor: the DBAPI's OperationalError, which SQLAlchemy knows as
    a disconnect, never aiosqlite's ValueError."""
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        await raw.driver_connection.close()
        adapted = raw.dbapi_connection
        assert adapted is not None
        with pytest.raises(sqlite3.OperationalError, match="no active connection"):
            adapted.cursor()
        await connection.invalidate()


async def test_results_stream_from_an_inline_connection(engine: AsyncEngine) -> None:
    async with atomic(engine) as uow:
        await uow.db.execute(
            text("INSERT INTO counter VALUES (:id, :id)"), [{"id": n} for n in range(2, 202)]
        )
    async with engine.connect() as connection:
        streamed = await connection.stream(text("SELECT n FROM counter ORDER BY id"))
        assert [n async for (n,) in streamed] == [0, *range(2, 202)]


async def test_a_write_waits_off_the_loop_for_another_connections_lock(
    engine: AsyncEngine,
) -> None:
    """Another process's writer holds the lock for 0.3 s: the write waits for it in the
    connection's thread, and the loop goes on serving meanwhile."""
    other = sqlite3.connect(database_file(engine), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.3, other.execute, ["COMMIT"])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    released.start()
    try:
        started = time.monotonic()
        await increment(engine)
        waited = time.monotonic() - started
    finally:
        ticking.cancel()
        released.join()
        other.close()
    assert waited >= 0.25  # it did wait for the lock, not fail or skip it
    # and the loop ran other tasks meanwhile: a wait on the loop would leave 2 ticks at most; the
    # bound leaves room for a loaded machine, whose loop ticks less often than every 10 ms
    assert ticks >= 5
    assert await count(engine) == 1


async def test_a_lock_held_past_the_busy_timeout_fails_the_write(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'held.db'}", sqlite_busy_timeout_ms=200
    )
    async with atomic(engine) as uow:
        await uow.db.execute(text("CREATE TABLE t (x INTEGER)"))
    other = sqlite3.connect(database_file(engine), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised:
            async with atomic(engine) as uow:
                await uow.db.execute(text("INSERT INTO t VALUES (1)"))
        assert is_busy(raised.value.orig.__cause__ or raised.value.orig)  # type: ignore[arg-type]
        assert 0.15 <= time.monotonic() - started < 5
    finally:
        other.execute("ROLLBACK")
        other.close()
        await engine.dispose()


WRITER = """
import asyncio, sys
from sqlalchemy import text
from fastapi_atomic import atomic, create_engine

async def main() -> None:
    engine = create_engine(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        async with atomic(engine) as uow:
            await uow.db.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))
    await engine.dispose()

asyncio.run(main())
"""


async def test_processes_sharing_the_file_lose_no_update(engine: AsyncEngine) -> None:
    """Three processes write the same row at once: each waits for the others' lock in its
    connection's thread, and every increment lands."""
    url = f"sqlite+aiosqlite:///{database_file(engine)}"
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, url, "200")
        for _ in range(3)
    ]
    for _ in range(50):  # this process writes too, meanwhile
        await increment(engine)
    assert [await process.wait() for process in processes] == [0, 0, 0]
    assert await count(engine) == 650


def in_main_file(database: str) -> int:
    """The counter as the database file holds it, without the write-ahead log."""
    connection = sqlite3.connect(f"file:{database}?mode=ro&immutable=1", uri=True)
    try:
        return int(connection.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0])
    except sqlite3.OperationalError:  # not even the table there yet
        return -1
    finally:
        connection.close()


async def test_commits_reach_the_database_file_through_the_checkpointer(
    engine: AsyncEngine,
) -> None:
    for _ in range(5):
        await increment(engine)
    deadline = time.monotonic() + 5
    while in_main_file(database_file(engine)) != 5:
        assert time.monotonic() < deadline, "the write-ahead log was never copied back"
        await asyncio.sleep(0.05)


def wal_size(wal: Path) -> int:
    """The write-ahead log's size in bytes (a stat, as cheap as the checks around it)."""
    return wal.stat().st_size if wal.exists() else 0


async def test_the_write_ahead_log_stays_bounded_under_steady_writes_and_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits one after another while two readers take turns holding a snapshot, so that
    one always does (a busy app): passive checkpoints never copy the whole log, SQLite never
    starts it over, and it grew by every commit (18 MB a second under the shop's checkout).
    The checkpointer empties it once it passes its bound."""
    monkeypatch.setattr(Checkpointer, "truncate_frames", 64)
    monkeypatch.setattr("fastapi_atomic.sqlite.CHECKPOINT_INTERVAL_S", 0.02)
    database = tmp_path / "steady.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    wal = Path(f"{database}-wal")
    async with atomic(engine) as uow:
        await uow.db.execute(text("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)"))
    readers = [sqlite3.connect(database, isolation_level=None) for _ in range(2)]
    writing = True

    async def read(reader: sqlite3.Connection, offset: float) -> None:
        await asyncio.sleep(offset)
        while writing:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM blobs").fetchone()
            await asyncio.sleep(0.004)  # the snapshot held, as a request does
            reader.execute("COMMIT")

    turns = [
        asyncio.create_task(read(reader, offset))
        for reader, offset in zip(readers, (0, 0.002), strict=True)
    ]
    largest = written = 0
    try:
        for _ in range(1500):
            async with atomic(engine) as uow:
                await uow.db.execute(text("INSERT INTO blobs (data) VALUES (randomblob(4000))"))
            written += 4096
            largest = max(largest, wal_size(wal))
            await asyncio.sleep(0)  # the readers take their turns
    finally:
        writing = False
        await asyncio.gather(*turns)
        for reader in readers:
            reader.close()
        await engine.dispose()
    assert written >= 6_000_000
    # without the truncation it reached three times what was written
    assert largest < written / 2, f"the log reached {largest} bytes of {written} written"


async def test_a_commit_does_not_checkpoint(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        autocheckpoint = (await connection.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar()
    assert autocheckpoint == 0


async def test_the_checkpointer_stops_with_the_engine(tmp_path: Path) -> None:
    database = tmp_path / "stops.db"
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    async with atomic(engine) as uow:
        await uow.db.execute(text("SELECT 1"))

    def checkpointers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == f"sqlite-checkpoint {database}"]

    assert len(checkpointers()) == 1
    await engine.dispose()
    for thread in checkpointers():
        thread.join(timeout=5)
    assert checkpointers() == []


async def test_the_driver_thread_can_be_chosen(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'thread.db'}", sqlite_inline=False)
    seen = threads_running_statements(engine)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    assert seen and threading.get_ident() not in seen
