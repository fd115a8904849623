"""starsessions on Redis answering an authenticated session read (a baseline)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from starsessions import SessionAutoloadMiddleware, SessionMiddleware
from starsessions.stores.redis import RedisStore

app = FastAPI()
app.add_middleware(SessionAutoloadMiddleware)
app.add_middleware(
    SessionMiddleware,
    store=RedisStore(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")),
    cookie_https_only=False,
    lifetime=3600,
)


@app.post("/api/session")
async def login(request: Request, body: dict[str, str]) -> dict[str, Any]:
    request.session["user_id"] = 1
    request.session["order_ids"] = []
    return {"user": {"id": 1}}


@app.get("/api/session")
async def read_session(request: Request) -> dict[str, Any]:
    if "user_id" not in request.session:
        raise HTTPException(401, "Not logged in.")
    return {"user": {"id": request.session["user_id"]}, "order_ids": request.session["order_ids"]}
