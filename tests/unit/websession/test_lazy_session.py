"""A request whose route never asks for the web session costs no parsing and no store read."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from fastapi_atomic import AtomicMiddleware, UnitOfWork, create_engine
from fastapi_atomic.websession import KeyRing, MemoryStore, WebSessionDep, WebSessionManager
from fastapi_atomic.websession.record import SessionRecord
from fastapi_atomic.websession.signing import new_session_id


class CountingStore(MemoryStore):
    loads = 0

    async def load(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        self.loads += 1
        return await super().load(key, uow)


class CountingKeyRing(KeyRing):
    unsigned = 0

    def unsign(self, cookie: str) -> tuple[str, bool] | None:
        self.unsigned += 1
        return super().unsign(cookie)


async def test_only_routes_that_ask_for_the_session_read_it() -> None:
    store, keys = CountingStore(), CountingKeyRing(["k" * 32])
    engine = create_engine("sqlite+aiosqlite://")
    app = FastAPI()
    app.add_middleware(AtomicMiddleware, engine=engine, websessions=WebSessionManager(store, keys))

    @app.get("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/with-session")
    async def with_session(websession: WebSessionDep) -> dict[str, bool]:
        return {"live": websession.is_live}

    cookie = {"Cookie": f"session={keys.sign(new_session_id())}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/plain", headers=cookie)).json() == {"ok": True}
        assert (store.loads, keys.unsigned) == (0, 0)
        assert (await client.get("/with-session", headers=cookie)).json() == {"live": False}
        assert (store.loads, keys.unsigned) == (1, 1)
    await engine.dispose()
