"""The request's unit of work: one lazy AsyncSession, one transaction, hooks around the commit.

Only the unit of work commits. Services receive its AsyncSession and never call ``commit()``
themselves; that is what lets the middleware keep a request atomic and re-run it after a
serialization failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session
from starlette.datastructures import MutableHeaders

from .engine import SQLITE_BEGIN_OPTION
from .exceptions import ConfigurationError, TooLate
from .retry import Backoff, retry_reason

logger = logging.getLogger("fastapi_atomic")

T = TypeVar("T")
IsolationLevel = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
Hook = Callable[[], Awaitable[None] | None]
HeaderHook = Callable[[MutableHeaders], None]


@dataclass(frozen=True)
class CapturedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    #: None unless ``capture_response`` was set before the response started
    body: bytes | None


class UnitOfWork:
    """Everything one request does to the database, committed once or not at all.

    The AsyncSession is created on first use of :attr:`db`; a request that never touches it
    never takes a connection from the pool.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        write_intent: bool = True,
        isolation_level: IsolationLevel | None = None,
        phase_backoff: Backoff | None = None,
        request_id: str = "",
    ) -> None:
        self.engine = engine
        self._request_id = request_id
        #: hold the response start until the body is known (set by an idempotency record)
        self.capture_response = False
        #: the response as the handler produced it, once known
        self.response: CapturedResponse | None = None
        self.write_intent = write_intent
        self.isolation_level = isolation_level
        self.phase_backoff = phase_backoff or Backoff()
        #: room for extensions (web session, idempotency) to keep per-request state
        self.extensions: dict[str, Any] = {}
        self._db: AsyncSession | None = None
        self._before_commit: list[Hook] = []
        self._on_rollback: list[Hook] = []
        self._header_hooks: list[HeaderHook] = []
        self._right_after_commit: list[Callable[[], None]] = []
        self._after_commit: list[list[Hook]] = [[]]
        self._phases_committed = 0
        self._external_effects = False
        self.committed = False
        self.rolled_back = False

    @property
    def request_id(self) -> str:
        """The same for every attempt of one request (a lock owner that survives a retry)."""
        if not self._request_id:
            self._request_id = uuid.uuid4().hex
        return self._request_id

    @property
    def request_id_if_made(self) -> str:
        return self._request_id

    # --- the AsyncSession -------------------------------------------------------------

    @property
    def db(self) -> AsyncSession:
        """The request's AsyncSession, created on first use."""
        if self._db is None:
            self._db = self._new_session(self.isolation_level, self.write_intent)
        return self._db

    @property
    def has_session(self) -> bool:
        return self._db is not None

    @property
    def autocommit_engine(self) -> AsyncEngine:
        """The engine in autocommit: for reads that need no transaction (one round trip)."""
        return _engine_variant(self.engine, {"isolation_level": "AUTOCOMMIT"})

    @property
    def in_transaction(self) -> bool:
        return self._db is not None and self._db.in_transaction()

    async def set_isolation_level(self, level: IsolationLevel) -> None:
        """Choose the isolation level of the request's transaction, before its first write.

        A transaction that has only read so far (loading the web session, say) is ended and the
        next statement begins a new one at ``level``; one that wrote cannot change level.
        """
        if level == self.isolation_level:
            return
        if self._db is not None:
            if self._db.in_transaction():
                try:
                    await self.release()
                except TooLate:
                    raise TooLate(
                        f"Isolation level {level} requested after the transaction wrote: set it "
                        "before the first write, e.g. with Depends(isolation_level(...))."
                    ) from None
            await self._db.close()
            self._db = None
        self.isolation_level = level

    def independent_session(self) -> AsyncSession:
        """A fresh AsyncSession outside the request's transaction (its caller commits it)."""
        return self._new_session(None, write=True)

    def _new_session(
        self, isolation_level: IsolationLevel | None, write: bool, *, one_statement: bool = False
    ) -> AsyncSession:
        options: dict[str, Any] = {}
        if one_statement:
            options["isolation_level"] = "AUTOCOMMIT"
        elif self.engine.dialect.name == "sqlite":
            options[SQLITE_BEGIN_OPTION] = "IMMEDIATE" if write else "DEFERRED"
        elif isolation_level is not None:
            options["isolation_level"] = isolation_level
        bind = _engine_variant(self.engine, options)
        db = AsyncSession(
            bind=bind, expire_on_commit=False, autoflush=True, sync_session_class=_RequestSession
        )
        if one_statement:
            cast(_RequestSession, db.sync_session).statements_left = 1
        return db

    # --- hooks -------------------------------------------------------------------------

    def before_commit(self, hook: Hook) -> None:
        """Run ``hook`` after the handler succeeded, inside the transaction, before COMMIT.

        An exception from it rolls everything back, like an exception from the handler.
        """
        self._before_commit.append(hook)

    def on_commit(self, hook: Hook) -> None:
        """Run ``hook`` once the request's transaction committed (Django's ``on_commit``).

        Registered inside a savepoint that rolls back, it is dropped. It never runs for a
        request that rolled back, and an exception from it is logged, not raised.
        """
        self._after_commit[-1].append(hook)

    def on_rollback(self, hook: Hook) -> None:
        """Run ``hook`` when the transaction ends without a commit (to undo outside writes).

        Hooks run latest first, like an undo stack: two writes to one key are undone back to
        the state before the first.
        """
        self._on_rollback.append(hook)

    def right_after_commit(self, hook: Callable[[], None]) -> None:
        """Run the synchronous ``hook`` the moment COMMIT returns, before the response starts.

        For evicting process-local caches of what the transaction changed, so the client's
        next request cannot read the old state. No I/O: a failure is logged, never raised.
        """
        self._right_after_commit.append(hook)

    def on_response_headers(self, hook: HeaderHook) -> None:
        """Let ``hook`` add headers to a response whose transaction committed."""
        self._header_hooks.append(hook)

    # --- savepoints and phases ---------------------------------------------------------

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[AsyncSession]:
        """A nested atomic block: on an exception only its own work (and hooks) is undone."""
        self._after_commit.append([])
        try:
            async with self.db.begin_nested():
                yield self.db
        except BaseException:
            self._after_commit.pop()
            raise
        hooks = self._after_commit.pop()
        self._after_commit[-1].extend(hooks)

    async def run_phase(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        isolation_level: IsolationLevel | None = None,
        one_statement: bool = False,
    ) -> T:
        """Run ``work`` in its own transaction and commit it now, retrying it if it must.

        For requests that have to commit before talking to the outside world (a card charge):
        the phase's effects survive whatever the rest of the request does, so after the first
        phase the request as a whole is no longer re-run on a serialization failure.

        ``one_statement=True`` is for a phase that is a single statement (a data-modifying CTE,
        say): it runs in autocommit, atomic on its own, with no BEGIN and no COMMIT. That is two
        round trips fewer, and the row locks it takes end with the statement instead of a round
        trip later. A second statement, or a flush of ORM objects, raises ConfigurationError
        (and ``isolation_level`` must not be given: a lone statement runs at the database's
        default level).
        """
        if one_statement and isolation_level is not None:
            raise ConfigurationError(
                "A one-statement phase runs in autocommit: give it no isolation level."
            )
        await self.release()
        attempt = 1
        while True:
            db = self._new_session(isolation_level, write=True, one_statement=one_statement)
            try:
                result = await work(db)
                await db.commit()
            except Exception as exc:
                await db.rollback()
                reason = retry_reason(exc)
                if reason is None or attempt >= self.phase_backoff.attempts:
                    raise
                logger.info("retrying phase after %s (attempt %d)", reason, attempt)
                await asyncio.sleep(self.phase_backoff.delay(attempt))
                attempt += 1
            else:
                self._phases_committed += 1
                return result
            finally:
                await db.close()

    async def release(self) -> None:
        """Give the connection back before a slow outside call, if nothing was written yet.

        A transaction that only read is ended (its reads may be repeated later); one that wrote
        cannot be, since ending it would lose the writes, so that is a programming error.
        """
        if self._db is None or not self._db.in_transaction():
            return
        if (
            cast(_RequestSession, self._db.sync_session).wrote
            or self._db.new
            or self._db.dirty
            or self._db.deleted
        ):
            raise TooLate(
                "The request's transaction already wrote; it cannot be released before an "
                "outside call. Move those writes into uow.run_phase(...) or after the call."
            )
        await self._db.rollback()

    def mark_external_effect(self) -> None:
        """Record that something outside the database happened: never re-run this request."""
        self._external_effects = True

    @property
    def can_retry(self) -> bool:
        """True while re-running the request from scratch cannot repeat a durable effect."""
        return self._phases_committed == 0 and not self._external_effects and not self.committed

    # --- the end of the request --------------------------------------------------------

    async def commit(self) -> None:
        """Before-commit hooks, then COMMIT. On failure the caller must call :meth:`rollback`."""
        for hook in self._before_commit:
            await _call(hook)
        if self._db is not None and self._db.in_transaction():
            await self._db.commit()
        self.committed = True
        for evict in self._right_after_commit:
            try:
                evict()
            except Exception:
                logger.exception("right-after-commit hook %r failed", evict)

    def apply_response_headers(self, start: MutableMapping[str, Any]) -> None:
        """Let the header hooks add to the ``http.response.start`` message ``start``."""
        if not self._header_hooks:
            return  # most responses: no headers object to build
        headers = MutableHeaders(scope=start)
        for hook in self._header_hooks:
            hook(headers)

    async def rollback(self) -> None:
        """Undo the transaction and run the on-rollback hooks (each failure only logged)."""
        if self.rolled_back or self.committed:
            return
        self.rolled_back = True
        if self._db is not None:
            try:
                await self._db.rollback()
            except Exception:
                logger.exception("rollback failed; the connection is discarded")
        for hook in reversed(self._on_rollback):
            try:
                await _call(hook)
            except Exception:
                logger.exception("on_rollback hook %r failed", hook)

    async def run_after_commit_hooks(self) -> None:
        if not self.committed:
            return
        hooks, self._after_commit = self._after_commit[0], [[]]
        for hook in hooks:
            try:
                await _call(hook)
            except Exception:
                logger.exception("after-commit hook %r failed; the request stays committed", hook)

    async def close(self) -> None:
        if self._db is not None:
            try:
                await self._db.close()
            except Exception:
                logger.exception("closing the request's AsyncSession failed")
            self._db = None


class _RequestSession(Session):
    """The unit of work's Session: remembers whether its transaction wrote anything.

    The listeners below are registered once, on this class, not on each request's Session:
    registering per instance cost more than most statements of a request.
    """

    wrote = False
    #: in a one-statement phase (autocommit), how many statements it may still run
    statements_left: int | None = None


_ONE_STATEMENT_ONLY = (
    "A one-statement phase (run_phase(..., one_statement=True)) runs in autocommit, where a "
    "second statement or an ORM flush would commit on its own: write the phase as one "
    "statement, or drop one_statement=True to run it in a transaction."
)


@event.listens_for(_RequestSession, "do_orm_execute")
def _note_write(state: ORMExecuteState) -> None:
    session = cast(_RequestSession, state.session)
    if session.statements_left is not None:
        if session.statements_left == 0:
            raise ConfigurationError(_ONE_STATEMENT_ONLY)
        session.statements_left -= 1
    if not state.is_select:
        session.wrote = True


@event.listens_for(_RequestSession, "before_flush")
def _refuse_flush_in_one_statement(session: Session, _flush_context: Any, _instances: Any) -> None:
    if cast(_RequestSession, session).statements_left is not None:
        raise ConfigurationError(_ONE_STATEMENT_ONLY)


@event.listens_for(_RequestSession, "after_flush")
def _note_flush(session: Session, _flush_context: Any) -> None:
    session.wrote = True  # type: ignore[attr-defined]


@event.listens_for(_RequestSession, "after_transaction_end")
def _forget_writes(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost transaction ended: its writes are settled
        session.wrote = False  # type: ignore[attr-defined]


async def _call(hook: Hook) -> None:
    result = hook()
    if inspect.isawaitable(result):
        await result


_VARIANTS: dict[tuple[int, tuple[tuple[str, Any], ...]], AsyncEngine] = {}


def _engine_variant(engine: AsyncEngine, options: dict[str, Any]) -> AsyncEngine:
    """The engine with ``options`` applied, cached: option engines share the pool."""
    if not options:
        return engine
    key = (id(engine), tuple(sorted(options.items())))
    variant = _VARIANTS.get(key)
    if variant is None or variant.sync_engine.pool is not engine.sync_engine.pool:
        variant = engine.execution_options(**options)
        _VARIANTS[key] = variant
    return variant
