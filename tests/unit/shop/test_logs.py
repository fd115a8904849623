"""The shop's log formats and its access line, on an app of their own (SQLite in memory)."""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException
from prometheus_client import CollectorRegistry
from sqlalchemy import literal, select

from fastapi_atomic import AtomicMetrics, AtomicMiddleware, DBDep, create_engine
from shop.logs import (
    UNMATCHED,
    AccessLogMiddleware,
    HttpMetrics,
    JsonFormatter,
    TextFormatter,
)
from shop.request_ids import RequestIdMiddleware, log_config, request_id
from shop.settings import Settings

CARD = "4242424242424242"


def record(message: str = "hello %s", *args: Any, **fields: Any) -> logging.LogRecord:
    made = logging.LogRecord("shop.test", logging.INFO, __file__, 1, message, args or None, None)
    for key, value in fields.items():
        setattr(made, key, value)
    return made


def test_a_json_line_has_the_fields_in_utc() -> None:
    token = request_id.set("rid-1")
    try:
        line = JsonFormatter().format(record("hello %s", "world", order_id=7, total=100))
    finally:
        request_id.reset(token)
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert (entry["level"], entry["logger"], entry["request_id"]) == ("INFO", "shop.test", "rid-1")
    assert (entry["order_id"], entry["total"]) == (7, 100)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["timestamp"])
    assert isinstance(entry["pid"], int)
    assert "color_message" not in entry and "args" not in entry


def test_a_traceback_stays_inside_its_one_line() -> None:
    try:
        raise ValueError("bad input\nINFO forged line")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    line = JsonFormatter().format(made)
    assert "\n" not in line
    entry = json.loads(line)
    assert "ValueError: bad input\nINFO forged line" in entry["exception"]


def test_a_card_number_in_a_message_or_a_traceback_is_masked() -> None:
    try:
        raise ValueError(f"card {CARD} refused")
    except ValueError:
        made = record("charging %s", CARD)
        made.exc_info = sys.exc_info()
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(made)
        assert CARD not in line
        assert "[card number masked]" in line
    # Digits that are not a card number (the Luhn check fails) are left alone.
    assert "4242424242424241" in JsonFormatter().format(record("id %s", "4242424242424241"))


def test_a_text_line_appends_the_fields() -> None:
    made = record("order placed", order_id=7, retries=0, reasons=("a", "b"), gone=None)
    made.request_id = "rid-2"
    line = TextFormatter().format(made)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO shop.test \[rid-2\] order placed "
        r"order_id=7 reasons=a,b",
        line,
    )


def test_the_log_format_follows_the_environment() -> None:
    keys = ["k" * 32]
    assert Settings(_env_file=None).log_format == "text"  # type: ignore[call-arg]
    production = Settings(_env_file=None, env="production", secret_keys=keys)  # type: ignore[call-arg]
    assert production.log_format == "json"
    chosen = Settings(_env_file=None, env="production", secret_keys=keys, log_format="text")  # type: ignore[call-arg]
    assert chosen.log_format == "text"


def test_the_config_silences_uvicorns_access_log() -> None:
    config = log_config(log_format="json")
    assert config["formatters"]["default"]["()"] == "shop.logs.JsonFormatter"
    assert config["loggers"]["uvicorn.access"]["handlers"] == []
    assert config["loggers"]["shop.access"]["level"] == "INFO"
    assert log_config()["formatters"]["default"]["()"] == "shop.logs.TextFormatter"


# --- the access line ---------------------------------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[tuple[FastAPI, HttpMetrics]]:
    engine = create_engine("sqlite+aiosqlite://")
    application = FastAPI()
    router = APIRouter(prefix="/things")

    @router.get("/{thing_id}")
    async def read(thing_id: int, db: DBDep) -> dict[str, int]:
        return {"thing": int(await db.scalar(select(literal(thing_id))) or 0)}

    @router.post("/{thing_id}/fail")
    async def fail(thing_id: int) -> None:
        raise HTTPException(409, "no")

    @router.get("/{thing_id}/crash")
    async def crash(thing_id: int) -> None:
        raise RuntimeError("bug")

    application.include_router(router, prefix="/api")
    metrics = HttpMetrics.create(CollectorRegistry())
    application.add_middleware(
        AtomicMiddleware, engine=engine, metrics=AtomicMetrics.create(CollectorRegistry())
    )
    application.add_middleware(AccessLogMiddleware, metrics=metrics)
    application.add_middleware(RequestIdMiddleware)
    yield application, metrics
    await engine.dispose()


async def get(application: FastAPI, method: str, path: str, rid: str) -> int:
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.request(method, path, headers={"X-Request-ID": rid})
    return response.status_code


def access_line(caplog: pytest.LogCaptureFixture, rid: str) -> dict[str, Any]:
    """The one access line of request ``rid``, as its JSON object."""
    lines = [r for r in caplog.records if r.name == "shop.access" and r.request_id == rid]
    assert len(lines) == 1, lines
    return dict(json.loads(JsonFormatter().format(lines[0])))


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Access lines captured with their request ids, as the server's handler gets them."""
    from shop.request_ids import RequestIdFilter

    caplog.set_level(logging.INFO, logger="shop.access")
    caplog.handler.addFilter(RequestIdFilter())
    return caplog


async def test_one_line_per_request_with_its_route_template_and_outcome(
    app: tuple[FastAPI, HttpMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    application, metrics = app
    assert await get(application, "GET", "/api/things/5?token=secret", "read") == 200
    line = access_line(caplog, "read")
    assert line["route"] == "/api/things/{thing_id}"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/things/5", 200)
    assert line["outcome"] == "read_only" and line["rollback_reason"] is None
    assert (line["retries"], line["retry_reasons"], line["phases"]) == (0, [], 0)
    assert line["duration_ms"] >= 0 and line["client"] == "127.0.0.1:123"
    assert "secret" not in json.dumps(line)  # the query string is left out
    assert line["message"] == '127.0.0.1:123 "GET /api/things/5 HTTP/1.1" 200'

    assert await get(application, "POST", "/api/things/5/fail", "refused") == 409
    refused = access_line(caplog, "refused")
    assert (refused["route"], refused["status"]) == ("/api/things/{thing_id}/fail", 409)
    assert (refused["outcome"], refused["rollback_reason"]) == ("rolled_back", "error_status")

    histogram = metrics.latency.labels("GET", "/api/things/{thing_id}", "2xx")
    assert histogram._sum.get() > 0  # observed once, with its duration
    assert metrics.latency.labels("POST", "/api/things/{thing_id}/fail", "4xx")._sum.get() > 0


async def test_an_exception_is_a_500_line_and_an_unknown_path_has_no_route(
    app: tuple[FastAPI, HttpMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    application, _ = app
    assert await get(application, "GET", "/api/things/1/crash", "crash") == 500
    crashed = access_line(caplog, "crash")
    assert (crashed["status"], crashed["route"]) == (500, "/api/things/{thing_id}/crash")
    assert (crashed["outcome"], crashed["rollback_reason"]) == ("rolled_back", "exception")

    assert await get(application, "GET", "/nowhere", "lost") == 404
    assert access_line(caplog, "lost")["route"] == UNMATCHED


async def test_the_text_line_reads_like_uvicorns(
    app: tuple[FastAPI, HttpMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    application, _ = app
    await get(application, "POST", "/api/things/5/fail", "text")
    made = next(r for r in caplog.records if getattr(r, "request_id", "") == "text")
    line = TextFormatter().format(made)
    assert line.endswith(
        '[text] 127.0.0.1:123 "POST /api/things/5/fail HTTP/1.1" 409 '
        "route=/api/things/{thing_id}/fail duration_ms="
        + str(made.duration_ms)
        + " outcome=rolled_back rollback_reason=error_status"
    )
