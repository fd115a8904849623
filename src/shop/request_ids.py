"""Request ids: the client's ``X-Request-ID`` (or a new one) on the response and on every log
line written while the request runs, so one request can be followed through the logs.

A client's id is kept only if it is 1 to 128 characters of letters, digits and ``._-``: it is
written into log lines, and anything else could forge one.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
_ACCEPTABLE = re.compile(r"[A-Za-z0-9._-]{1,128}")

#: the id of the request this task serves; "-" outside any request
request_id: ContextVar[str] = ContextVar("request_id", default="-")


class RequestIdMiddleware:
    """Outermost, so that every response (the unit of work's 503s too) carries the id.

    The id is not reset when the request ends: the server runs each request in a task of its
    own, and the error it logs after an app's exception belongs to the request too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        rid = given if _ACCEPTABLE.fullmatch(given) else uuid.uuid4().hex
        request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestIdFilter(logging.Filter):
    """Gives every record the ``request_id`` the log format prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def log_config(
    level: str = "INFO", root_level: str = "WARNING", log_format: str = "text"
) -> dict[str, Any]:
    """One format (``text`` or ``json``, see :mod:`shop.logs`) for uvicorn's logs (at
    ``level``) and everything else (the shop's, the library's, at ``root_level``), each line
    with a timestamp, the level, the logger and the request id.

    uvicorn's own access log is off: the shop writes one line per request itself (logger
    ``shop.access``, on stdout), with the route, the duration and what the unit of work did;
    business events (``shop.events``) are logged at INFO whatever ``root_level`` says.
    """
    formatter = {
        "()": "shop.logs.JsonFormatter" if log_format == "json" else "shop.logs.TextFormatter"
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "shop.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "shop.events": {"level": "INFO"},
        },
        "root": {"handlers": ["default"], "level": root_level},
    }
