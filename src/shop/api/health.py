"""Liveness, readiness and metrics: outside /api, never touching the unit of work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from .responses import REQUEST_ID, RETRY_AFTER, success

router = APIRouter(tags=["health"])

ReadinessCheck = Callable[[], Awaitable[None]]


@router.get("/healthz", responses={200: success()})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


class Ready(BaseModel):
    status: str
    checks: list[str]


class NotReady(BaseModel):
    detail: str
    failing: list[str]


@router.get(
    "/readyz",
    response_model=None,
    responses={
        200: {
            "model": Ready,
            "description": "The database (and a Redis session store) answer.",
            "headers": REQUEST_ID,
        },
        503: {
            "model": NotReady,
            "description": "Something did not answer.",
            "headers": {**REQUEST_ID, **RETRY_AFTER},
        },
    },
)
async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, ReadinessCheck] = request.app.state.readiness_checks
    results = await asyncio.gather(
        *(_run(check) for check in checks.values()), return_exceptions=False
    )
    failing = [name for name, ok in zip(checks, results, strict=True) if not ok]
    if failing:
        return JSONResponse(
            {"detail": f"not ready: {', '.join(failing)} did not answer", "failing": failing},
            status_code=503,
            headers={"Retry-After": "1"},  # like every 503
        )
    return JSONResponse({"status": "ready", "checks": list(checks)})


async def _run(check: ReadinessCheck) -> bool:
    try:
        await asyncio.wait_for(check(), timeout=2.0)
    except Exception:
        return False
    return True


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
