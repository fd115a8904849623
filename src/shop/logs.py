"""The shop's logs: two formats, one access line per request, business events after commit.

- ``text`` (development's default): ``timestamp LEVEL logger [request id] message key=value...``
  for a person reading a terminal.
- ``json`` (production's default): one JSON object per line, for a log pipeline: ``timestamp``
  (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``request_id``, ``pid``, then the
  record's own fields (``extra=``), and ``exception`` with its traceback.

Every request gets one access line (logger ``shop.access``), written by
:class:`AccessLogMiddleware` once its response is sent: method, path, route template, status,
duration, client and what its unit of work did (:func:`fastapi_atomic.transaction_outcome`).
The same middleware times the request into ``shop_http_request_duration_seconds``.

Business events (logger ``shop.events``) are written only once what they report is committed
(:func:`after_commit`): a line for an order whose transaction then rolled back would lie.

What is never logged: passwords, cookies, CSRF tokens, session ids, card numbers. No line is
made from a request's headers or body, the access line drops the query string, the engine
hides bound values, and both formats mask a card number (13 to 19 digits whose Luhn check
digit checks) found in a message or a traceback (an error message quoting its input, say).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, ClassVar, Self
from urllib.parse import quote

from fastapi.routing import iter_route_contexts
from prometheus_client import CollectorRegistry, Histogram
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_atomic import MetricSet, current_unit_of_work, transaction_outcome

from .request_ids import request_id

access_logger = logging.getLogger("shop.access")
events_logger = logging.getLogger("shop.events")

#: the text format (what `shop serve` printed before there was a JSON one)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

#: attributes every LogRecord has: anything else on a record came with ``extra=``
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "color_message",  # uvicorn's colored copy of its message
}
#: what may be a card number in a message or a traceback (masked if its Luhn digit checks)
_CARD_LIKE = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def _masked(text: str) -> str:
    return _CARD_LIKE.sub(_mask_card, text) if text else text


def _mask_card(match: re.Match[str]) -> str:
    digits = match[0]
    return "[card number masked]" if _luhn(digits) else digits


def _luhn(digits: str) -> bool:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _fields(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    """The fields a record was given with ``extra=``."""
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
            yield key, value


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a traceback is a field, never lines of its own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _masked(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
            "pid": record.process,
        }
        for key, value in _fields(record):
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = _masked(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = _masked(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, the record's fields appended as ``key=value``."""

    #: the access line's fields that its message already shows
    shown_in_message: ClassVar[frozenset[str]] = frozenset(
        {"method", "path", "status", "client", "http_version"}
    )
    #: fields left out while they are 0
    quiet_when_zero: ClassVar[frozenset[str]] = frozenset({"retries", "phases"})

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _masked(record.message)
        if not hasattr(record, "request_id"):  # a handler without the request-id filter
            record.request_id = request_id.get()
        line = super().formatMessage(record)
        shown = [
            f"{key}={_text(value)}"
            for key, value in _fields(record)
            if key not in self.shown_in_message
            and value is not None
            and value != ()
            and value != []
            and not (value == 0 and key in self.quiet_when_zero)
        ]
        return f"{line} {' '.join(shown)}" if shown else line

    def formatException(self, ei: Any) -> str:
        return _masked(super().formatException(ei))


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = ",".join(str(item) for item in value)
    # One record, one line: a value cannot start a line that looks like another record.
    return str(value).replace("\n", "\\n").replace("\r", "\\r")


# --- the access line and the latency histogram ------------------------------------------------

#: the route of a request no route matched (a 404, a redirect to the path with a slash)
UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True)
class HttpMetrics(MetricSet):
    latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Self:
        return cls(
            latency=Histogram(
                "shop_http_request_duration_seconds",
                "Time from a request's arrival to the end of its response.",
                ["method", "route", "status_class"],
                registry=registry,
            )
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        status_class = _STATUS_CLASSES[status // 100] if 0 <= status < 600 else "5xx"
        method = method if method in _METHODS else "other"
        self.child(self.latency, method, route, status_class).observe(seconds)


class AccessLogMiddleware:
    """One access line per request, and its latency. Add it inside the request-id middleware
    (the line carries the id) and outside :class:`~fastapi_atomic.AtomicMiddleware` (it reads
    the unit of work's outcome and the matched route it leaves in the scope)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics or HttpMetrics.default()
        self._templates: dict[int, str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except BaseException:
            status = status or 500  # the server answers the exception with a 500
            raise
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = self.route_of(scope)
        method: str = scope["method"]
        self.metrics.observe(method, route, status, seconds)
        if not access_logger.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        address = f"{client[0]}:{client[1]}" if client else "-"
        path = quote(scope["path"])  # as uvicorn's line had it: no line breaks, no query string
        version = scope.get("http_version", "1.1")
        outcome = transaction_outcome(scope)
        access_logger.info(
            '%s "%s %s HTTP/%s" %d',
            address,
            method,
            path,
            version,
            status,
            extra={
                "method": method,
                "path": path,
                "http_version": version,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "client": address,
                "outcome": outcome.outcome if outcome is not None else None,
                "retries": len(outcome.retries) if outcome is not None else 0,
                "retry_reasons": list(outcome.retries) if outcome is not None else [],
                "rollback_reason": outcome.rollback_reason if outcome is not None else None,
                "phases": outcome.phases if outcome is not None else 0,
            },
        )

    def route_of(self, scope: Scope) -> str:
        """The template of the route that answered (``/api/orders/{order_id}``), as matched."""
        templates = self._templates
        if templates is None:
            templates = self._templates = route_templates(getattr(scope.get("app"), "routes", []))
        route = scope.get("route")
        if route is not None:
            return templates.get(id(route)) or getattr(route, "path_format", None) or UNMATCHED
        endpoint = scope.get("endpoint")  # a plain Starlette route or a mount sets no route
        if endpoint is not None:
            return templates.get(id(endpoint), UNMATCHED)
        return UNMATCHED


def route_templates(routes: Iterable[Any]) -> dict[int, str]:
    """The full template of each route (its routers' prefixes included), by the id of the
    route and of its endpoint: FastAPI puts the route as declared in the scope, whose own path
    lacks the prefixes. A route included twice has no single template: it is left out."""
    templates: dict[int, str] = {}
    ambiguous: set[int] = set()
    for context in iter_route_contexts(list(routes)):
        template = context.path_format
        if not template:
            continue
        original = context.original_route
        endpoint = getattr(original, "endpoint", None) or getattr(original, "app", None)
        for key in {id(original), id(endpoint)} if endpoint is not None else {id(original)}:
            if templates.setdefault(key, template) != template:
                ambiguous.add(key)
    for key in ambiguous:
        del templates[key]
    return templates


# --- business events ---------------------------------------------------------------------------


def after_commit(db: AsyncSession, message: str, **fields: Any) -> None:
    """Log ``message`` with ``fields`` (INFO, ``shop.events``) once ``db``'s transaction has
    committed; never if it rolls back.

    ``db`` is the request's AsyncSession (the line waits for its unit of work's ``on_commit``)
    or a phase's (it waits for that session's COMMIT). Fields are ids, amounts and codes:
    never a card number, a password or a token.
    """
    if not events_logger.isEnabledFor(logging.INFO):
        return
    line = partial(events_logger.info, message, extra=fields)
    uow = current_unit_of_work()
    if uow is not None and uow.db is db:
        uow.on_commit(line)
    else:
        event.listen(db.sync_session, "after_commit", lambda _session: line(), once=True)


def committed(message: str, **fields: Any) -> None:
    """Log a business event whose transaction has already committed (a phase that returned)."""
    events_logger.info(message, extra=fields)
