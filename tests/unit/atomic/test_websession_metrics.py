"""The web-session counters (``atomic_websession_*``): loads, writes, the read cache's answers."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from fastapi_atomic import AtomicMiddleware, create_engine
from fastapi_atomic.testing import FakeUnitOfWork, make_record, new_key
from fastapi_atomic.websession import (
    MemoryStore,
    RecordCache,
    RedisStore,
    SqlStore,
    WebSessionDep,
    WebSessionManager,
)
from fastapi_atomic.websession.metrics import WebSessionMetrics


def counted(store: MemoryStore) -> WebSessionMetrics:
    """Counters of the store's own, in a registry of their own."""
    metrics = WebSessionMetrics.create(CollectorRegistry())
    store._store_counters = metrics.for_store(store.kind)
    return metrics


def value(counter: object, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())  # type: ignore[attr-defined]


async def test_requests_count_their_loads_and_writes() -> None:
    store = MemoryStore()
    metrics = counted(store)
    engine = create_engine("sqlite+aiosqlite://")
    app = FastAPI()
    app.add_middleware(
        AtomicMiddleware,
        engine=engine,
        websessions=WebSessionManager(store, ["k" * 32], secure=False),
    )

    @app.post("/visit")
    async def visit(websession: WebSessionDep) -> dict[str, int]:
        websession.increment("visits")
        return {"visits": int(websession["visits"] or 0)}

    @app.post("/leave")
    async def leave(websession: WebSessionDep) -> None:
        websession.invalidate()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/visit")).json() == {"visits": 1}  # no cookie: no load
        assert (await client.post("/visit")).json() == {"visits": 2}
        await client.post("/leave")
    await engine.dispose()
    assert value(metrics.loads, "memory") == 2
    assert value(metrics.writes, "memory", "create") == 1
    assert value(metrics.writes, "memory", "update") == 1
    assert value(metrics.writes, "memory", "delete") == 1


async def test_the_cache_counts_hits_and_misses() -> None:
    store = MemoryStore()
    metrics = counted(store)
    uow, key = FakeUnitOfWork(), new_key()
    await store.create(key, make_record(), uow)
    store.cache = RecordCache()
    await store.load(key, uow)  # the feed is not live: nothing is served from memory
    store.cache.live = True
    await store.load(key, uow)  # read, and kept
    await store.load(key, uow)  # from memory
    assert value(metrics.loads, "memory") == 3
    assert value(metrics.cache, "memory", "miss") == 2
    assert value(metrics.cache, "memory", "hit") == 1


def test_each_store_counts_under_its_own_label_by_default() -> None:
    assert (SqlStore.kind, RedisStore.kind, MemoryStore.kind) == ("sql", "redis", "memory")
    default = WebSessionMetrics.default()
    assert MemoryStore().counters.loads is default.loads.labels("memory")
