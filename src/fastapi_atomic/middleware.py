"""AtomicMiddleware: each HTTP request is one unit of work, committed before its response.

Usage::

    engine = fastapi_atomic.create_engine("postgresql+asyncpg://…")
    app = FastAPI()
    app.add_middleware(AtomicMiddleware, engine=engine)

    @app.post("/things", status_code=201)
    async def create(db: DBDep) -> ThingOut:
        db.add(thing := Thing())
        await db.flush()
        return ThingOut.model_validate(thing)   # committed before the client sees this

The response start is intercepted: a status below 400 runs the before-commit hooks (web
session saves) and COMMITs, and only then are the status and headers sent; a status of 400 or
more, or an exception, rolls back. A COMMIT that fails becomes a 503, never a 2xx for data that
is not there. A serialization failure, deadlock or SQLite lock, while nothing has been committed
or sent, re-runs the whole request on a fresh unit of work; the body the app read is kept for
that. Its size is FastAPI's to limit (``FastAPI(max_body_size=...)``, and a route's own
``max_body_size=``); a route that streams a large body it never needs again takes it as
:data:`~fastapi_atomic.BodyStream`, and it is not kept.

Web sessions and idempotency keys, when given, take part in every request; their stores start
and stop with the app (the ASGI lifespan), so the app needs no start-up code for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from fastapi import Depends, Request
from fastapi.responses import Response
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .dependencies import UNIT_OF_WORK
from .exceptions import ReplayResponse, ServiceUnavailable
from .metrics import AtomicMetrics
from .retry import CONNECTION_LOST, Backoff, database_unavailable, retry_reason
from .unit_of_work import CapturedResponse, SqlAlchemyUnitOfWork, UnitOfWork, _RequestSession

if TYPE_CHECKING:
    from .idempotency import IdempotencyKeys
    from .websession.manager import WebSessionManager

logger = logging.getLogger("fastapi_atomic")

#: where the middleware keeps its web-session manager and idempotency keys in the ASGI scope
WEBSESSIONS = "fastapi_atomic.websessions"
IDEMPOTENCY_KEYS = "fastapi_atomic.idempotency_keys"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


#: the request's body as read so far (:class:`_Body`), for whoever needs its bytes after a
#: form parser consumed the stream (an idempotency key's fingerprint)
KEPT_BODY = "fastapi_atomic.kept_body"

#: set in the scope by :func:`get_body_stream`: the route streams its body, none of it is kept
STREAMED_BODY = "fastapi_atomic.streamed_body"


async def get_body_stream(request: Request) -> AsyncIterator[bytes]:
    """The request body as a stream of chunks, none of them kept in memory.

    For a route that streams a body it never needs again (an upload): the middleware keeps
    every other body so that a request can be re-run after a serialization failure, and such
    a request is not re-run once its body began to be read.
    """
    request.scope[STREAMED_BODY] = True
    return request.stream()


BodyStream = Annotated[AsyncIterator[bytes], Depends(get_body_stream)]

#: where the middleware leaves the request's :class:`TransactionOutcome` in the ASGI scope
TRANSACTION_OUTCOME = "fastapi_atomic.transaction_outcome"


@dataclass(frozen=True)
class TransactionOutcome:
    """How the unit of work of one request ended: for its access log line, say.

    ``outcome`` is ``"committed"`` (its transaction wrote, and committed), ``"read_only"``
    (its transaction wrote nothing, and was committed all the same; any statement but a
    ``select()`` counts as a write), ``"none"`` (no transaction was open when the response
    started) or ``"rolled_back"`` (whatever its transaction did, maybe nothing, was undone).
    ``retries`` names the reason of each re-run, in order. ``rollback_reason`` says why it
    rolled back: ``"error_status"`` (a status at or above the middleware's
    ``rollback_status``), ``"exception"``, ``"replayed"`` (an idempotency key's stored
    answer), ``"unavailable"`` (the database did not answer), ``"retries_exhausted"``, or the
    failure of its COMMIT (``"commit_failed"`` or a retry reason). ``phases``: phases
    (``run_phase``) committed on their own, which no rollback undoes.
    """

    outcome: Literal["committed", "read_only", "none", "rolled_back"]
    retries: tuple[str, ...] = ()
    rollback_reason: str | None = None
    phases: int = 0


def transaction_outcome(scope: MutableMapping[str, Any]) -> TransactionOutcome | None:
    """The outcome :class:`AtomicMiddleware` left in ``scope`` once it answered the request;
    None before, or for a request it did not see. For a middleware outside it (an access log)."""
    outcome = scope.get(TRANSACTION_OUTCOME)
    return outcome if isinstance(outcome, TransactionOutcome) else None


#: the common outcomes, made once: most requests allocate none
_COMMITTED = TransactionOutcome("committed")
_READ_ONLY = TransactionOutcome("read_only")
_NONE = TransactionOutcome("none")
_NO_RETRIES: tuple[str, ...] = ()
_ROLLED_BACK: dict[str, TransactionOutcome] = {
    reason: TransactionOutcome("rolled_back", rollback_reason=reason)
    for reason in ("error_status", "exception", "replayed", "unavailable", "retries_exhausted")
}


def _outcome(
    outcome: Literal["committed", "read_only", "none", "rolled_back"],
    retries: tuple[str, ...],
    phases: int,
    rollback_reason: str | None = None,
) -> TransactionOutcome:
    if not retries and not phases:
        if outcome == "rolled_back":
            assert rollback_reason is not None
            common = _ROLLED_BACK.get(rollback_reason)
            if common is not None:
                return common
        else:
            return {"committed": _COMMITTED, "read_only": _READ_ONLY, "none": _NONE}[outcome]
    return TransactionOutcome(outcome, retries, rollback_reason, phases)


#: the unit of work of the request the running task serves (see :func:`current_unit_of_work`)
_current: ContextVar[UnitOfWork | None] = ContextVar("fastapi_atomic_unit_of_work", default=None)


def current_unit_of_work() -> UnitOfWork | None:
    """The unit of work of the request being served, while its app runs; None elsewhere.

    For code that was handed only the request's AsyncSession and needs a hook of its unit of
    work (``on_commit``): compare ``current_unit_of_work().db`` with the session it has. Routes
    take the unit of work as a dependency (:data:`UnitOfWorkDep`) instead.
    """
    return _current.get()


#: what the router puts in the scope it is given, copied back to the request's own scope
_ROUTING_KEYS = ("route", "endpoint")


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
        websessions: WebSessionManager | None = None,
        idempotency_keys: IdempotencyKeys | None = None,
        backoff: Backoff | None = None,
        rollback_status: int = 400,
        metrics: AtomicMetrics | None = None,
        unavailable_response: Callable[[Request, str], Response | None] | None = None,
    ) -> None:
        """``unavailable_response(request, detail)`` answers a 503 (the database unavailable,
        retries exhausted) when it returns a response: an HTML page for a browser's page, say.
        When it returns None, or is not given, the answer is JSON: ``{"detail": detail}``."""
        self.app = app
        self.unavailable_response = unavailable_response
        self.engine = engine
        self.websessions = websessions
        self.idempotency_keys = idempotency_keys
        self.backoff = backoff or Backoff()
        self.rollback_status = rollback_status
        self.metrics = metrics or AtomicMetrics.default()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        body = _Body(receive)
        request_id = ""  # made on first use, then kept by every attempt
        attempt = 1
        retries = _NO_RETRIES
        while True:
            uow = SqlAlchemyUnitOfWork(
                self.engine,
                write_intent=scope["method"] not in SAFE_METHODS,
                phase_backoff=self.backoff,
                request_id=request_id,
            )
            attempt_scope = dict(scope)
            attempt_scope[UNIT_OF_WORK] = uow
            attempt_scope[WEBSESSIONS] = self.websessions
            attempt_scope[IDEMPOTENCY_KEYS] = self.idempotency_keys
            attempt_scope[KEPT_BODY] = body
            attempt_scope["state"] = dict(scope.get("state") or {})
            responder = _Responder(send, uow, self.rollback_status, self.metrics, retries)
            token = _current.set(uow)
            try:
                await self.app(attempt_scope, body.receiver(attempt_scope), responder.send)
            except Exception as exc:
                _current.reset(token)
                await uow._rollback()
                await uow._close()
                request_id = uow._request_id_value
                phases = uow._phases_committed
                if responder.started:
                    _finish(scope, attempt_scope, responder.outcome)
                    raise
                if isinstance(exc, ReplayResponse):
                    self.metrics.outcome("replayed").inc()
                    _finish(scope, attempt_scope, _outcome("rolled_back", retries, 0, "replayed"))
                    start: Message = {
                        "type": "http.response.start",
                        "status": exc.status,
                        "headers": list(exc.headers),
                    }
                    uow._apply_response_headers(start, committed=False)  # no-store, Vary
                    await send(start)
                    await send({"type": "http.response.body", "body": exc.body})
                    return
                # A failed COMMIT is final (_Unavailable): its cause may be a lost connection,
                # but the COMMIT may have landed, and a re-run would do everything twice.
                if isinstance(exc, _Retry):
                    reason: str | None = exc.reason
                elif isinstance(exc, _Unavailable):
                    reason = None
                else:
                    reason = retry_reason(exc)
                if reason is not None:
                    if uow._can_retry and body.replayable and attempt < self.backoff.attempts:
                        self.metrics.retry(reason).inc()
                        retries = (*retries, reason)
                        await asyncio.sleep(self.backoff.delay(attempt))
                        attempt += 1
                        continue
                    self.metrics.outcome("retries_exhausted").inc()
                    _finish(
                        scope,
                        attempt_scope,
                        _outcome("rolled_back", (*retries, reason), phases, "retries_exhausted"),
                    )
                    lost = reason == CONNECTION_LOST
                    await self._unavailable(
                        attempt_scope,
                        send,
                        uow._failure_detail
                        or (
                            "The database connection was lost; try again."
                            if lost
                            else "The request kept conflicting with others; try again."
                        ),
                    )
                    return
                detail = _unavailable_detail(exc)
                if detail is None:
                    self.metrics.outcome("error").inc()
                    _finish(
                        scope, attempt_scope, _outcome("rolled_back", retries, phases, "exception")
                    )
                    raise
                self.metrics.outcome("unavailable").inc()
                why = responder.commit_failure or "unavailable"
                _finish(scope, attempt_scope, _outcome("rolled_back", retries, phases, why))
                await self._unavailable(attempt_scope, send, uow._failure_detail or detail)
                return
            _current.reset(token)
            _finish(scope, attempt_scope, responder.outcome)
            await uow._close()
            if uow._after_commit_hooks[0]:
                await uow._run_after_commit_hooks()
            return

    async def _unavailable(self, scope: Scope, send: Send, detail: str) -> None:
        response = None
        if self.unavailable_response is not None:
            response = self.unavailable_response(Request(scope), detail)
        if response is None:
            await _send_json(send, 503, detail)
            return
        response.headers.setdefault("retry-after", RETRY_AFTER.decode())
        await response(scope, _no_more_body, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the web-session store with the app, and stop it after the app stopped."""
        store = self.websessions.store if self.websessions is not None else None
        if store is None:
            await self.app(scope, receive, send)
            return

        async def receive_and_start() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await store.start(self.engine)
            return message

        async def send_and_stop(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await store.aclose()
            await send(message)

        await self.app(scope, receive_and_start, send_and_stop)


def _finish(scope: Scope, attempt_scope: Scope, outcome: TransactionOutcome | None) -> None:
    """Leave the outcome, and the route the router matched, in the request's own scope: the
    app ran on a copy, and a middleware outside this one (an access log) reads them there."""
    scope[TRANSACTION_OUTCOME] = outcome
    for key in _ROUTING_KEYS:
        if key in attempt_scope:
            scope[key] = attempt_scope[key]


class _Body:
    """The request body as the app reads it, kept so that a re-run can read it again."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._chunks: list[bytes] = []
        self._complete = False
        #: False once a streamed body (not kept) began to be read: the request can't be re-run
        self.replayable = True

    @property
    def whole(self) -> bytes | None:
        """The whole body, once it has been read and kept; None before."""
        return b"".join(self._chunks) if self._complete and self.replayable else None

    def receiver(self, scope: Scope) -> Receive:
        kept: list[bytes] | None = self._chunks[:] if self._chunks or self._complete else None

        async def receive() -> Message:
            nonlocal kept
            if kept is not None:
                replayed: Message = {
                    "type": "http.request",
                    "body": b"".join(kept),
                    "more_body": not self._complete,
                }
                kept = None
                return replayed
            if self._complete:
                return await self._receive()  # past the body: a disconnect, when it comes
            message = await self._receive()
            if message["type"] == "http.request":
                if scope.get(STREAMED_BODY):
                    self.replayable = False
                else:
                    self._chunks.append(message.get("body", b""))
                self._complete = not message.get("more_body", False)
            return message

        return receive


class _Responder:
    """Wraps ``send``: decides commit or rollback at the response start, then lets it through.

    When the unit of work asks for the response (an idempotency record stores it), the start is
    held back until the whole body is known, and the decision is taken then.
    """

    def __init__(
        self,
        send: Send,
        uow: SqlAlchemyUnitOfWork,
        rollback_status: int,
        metrics: AtomicMetrics,
        retries: tuple[str, ...],
    ) -> None:
        self._send = send
        self.uow = uow
        self.rollback_status = rollback_status
        self.metrics = metrics
        self.retries = retries
        self.started = False
        self._held: Message | None = None
        self._chunks: list[bytes] = []
        #: decided at the response start
        self.outcome: TransactionOutcome | None = None
        #: why the COMMIT failed, when it did
        self.commit_failure: str | None = None
        self._wrote = False

    async def send(self, message: Message) -> None:
        if self.started:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            if self.uow._capture_response:
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
        # The headers as the app made them, before the web session's cookie is added: only an
        # idempotency record (which captured the body) stores them.
        headers = list(start.get("headers", [])) if body is not None else []
        self.uow._response = CapturedResponse(status, headers, body)
        committed = status < self.rollback_status
        uow = self.uow
        if committed:
            uow._before_commit(self._note_writes)  # the last hook: after the session's save
            await self._commit()
            self.metrics.outcome("committed").inc()
            kind: Literal["committed", "read_only", "none"] = (
                "committed" if self._wrote else "read_only" if uow._commit_sent else "none"
            )
            self.outcome = _outcome(kind, self.retries, uow._phases_committed)
        else:
            await uow._rollback()
            self.metrics.rollback("error_status").inc()
            self.metrics.outcome("rolled_back").inc()
            self.outcome = _outcome(
                "rolled_back", self.retries, uow._phases_committed, "error_status"
            )
        uow._apply_response_headers(start, committed=committed)
        self.started = True

    def _note_writes(self) -> None:
        """Whether the transaction about to commit wrote anything (a read-only one did not)."""
        db = self.uow._session
        if db is not None and db.in_transaction():
            session = cast(_RequestSession, db.sync_session)
            self._wrote = bool(session.wrote or db.new or db.dirty or db.deleted)

    async def _commit(self) -> None:
        try:
            await self.uow._commit()
        except Exception as exc:
            await self.uow._rollback()
            reason = retry_reason(exc)
            self.commit_failure = reason or "commit_failed"
            self.metrics.rollback(self.commit_failure).inc()
            # A connection lost during the COMMIT itself leaves the outcome unknown: never
            # re-run that. Lost before it (in a before-commit hook), nothing was committed.
            unknown = reason == CONNECTION_LOST and self.uow._commit_sent
            if reason is not None and not unknown and self.uow._can_retry:
                raise _Retry(str(reason)) from exc
            if unknown:  # asked first: a lost connection is "unavailable" too
                logger.exception("connection lost during COMMIT; the outcome is unknown")
                detail: str | None = (
                    "The database connection was lost while saving; the outcome is unknown."
                )
            else:
                detail = _unavailable_detail(exc)
            if detail is None:
                logger.exception("commit failed; the client gets a 503")
                detail = "The request could not be saved; nothing was changed. Try again."
            raise _Unavailable(self.uow._failure_detail or detail) from exc
        if self.uow._session is not None:
            self.metrics.commits.inc()


def _unavailable_detail(exc: BaseException) -> str | None:
    if isinstance(exc, _Unavailable | ServiceUnavailable):
        return exc.detail
    if isinstance(exc, PoolTimeout):
        return "The database is busy (no free connection); try again."
    if database_unavailable(exc):
        logger.warning("the database did not answer (%s); the client gets a 503", exc)
        return "The database did not answer; try again."
    return None


#: seconds a client is told to wait before it tries again after a 503
RETRY_AFTER = b"1"


async def _no_more_body() -> Message:
    return {"type": "http.disconnect"}


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 503:
        headers.append((b"retry-after", RETRY_AFTER))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
