"""WebSession.flush(): the changes so far are written at once, and still undone by a rollback."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from fastapi_atomic import AtomicMiddleware, UnitOfWork, create_engine
from fastapi_atomic.websession import MemoryStore, WebSessionDep, WebSessionManager
from fastapi_atomic.websession.record import Changes, SessionRecord


class RecordingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[object] = []
        #: fail the save at COMMIT after writing it, as a store that loses its connection would
        self.fail_after: object = None

    async def update(
        self, key: str, changes: Changes, uow: UnitOfWork, *, current: SessionRecord | None = None
    ) -> SessionRecord | None:
        saved = await super().update(key, changes, uow, current=current)
        items = saved.data.get("items") if saved else None
        self.written.append(items)
        if items == self.fail_after:
            raise RuntimeError("the store failed after writing")
        return saved


async def test_flushed_changes_commit_with_the_rest_or_roll_back_with_it() -> None:
    store = RecordingStore()
    engine = create_engine("sqlite+aiosqlite://")
    app = FastAPI()
    manager = WebSessionManager(store, ["k" * 32], secure=False)
    app.add_middleware(AtomicMiddleware, engine=engine, websessions=manager)

    @app.post("/start")
    async def start(websession: WebSessionDep) -> None:
        websession["items"] = ["first"]

    @app.post("/add/{fail}")
    async def add(fail: bool, websession: WebSessionDep) -> None:
        websession.append("items", "flushed")
        await websession.flush()
        assert store.written[-1] == ["first", "flushed"]  # written before the handler ended
        websession.append("items", "at commit")
        # The save at COMMIT fails after writing: both of the session's writes are undone.
        store.fail_after = ["first", "flushed", "at commit"] if fail else None

    @app.get("/items")
    async def items(websession: WebSessionDep) -> object:
        return websession.get("items")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post("/start")
        assert (await client.post("/add/true")).status_code == 503  # nothing saved
        assert store.written[-1] == ["first", "flushed", "at commit"]
        assert (await client.get("/items")).json() == ["first"]  # undone, latest write first
        assert (await client.post("/add/false")).status_code == 200
        assert (await client.get("/items")).json() == ["first", "flushed", "at commit"]
    await engine.dispose()
