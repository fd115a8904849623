"""The web-session read cache on SQLite: a change log written by triggers, read by each process.

Two apps on one file (each its own engine, store, cache and feed) stand for two processes; one
test runs a real second process. What one commits, the other must stop serving from memory
within milliseconds; a feed that drops, or that finds changes deleted before it read them,
must empty its cache.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from session_tables import SESSIONS, with_table
from shop_testing import ADMIN, client_for, log_in, make_settings, running
from sqlalchemy import MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fastapi_atomic import atomic, create_engine
from fastapi_atomic.testing import make_record, new_key, run_in_unit_of_work
from fastapi_atomic.websession import (
    SqlStore,
    WebSessionManager,
    sqlite_change_log,
    web_sessions_table,
)
from fastapi_atomic.websession.feeds import SqliteFeed
from fastapi_atomic.websession.record import Changes, SessionRecord
from fastapi_atomic.websession.stores.sql_trigger import change_log_name, sqlite_trigger_names

App = tuple[AsyncEngine, SqlStore]
#: a bound for a loaded CI machine, not a measure of speed (``make bench`` measures the window).
#: A feed that hears nothing leaves the record cached for the cache's max_age (60 s), and
#: ``eventually`` gives up after 5 s.
REVOCATION_BOUND = 0.25
LOG = change_log_name(SESSIONS)


async def create_change_log(engine: AsyncEngine, table: Table = SESSIONS) -> None:
    async with engine.begin() as connection:
        for statement in sqlite_change_log(table):
            await connection.execute(text(statement))


async def load(app: App, key: str) -> SessionRecord | None:
    engine, store = app
    async with atomic(engine) as uow:
        return await store.load(key, uow)


async def stored(app: App, record: SessionRecord) -> str:
    engine, store = app
    key = new_key()
    async with atomic(engine) as uow:
        await store.create(key, record, uow)
    return key


async def cached_in(reader: App, writer: App, record: SessionRecord) -> str:
    """A session created through ``writer``, read twice through ``reader``: the second time
    from its memory."""
    key = await stored(writer, record)
    cache = reader[1].cache
    assert cache is not None
    assert await load(reader, key) == record
    hits = cache.hits
    assert await load(reader, key) == record
    assert cache.hits == hits + 1
    return key


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> float:
    """Seconds until ``check`` held; fails after ``within``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, "the condition never held"
        await asyncio.sleep(0.001)
    return time.monotonic() - started


def feed_of(store: SqlStore) -> SqliteFeed:
    assert isinstance(store._feed, SqliteFeed)
    return store._feed


async def log_rows(engine: AsyncEngine) -> list[tuple[int, str, int | None]]:
    async with engine.connect() as connection:
        rows = await connection.execute(text(f"SELECT id, key, version FROM {LOG} ORDER BY id"))
        return [(row[0], row[1], row[2]) for row in rows]


async def test_a_session_read_twice_is_served_from_memory_the_second_time(
    sqlite_apps: list[App],
) -> None:
    writer, reader = sqlite_apps
    assert all(store.cache is not None and store.cache.live for _, store in sqlite_apps)
    key = await cached_in(reader, writer, make_record("1", cart=[1]))
    assert reader[1].cache is not None and len(reader[1].cache) == 1
    assert await load(reader, key) is not None


async def test_a_logout_in_one_app_ends_the_session_in_the_other_within_milliseconds(
    sqlite_apps: list[App],
) -> None:
    writer, reader = sqlite_apps
    key = await cached_in(reader, writer, make_record("2"))
    async with atomic(writer[0]) as uow:
        await writer[1].delete(key, uow)

    async def gone() -> bool:
        return await load(reader, key) is None

    assert await eventually(gone) < REVOCATION_BOUND


async def test_an_update_in_one_app_is_seen_by_the_other(sqlite_apps: list[App]) -> None:
    writer, reader = sqlite_apps
    key = await cached_in(reader, writer, make_record("3", step=1))
    async with atomic(writer[0]) as uow:
        await writer[1].update(key, Changes([("set", "step", 2)]), uow)

    async def sees_step_2() -> bool:
        record = await load(reader, key)
        return record is not None and record.data == {"step": 2}

    assert await eventually(sees_step_2) < REVOCATION_BOUND
    # Then served from memory again, at the new version.
    cache = reader[1].cache
    assert cache is not None
    hits = cache.hits
    record = await load(reader, key)
    assert record is not None and record.version == 2 and cache.hits == hits + 1


async def test_writes_alternating_between_apps_are_each_seen_by_the_other(
    sqlite_apps: list[App],
) -> None:
    key = await cached_in(sqlite_apps[1], sqlite_apps[0], make_record("4", n=0))
    for n in range(1, 9):
        writer, reader = sqlite_apps[n % 2], sqlite_apps[(n + 1) % 2]
        async with atomic(writer[0]) as uow:
            assert await writer[1].update(key, Changes([("set", "n", n)]), uow) is not None

        async def sees_n(reader: App = reader, n: int = n) -> bool:
            record = await load(reader, key)
            return record is not None and record.data == {"n": n}

        await eventually(sees_n)
        record = await load(writer, key)
        assert record is not None and record.data == {"n": n}


async def test_a_rolled_back_write_leaves_no_change_and_sends_no_message(
    sqlite_apps: list[App],
) -> None:
    writer, reader = sqlite_apps
    key = await cached_in(reader, writer, make_record("5", a=1))
    before = await log_rows(writer[0])
    cache = reader[1].cache
    assert cache is not None
    heard: list[str] = []
    apply = cache.on_message

    def on_message(message: str) -> None:
        heard.append(message)
        apply(message)

    cache.on_message = on_message  # type: ignore[method-assign]

    await run_in_unit_of_work(
        writer[0], lambda uow: writer[1].update(key, Changes([("set", "a", 2)]), uow), commit=False
    )
    await run_in_unit_of_work(writer[0], lambda uow: writer[1].delete(key, uow), commit=False)
    await asyncio.sleep(0.05)  # several polls of the reader's feed
    assert await log_rows(writer[0]) == before
    assert heard == []
    hits = cache.hits
    record = await load(reader, key)
    assert record is not None and record.data == {"a": 1} and cache.hits == hits + 1


async def test_the_change_log_says_which_version_a_change_made(sqlite_apps: list[App]) -> None:
    """The rows the feed reads: (key, version), (key, 0) twice for a change that says nothing
    of versions, (key, NULL) for a delete; nothing for an insert, nothing rolled back."""
    (engine, store), _ = sqlite_apps
    key = new_key()
    async with atomic(engine) as uow:
        await store.create(key, make_record("6"), uow)
        await store.update(key, Changes([("set", "a", 1)]), uow)
    async with engine.begin() as connection:  # by hand, the version left alone
        await connection.execute(
            text(f"UPDATE {SESSIONS.name} SET expires_at = 0 WHERE key = :key"), {"key": key}
        )
    async with atomic(engine) as uow:
        await store.delete(key, uow)
    await run_in_unit_of_work(
        engine, lambda uow: store.create(key, make_record("6"), uow), commit=False
    )
    rows = await log_rows(engine)
    assert [(k, v) for _, k, v in rows] == [(key, 2), (key, 0), (key, 0), (key, None)]
    ids = [row[0] for row in rows]
    assert ids == list(range(ids[0], ids[0] + 4)), "ids are consecutive"


async def test_changes_deleted_before_a_process_read_them_empty_its_cache(
    sqlite_apps: list[App],
) -> None:
    """Rows past what the reader had seen are purged in the same commit as the changes: it
    cannot know what they said, so it must forget everything rather than serve any of it."""
    writer, reader = sqlite_apps
    changed = await cached_in(reader, writer, make_record("7", a=1))
    untouched = await cached_in(reader, writer, make_record("7", b=1))
    other = await stored(writer, make_record("7"))
    cache = reader[1].cache
    assert cache is not None and len(cache) == 2
    epoch = cache.epoch

    async with atomic(writer[0]) as uow:
        await writer[1].update(changed, Changes([("set", "a", 2)]), uow)
        newest = await writer[1].update(other, Changes([("set", "c", 1)]), uow)
        assert newest is not None
        # A purge keeps the newest row: here, the change of ``changed`` goes unread.
        await uow.db.execute(
            text(f"DELETE FROM {LOG} WHERE id < (SELECT max(id) FROM {LOG})"),
        )

    async def emptied() -> bool:
        return cache.epoch > epoch and len(cache) == 0

    await eventually(emptied)
    assert cache.live
    record = await load(reader, changed)
    assert record is not None and record.data == {"a": 2}
    hits = cache.hits
    assert await load(reader, untouched) is not None and cache.hits == hits  # read again


async def test_the_feed_purges_old_changes_and_keeps_the_newest(sqlite_apps: list[App]) -> None:
    writer, reader = sqlite_apps
    for _, store in sqlite_apps:
        feed_of(store).keep_changes = 3
        feed_of(store).purge_interval = 0.01
    key = await cached_in(reader, writer, make_record("8", n=0))
    for n in range(1, 11):
        async with atomic(writer[0]) as uow:
            await writer[1].update(key, Changes([("set", "n", n)]), uow)

    async def purged() -> bool:
        return len(await log_rows(writer[0])) <= 4

    await eventually(purged)
    rows = await log_rows(writer[0])
    assert rows[-1][1:] == (key, 11)  # the newest row survives every purge

    async def sees_10() -> bool:
        record = await load(reader, key)
        return record is not None and record.data == {"n": 10}

    await eventually(sees_10)


async def test_a_feed_whose_connection_is_closed_goes_dark_until_it_is_back(
    sqlite_apps: list[App],
) -> None:
    app = sqlite_apps[1]
    cache, feed = app[1].cache, feed_of(app[1])
    assert cache is not None
    feed.reconnect_delay = 0.05
    key = await stored(app, make_record("9"))
    await load(app, key)
    assert len(cache) == 1
    poller = feed.poller
    assert poller is not None and poller.connection is not None

    def dropped(_connection: object, _query: str) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    # Its next look fails, as on a connection the file system dropped. (Closing the connection
    # from this thread while the poller may be using it could crash the interpreter.)
    poller._scalar = dropped  # type: ignore[method-assign]

    async def dark() -> bool:
        return not cache.live

    await eventually(dark)
    assert len(cache) == 0
    assert await load(app, key) is not None  # read from the file meanwhile

    async def back() -> bool:
        return cache.live and feed.poller is not poller

    await eventually(back)
    await load(app, key)
    assert await load(app, key) is not None and len(cache) == 1


async def test_the_feed_polls_on_the_event_loop_without_a_thread(shared_sqlite_url: str) -> None:
    """A thread polling every 2 ms took the interpreter's lock from the event loop at every
    wake-up, and every request paid for it; the polls are the loop's own now."""
    engine = create_engine(shared_sqlite_url)
    await with_table(engine)
    await create_change_log(engine)
    threads = set(threading.enumerate())
    store = SqlStore(SESSIONS, cache=True)
    await store.start(engine)
    try:
        assert store.cache is not None and store.cache.live
        started = set(threading.enumerate()) - threads
        assert all(thread.name.startswith("sqlite-checkpoint") for thread in started), started
        assert not any("SqliteFeed" in thread.name for thread in threading.enumerate())
    finally:
        await store.aclose()
        await engine.dispose()


async def test_a_purge_that_meets_a_writer_neither_waits_on_the_loop_nor_drops_the_feed(
    sqlite_apps: list[App], shared_sqlite_url: str
) -> None:
    """The polls run on the event loop, so none may wait for the file. The purge is the one
    write among them: while another connection holds the write lock for 0.3 s, the purges
    tried meanwhile give up at once (the loop keeps ticking, the cache stays live), and the
    first one after it deletes the old rows."""
    writer, reader = sqlite_apps
    feed = feed_of(reader[1])
    feed.keep_changes, feed.purge_interval = 1000, 0.01  # nothing to purge yet
    key = await cached_in(reader, writer, make_record("20", step=0))
    for step in (1, 2, 3):
        async with atomic(writer[0]) as uow:
            await writer[1].update(key, Changes([("set", "step", step)]), uow)
    cache = reader[1].cache
    assert cache is not None
    holder = sqlite3.connect(shared_sqlite_url.split("///", 1)[1], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute(f"DELETE FROM {LOG} WHERE id < 0")  # the write lock, nothing changed
        rows = len(await log_rows(writer[0]))
        assert rows >= 3
        feed.keep_changes = 1  # from now on every poll tries to purge
        ticks, started = 0, time.monotonic()
        while time.monotonic() - started < 0.3:
            await asyncio.sleep(0.005)
            ticks += 1
        # 60 ticks if nothing waits; the bound leaves room for a loaded machine. A purge that
        # waited for the lock on the loop would stall it for its busy timeout at every try
        # (every 10 ms): 30 ms or more of it leaves fewer than 10 ticks.
        assert ticks >= 10, f"the loop ticked {ticks} times in 0.3 s"
        assert cache.live
        assert len(await log_rows(writer[0])) == rows  # nothing could be purged meanwhile
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    async def purged() -> bool:
        return len(await log_rows(writer[0])) == 1

    await eventually(purged)
    assert cache.live


async def test_a_feed_that_stops_polling_is_noticed(
    sqlite_apps: list[App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poller stuck on a file system that hangs says nothing: its silence is noticed."""
    monkeypatch.setattr(SqliteFeed, "heartbeat", 0.05)
    engine = sqlite_apps[0][0]
    store = SqlStore(SESSIONS, cache=True)
    await store.start(engine)
    try:
        cache, feed = store.cache, feed_of(store)
        assert cache is not None and cache.live and feed.poller is not None
        feed.poller.stop.set()  # it never looks again (and says nothing)

        async def dark() -> bool:
            return not cache.live

        await eventually(dark)
    finally:
        await store.aclose()


async def test_without_the_change_log_the_sqlite_cache_stays_off(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}")
    await with_table(engine)
    store = SqlStore(SESSIONS, cache=True)
    started = time.monotonic()
    await store.start(engine)
    try:
        assert time.monotonic() - started < 0.5, "start waited for a feed that cannot come"
        assert store.cache is not None and not store.cache.live
        key = await stored((engine, store), make_record())
        await load((engine, store), key)
        assert len(store.cache) == 0
    finally:
        await store.aclose()
        await engine.dispose()


async def test_a_trigger_dropped_while_the_feed_runs_turns_the_cache_off(
    sqlite_apps: list[App],
) -> None:
    """A migration that rebuilds the table drops its triggers: the feed sees the schema move."""
    writer, reader = sqlite_apps
    cache = reader[1].cache
    assert cache is not None
    await cached_in(reader, writer, make_record("10"))
    async with writer[0].begin() as connection:
        await connection.execute(text(f"DROP TRIGGER {sqlite_trigger_names(SESSIONS)[1]}"))

    async def dark() -> bool:
        return not cache.live

    await eventually(dark)
    assert len(cache) == 0


async def test_an_in_memory_database_has_no_feed_and_no_cache() -> None:
    engine = create_engine("sqlite+aiosqlite://")
    async with engine.begin() as connection:
        await connection.run_sync(SESSIONS.create)
    store = SqlStore(SESSIONS, cache=True)
    await store.start(engine)
    try:
        assert store._feed is None
        assert store.cache is not None and not store.cache.live
    finally:
        await store.aclose()
        await engine.dispose()


def test_data_version_moves_for_commits_of_other_connections_of_the_same_process(
    tmp_path: Path,
) -> None:
    """What the feed relies on (SQLite's documentation says so; checked here): another
    connection's commit moves it, in this process too; its own, or a rollback, does not."""
    path = tmp_path / "versions.db"
    watcher = sqlite3.connect(path, isolation_level=None)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("CREATE TABLE t (x INTEGER)")

        def version() -> int:
            return int(watcher.execute("PRAGMA data_version").fetchone()[0])

        before = version()
        writer.execute("INSERT INTO t VALUES (1)")
        after_commit = version()
        assert after_commit != before
        writer.execute("BEGIN")
        writer.execute("INSERT INTO t VALUES (2)")
        writer.execute("ROLLBACK")
        assert version() == after_commit
        watcher.execute("INSERT INTO t VALUES (3)")
        assert version() == after_commit
    finally:
        watcher.close()
        writer.close()


READER_PROCESS = """
import asyncio, sys, time

from sqlalchemy import MetaData

from fastapi_atomic import atomic, create_engine
from fastapi_atomic.websession import SqlStore, web_sessions_table


async def main(url: str, table: str, key: str) -> None:
    engine = create_engine(url)
    store = SqlStore(web_sessions_table(MetaData(), name=table), cache=True)
    await store.start(engine)
    assert store.cache is not None and store.cache.live, "the feed did not start"

    async def load():
        async with atomic(engine) as uow:
            return await store.load(key, uow)

    assert await load() is not None and await load() is not None
    assert store.cache.hits == 1, "the second read did not come from memory"
    print("cached", flush=True)
    deadline = time.monotonic() + 10
    while await load() is not None:
        assert time.monotonic() < deadline, "the logout never reached this process"
        await asyncio.sleep(0.001)
    print("gone", flush=True)
    await store.aclose()
    await engine.dispose()


asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_logout_reaches_another_os_process(
    sqlite_apps: list[App], shared_sqlite_url: str, tmp_path: Path
) -> None:
    writer = sqlite_apps[0]
    key = await stored(writer, make_record("11"))
    script = tmp_path / "reader.py"
    script.write_text(textwrap.dedent(READER_PROCESS), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        shared_sqlite_url,
        SESSIONS.name,
        key,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        async with asyncio.timeout(30):
            line = await process.stdout.readline()
            assert line == b"cached\n", (line + await process.stderr.read()).decode()
            async with atomic(writer[0]) as uow:
                await writer[1].delete(key, uow)
            line = await process.stdout.readline()
            assert line == b"gone\n", (line + await process.stderr.read()).decode()
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_shop_caches_sessions_on_sqlite_and_a_logout_reaches_its_other_app(
    sqlite_url: str,
) -> None:
    """Two shop apps on one SQLite file (``session_cache`` left at its default): a session
    logged in through one is read from memory in the other until it logs out there."""
    settings = make_settings(sqlite_url)
    async with running(settings) as first, running(settings) as second:
        stores = [session_store_of(app) for app in (first, second)]
        assert all(store.cache is not None and store.cache.live for store in stores)
        browser, csrf = await log_in(first, *ADMIN)
        other = client_for(second)
        other.cookies = browser.cookies
        try:
            cache = stores[1].cache
            assert cache is not None
            assert (await other.get("/api/session")).status_code == 200
            hits = cache.hits
            assert (await other.get("/api/session")).status_code == 200
            assert cache.hits > hits
            assert (await browser.delete("/api/session", headers={"X-CSRF-Token": csrf})).is_success

            async def logged_out() -> bool:
                return (await other.get("/api/session")).status_code == 401

            assert await eventually(logged_out) < REVOCATION_BOUND
        finally:
            await browser.aclose()
            await other.aclose()


def session_store_of(app: FastAPI) -> SqlStore:
    """The store the app's AtomicMiddleware was given."""
    for middleware in app.user_middleware:
        manager = middleware.kwargs.get("websessions")
        if isinstance(manager, WebSessionManager):
            store = manager.store
            assert isinstance(store, SqlStore)
            return store
    raise AssertionError("the app has no AtomicMiddleware")


def test_the_cache_feed_table_names_follow_the_table() -> None:
    table = web_sessions_table(MetaData(), name="sessions")
    assert change_log_name(table) == "sessions_changes"
    assert sqlite_trigger_names(table) == ("sessions_log_update", "sessions_log_delete")
