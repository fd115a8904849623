"""Liveness, readiness and metrics: outside /api, never touching the unit of work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
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
    """This process's metrics; with several workers (PROMETHEUS_MULTIPROC_DIR set, as `shop
    serve --workers N` does), all of theirs, summed, whichever worker answers."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
    forget_dead_workers(directory)
    registry = CollectorRegistry()  # one per scrape, as prometheus_client asks
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


#: a process's files of "livesum" (and other live) gauges: gauge_live<mode>_<pid>.db
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db")


def forget_dead_workers(directory: str) -> None:
    """Drop the gauges of workers that are gone (uvicorn replaces a worker that died, and
    a new one comes with each restart): a dead worker's connections are not in use. Their
    counters stay, so that totals never go down."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        found = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if found is None or _alive(int(found[1])):
            continue
        with contextlib.suppress(FileNotFoundError):  # another worker's scrape was first
            multiprocess.mark_process_dead(int(found[1]), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now has that pid
        return True
    return True
