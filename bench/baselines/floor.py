"""The floor: the same FastAPI + uvicorn stack answering a constant, no session, no database."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
