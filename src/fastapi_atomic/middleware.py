"""AtomicMiddleware: each HTTP request is one unit of work, committed before its response.

Usage::

    engine = fastapi_atomic.create_engine("postgresql+asyncpg://…")
    app = FastAPI()
    app.add_middleware(AtomicMiddleware, engine=engine)

    @app.post("/things")
    async def create(db: fastapi_atomic.DB) -> dict[str, int]:
        db.add(thing := Thing())
        await db.flush()
        return {"id": thing.id}   # committed before the client sees this

The response start is intercepted: a status below 400 runs the before-commit hooks (web
session saves) and COMMITs, and only then are the status and headers sent; a status of 400 or
more, or an exception, rolls back. A COMMIT that fails becomes a 503, never a 2xx for data that
is not there. A serialization failure, deadlock or SQLite lock, while nothing has been committed
or sent, re-runs the whole request on a fresh unit of work (the body is buffered for that).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .exceptions import ReplayResponse, ServiceUnavailable
from .metrics import AtomicMetrics
from .retry import CONNECTION_LOST, Backoff, retry_reason
from .unit_of_work import CapturedResponse, UnitOfWork

logger = logging.getLogger("fastapi_atomic")

SCOPE_KEY = "fastapi_atomic.uow"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class RequestParticipant(Protocol):
    """Something that takes part in every attempt of every request (a web-session manager).

    ``start`` is called with a fresh unit of work before the app runs; the participant keeps
    its per-request state in ``uow.extensions`` and registers hooks on the unit of work.
    """

    def start(self, scope: Scope, uow: UnitOfWork) -> None: ...


class _Retry(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Unavailable(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AtomicMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: AsyncEngine,
        participants: Sequence[RequestParticipant] = (),
        backoff: Backoff | None = None,
        max_body_size: int = 1024 * 1024,
        rollback_status: int = 400,
        metrics: AtomicMetrics | None = None,
    ) -> None:
        self.app = app
        self.engine = engine
        self.participants = tuple(participants)
        self.backoff = backoff or Backoff()
        self.max_body_size = max_body_size
        self.rollback_status = rollback_status
        self.metrics = metrics or AtomicMetrics.default()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive)
        if body is None:
            await _send_json(send, 413, f"Request body larger than {self.max_body_size} bytes.")
            return

        request_id = ""  # made on first use, then kept by every attempt
        attempt = 1
        while True:
            uow = UnitOfWork(
                self.engine,
                write_intent=scope["method"] not in SAFE_METHODS,
                phase_backoff=self.backoff,
                request_id=request_id,
            )
            attempt_scope = dict(scope)
            attempt_scope[SCOPE_KEY] = uow
            attempt_scope["state"] = dict(scope.get("state") or {})
            for participant in self.participants:
                participant.start(attempt_scope, uow)
            responder = _Responder(send, uow, self.rollback_status, self.metrics)
            try:
                await self.app(attempt_scope, _replay(body, receive), responder.send)
            except Exception as exc:
                await uow.rollback()
                await uow.close()
                request_id = uow.request_id_if_made
                if responder.started:
                    raise
                if isinstance(exc, ReplayResponse):
                    self.metrics.outcome("replayed").inc()
                    await exc.send(send)
                    return
                reason = exc.reason if isinstance(exc, _Retry) else retry_reason(exc)
                if reason is not None:
                    if uow.can_retry and attempt < self.backoff.attempts:
                        self.metrics.retries.labels(reason=reason).inc()
                        await asyncio.sleep(self.backoff.delay(attempt))
                        attempt += 1
                        continue
                    self.metrics.outcome("retries_exhausted").inc()
                    await _send_json(
                        send, 503, "The request kept conflicting with others; try again."
                    )
                    return
                detail = _unavailable_detail(exc)
                if detail is None:
                    self.metrics.outcome("error").inc()
                    raise
                self.metrics.outcome("unavailable").inc()
                await _send_json(send, 503, detail)
                return
            await uow.close()
            await uow.run_after_commit_hooks()
            return

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_size:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _Responder:
    """Wraps ``send``: decides commit or rollback at the response start, then lets it through.

    When the unit of work asks for the response (an idempotency record stores it), the start is
    held back until the whole body is known, and the decision is taken then.
    """

    def __init__(
        self, send: Send, uow: UnitOfWork, rollback_status: int, metrics: AtomicMetrics
    ) -> None:
        self._send = send
        self.uow = uow
        self.rollback_status = rollback_status
        self.metrics = metrics
        self.started = False
        self._held: Message | None = None
        self._chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if self.started:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            if self.uow.capture_response:
                self._held = message
                return
            await self._decide(message, None)
            await self._send(message)
            return
        if message["type"] == "http.response.body" and self._held is not None:
            self._chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start, body = self._held, b"".join(self._chunks)
            await self._decide(start, body)
            await self._send(start)
            await self._send({"type": "http.response.body", "body": body})
            return
        await self._send(message)

    async def _decide(self, start: Message, body: bytes | None) -> None:
        status = int(start["status"])
        self.uow.response = CapturedResponse(status, list(start.get("headers", [])), body)
        if status < self.rollback_status:
            await self._commit()
            self.uow.apply_response_headers(start)
            self.metrics.outcome("committed").inc()
        else:
            await self.uow.rollback()
            self.metrics.rollback("error_status").inc()
            self.metrics.outcome("rolled_back").inc()
        self.started = True

    async def _commit(self) -> None:
        try:
            await self.uow.commit()
        except Exception as exc:
            await self.uow.rollback()
            reason = retry_reason(exc)
            self.metrics.rollback(reason or "commit_failed").inc()
            # A connection lost during COMMIT leaves the outcome unknown: never re-run that.
            if reason not in (None, CONNECTION_LOST) and self.uow.can_retry:
                raise _Retry(str(reason)) from exc
            detail = _unavailable_detail(exc)
            if detail is None and reason == CONNECTION_LOST:
                logger.exception("connection lost during COMMIT; the outcome is unknown")
                detail = "The database connection was lost while saving; the outcome is unknown."
            elif detail is None:
                logger.exception("commit failed; the client gets a 503")
                detail = "The request could not be saved; nothing was changed. Try again."
            raise _Unavailable(detail) from exc
        if self.uow.has_session:
            self.metrics.commits.inc()


def _unavailable_detail(exc: BaseException) -> str | None:
    if isinstance(exc, _Unavailable | ServiceUnavailable):
        return exc.detail
    if isinstance(exc, PoolTimeout):
        return "The database is busy (no free connection); try again."
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
