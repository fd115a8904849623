"""The unit of work: one lazy AsyncSession, one transaction, hooks around the commit.

Only the unit of work commits. Routes and services receive its AsyncSession and never end its
transaction themselves (a ``commit()`` or ``rollback()`` on it raises): that is what lets the
middleware keep a request atomic and re-run it after a serialization failure.

:class:`UnitOfWork` is what routes, services and web-session stores see. The request's unit of
work (made by :class:`~fastapi_atomic.AtomicMiddleware`), one outside any request
(:func:`atomic`) and the fake of :mod:`fastapi_atomic.testing` all implement it; how and when
the transaction ends belongs to the middleware alone.
"""

from __future__ import annotations

import abc
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

from .engine import SQLITE_BEGIN_OPTION, transaction_pooled, writer_engine
from .exceptions import ConfigurationError, TooLate
from .retry import CONNECTION_LOST, Backoff, retry_reason

logger = logging.getLogger("fastapi_atomic")

T = TypeVar("T")
IsolationLevel = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
Hook = Callable[[], Awaitable[None] | None]
HeaderHook = Callable[[MutableHeaders], None]


class UnitOfWork(abc.ABC):
    """Everything one request (or job) does to the database, committed once or not at all."""

    @property
    @abc.abstractmethod
    def db(self) -> AsyncSession:
        """The AsyncSession of the unit of work's transaction."""

    @abc.abstractmethod
    def savepoint(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        """A nested atomic block: on an exception only its own work (and hooks) is undone."""

    @abc.abstractmethod
    async def run_phase(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        isolation_level: IsolationLevel | None = None,
        idempotent: bool = False,
    ) -> T:
        """Run ``work`` in a transaction of its own and commit it now, retrying it if it must.

        For work that has to be durable before a call to the outside world (reserve stock,
        then charge a card): the phase's effects survive whatever the rest of the request does.
        ORM objects it returns are detached from its session, their loaded attributes readable.

        A COMMIT whose connection broke may have landed: the phase is then run again only if
        it is ``idempotent`` (it finds what an earlier run of it committed, by a key, and goes
        on from there); otherwise the error is raised, and the request is not re-run either.
        """

    @abc.abstractmethod
    def on_commit(self, hook: Hook) -> None:
        """Run ``hook`` once the transaction committed (Django's ``transaction.on_commit``).

        Registered inside a savepoint that rolls back, it is dropped. It never runs for work
        that rolled back, and an exception from it is logged, not raised.
        """

    @abc.abstractmethod
    def on_rollback(self, hook: Hook) -> None:
        """Run ``hook`` when the transaction ends without a commit (to undo outside writes).

        Hooks run latest first, like an undo stack: two writes to one key are undone back to
        the state before the first.
        """

    @abc.abstractmethod
    def set_failure_detail(self, detail: str) -> None:
        """What the client is told (a 503) if the request fails from now on without commit.

        By default that 503 says nothing was changed. After an effect outside the transaction
        (a card charged), that is false: say what did happen and what will, e.g. "The card
        was charged; the order will be completed shortly."
        """

    @abc.abstractmethod
    async def set_isolation_level(self, level: IsolationLevel) -> None:
        """Run the transaction at ``level``; call it before the first write."""

    @abc.abstractmethod
    async def release(self) -> None:
        """End a transaction that has only read, giving its connection back before a slow call.

        Objects loaded so far stay loaded. A transaction that wrote cannot be released (its
        writes would be lost): that raises :class:`~fastapi_atomic.TooLate`.
        """


_ENDS_THE_TRANSACTION = (
    "The unit of work ends this transaction: it commits when the response starts (or when an "
    "atomic() block ends) and rolls back on an error. Don't call {method}() on its "
    "AsyncSession. For work that must be durable before the request ends use "
    "uow.run_phase(...); to undo part of a request use uow.savepoint()."
)


class _RequestSession(Session):
    """The unit of work's Session: ends its transaction only when told to, remembers writes.

    The listeners below are registered once, on this class, not on each request's Session.
    """

    wrote = False
    _may_end = False

    def commit(self) -> None:
        self._refuse_unless_told("commit")
        super().commit()

    def rollback(self) -> None:
        self._refuse_unless_told("rollback")
        super().rollback()

    def begin(self, nested: bool = False) -> Any:
        # An explicit begin() would end with a commit of its own; begin_nested() is a savepoint.
        if not nested:
            self._refuse_unless_told("begin")
        return super().begin(nested)

    def _refuse_unless_told(self, method: str) -> None:
        if not self._may_end:
            raise ConfigurationError(_ENDS_THE_TRANSACTION.format(method=method))


async def _end(db: AsyncSession, how: Literal["commit", "rollback"]) -> None:
    session = cast(_RequestSession, db.sync_session)
    session._may_end = True
    try:
        await (db.commit() if how == "commit" else db.rollback())
    finally:
        session._may_end = False


@event.listens_for(_RequestSession, "do_orm_execute")
def _note_write(state: ORMExecuteState) -> None:
    if not state.is_select:
        cast(_RequestSession, state.session).wrote = True


@event.listens_for(_RequestSession, "after_flush")
def _note_flush(session: Session, _flush_context: Any) -> None:
    cast(_RequestSession, session).wrote = True


@event.listens_for(_RequestSession, "after_transaction_end")
def _forget_writes(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost transaction ended: its writes are settled
        cast(_RequestSession, session).wrote = False


@dataclass(frozen=True)
class CapturedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    #: None unless the response was captured whole (an idempotency record stores it)
    body: bytes | None


class SqlAlchemyUnitOfWork(UnitOfWork):
    """The unit of work on an engine: the request's, or :func:`atomic`'s.

    The AsyncSession is created on first use of :attr:`db`; a request that never touches it
    never takes a connection from the pool. Members with a leading underscore are the
    lifecycle, driven by :class:`~fastapi_atomic.AtomicMiddleware` and the library's web
    sessions and idempotency keys.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        write_intent: bool = True,
        phase_backoff: Backoff | None = None,
        request_id: str = "",
    ) -> None:
        self._engine = engine
        self._write_intent = write_intent
        self._isolation_level: IsolationLevel | None = None
        self._phase_backoff = phase_backoff or Backoff()
        self._request_id_value = request_id
        self._session: AsyncSession | None = None
        self._before_commit_hooks: list[Hook] = []
        self._on_rollback_hooks: list[Hook] = []
        self._header_hooks: list[HeaderHook] = []
        self._right_after_commit_hooks: list[Callable[[], None]] = []
        self._after_commit_hooks: list[list[Hook]] = [[]]
        self._phases_committed = 0
        self._committed = False
        #: the COMMIT was sent: if it failed with the connection, it may have landed
        self._commit_sent = False
        self._rolled_back = False
        #: the response depends on the client's session (see :meth:`_keep_private`)
        self._private = False
        #: hold the response start until the body is known (an idempotency record stores it)
        self._capture_response = False
        #: the response as the handler produced it, once known
        self._response: CapturedResponse | None = None
        #: the 503's detail if the request fails without commit (see set_failure_detail)
        self._failure_detail: str | None = None

    # --- what routes use ---------------------------------------------------------------

    @property
    def db(self) -> AsyncSession:
        if self._session is None:
            self._session = self._new_session(self._isolation_level, self._write_intent)
        return self._session

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[AsyncSession]:
        self._after_commit_hooks.append([])
        try:
            async with self.db.begin_nested():
                yield self.db
        except BaseException:
            self._after_commit_hooks.pop()
            raise
        hooks = self._after_commit_hooks.pop()
        self._after_commit_hooks[-1].extend(hooks)

    async def run_phase(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        isolation_level: IsolationLevel | None = None,
        idempotent: bool = False,
    ) -> T:
        # After the first phase the request as a whole is no longer re-run on a serialization
        # failure (its phases are durable); each phase is retried on its own instead.
        await self.release()
        attempt = 1
        while True:
            db = self._new_session(isolation_level, write=True)
            committing = False
            try:
                result = await work(db)
                committing = True
                await _end(db, "commit")
            except Exception as exc:
                await _end(db, "rollback")
                reason = retry_reason(exc)
                if committing and reason == CONNECTION_LOST and not idempotent:
                    # The COMMIT may have landed: neither this phase nor the request may run
                    # again (it would do the phase's work twice).
                    self._phases_committed += 1
                    raise
                if reason is None or attempt >= self._phase_backoff.attempts:
                    raise
                logger.info("retrying phase after %s (attempt %d)", reason, attempt)
                await asyncio.sleep(self._phase_backoff.delay(attempt))
                attempt += 1
            else:
                self._phases_committed += 1
                return result
            finally:
                await db.close()

    def on_commit(self, hook: Hook) -> None:
        self._after_commit_hooks[-1].append(hook)

    def on_rollback(self, hook: Hook) -> None:
        self._on_rollback_hooks.append(hook)

    def set_failure_detail(self, detail: str) -> None:
        self._failure_detail = detail

    async def set_isolation_level(self, level: IsolationLevel) -> None:
        # A transaction that has only read so far (loading the web session, say) is ended and
        # the next statement begins a new one at ``level``; one that wrote cannot change level.
        if level == self._isolation_level:
            return
        if self._session is not None:
            if self._session.in_transaction():
                try:
                    await self.release()
                except TooLate:
                    raise TooLate(
                        f"Isolation level {level} requested after the transaction wrote: set it "
                        "before the first write, e.g. with Depends(isolation_level(...))."
                    ) from None
            await self._session.close()
            self._session = None
        self._isolation_level = level

    async def release(self) -> None:
        if self._session is None or not self._session.in_transaction():
            return
        db = self._session
        if cast(_RequestSession, db.sync_session).wrote or db.new or db.dirty or db.deleted:
            raise TooLate(
                "The transaction already wrote; it cannot be released before an outside call. "
                "Move those writes into uow.run_phase(...) or after the call."
            )
        # Committed, not rolled back: a rollback would expire every object loaded so far, and
        # touching one afterwards would load it again, which asyncio cannot do implicitly.
        await _end(db, "commit")

    # --- the lifecycle (AtomicMiddleware, web sessions, idempotency keys) ------------------

    @property
    def _request_id(self) -> str:
        """The same for every attempt of one request (a lock owner that survives a retry)."""
        if not self._request_id_value:
            self._request_id_value = uuid.uuid4().hex
        return self._request_id_value

    @property
    def _in_transaction(self) -> bool:
        return self._session is not None and self._session.in_transaction()

    @property
    def _autocommit_engine(self) -> AsyncEngine:
        """The engine in autocommit: for reads that need no transaction (one round trip).
        Behind a pooler in transaction mode, the engine itself: a statement there needs a
        transaction to keep its server connection from its preparation to its execution."""
        if transaction_pooled(self._engine):
            return self._engine
        return _engine_variant(self._engine, {"isolation_level": "AUTOCOMMIT"})

    @property
    def _can_retry(self) -> bool:
        """True while re-running the request from scratch cannot repeat a durable effect."""
        return self._phases_committed == 0 and not self._committed

    def _independent_session(self) -> AsyncSession:
        """A fresh AsyncSession outside the request's transaction, ended by its caller."""
        return self._new_session(None, write=True, session_class=Session)

    def _before_commit(self, hook: Hook) -> None:
        """Run ``hook`` inside the transaction before COMMIT; an exception from it rolls back."""
        self._before_commit_hooks.append(hook)

    def _right_after_commit(self, hook: Callable[[], None]) -> None:
        """Run the synchronous ``hook`` the moment COMMIT returns, before the response starts.

        For process-local caches of what the transaction changed, so the client's next request
        cannot read the old state. No I/O: a failure is logged, never raised.
        """
        self._right_after_commit_hooks.append(hook)

    def _on_response_headers(self, hook: HeaderHook) -> None:
        """Let ``hook`` add headers to a response whose transaction committed."""
        self._header_hooks.append(hook)

    async def _commit(self) -> None:
        """Before-commit hooks, then COMMIT. On failure the caller must call :meth:`_rollback`."""
        for hook in self._before_commit_hooks:
            await _call(hook)
        if self._session is not None and self._session.in_transaction():
            self._commit_sent = True
            await _end(self._session, "commit")
        self._committed = True
        for fill in self._right_after_commit_hooks:
            try:
                fill()
            except Exception:
                logger.exception("right-after-commit hook %r failed", fill)

    def _keep_private(self) -> None:
        """The response depends on the client's session: no cache may store it, and a cache
        must not hand it to another client (``Cache-Control: no-store``, ``Vary: Cookie``),
        whatever its status."""
        self._private = True

    def _apply_response_headers(self, start: MutableMapping[str, Any], *, committed: bool) -> None:
        """Add the hooks' headers (a committed response's only) to the response's start."""
        hooks = self._header_hooks if committed else []
        if not hooks and not self._private:
            return  # most responses: no headers object to build
        headers = MutableHeaders(scope=start)
        for hook in hooks:
            hook(headers)
        if self._private:
            headers["cache-control"] = "no-store"
            if "cookie" not in headers.get("vary", "").lower():
                headers.append("vary", "Cookie")

    async def _rollback(self) -> None:
        """Undo the transaction and run the on-rollback hooks (each failure only logged)."""
        if self._rolled_back or self._committed:
            return
        self._rolled_back = True
        if self._session is not None:
            try:
                await _end(self._session, "rollback")
            except Exception:
                logger.exception("rollback failed; the connection is discarded")
        for hook in reversed(self._on_rollback_hooks):
            try:
                await _call(hook)
            except Exception:
                logger.exception("on_rollback hook %r failed", hook)

    async def _run_after_commit_hooks(self) -> None:
        if not self._committed:
            return
        hooks, self._after_commit_hooks = self._after_commit_hooks[0], [[]]
        for hook in hooks:
            try:
                await _call(hook)
            except Exception:
                logger.exception("after-commit hook %r failed; the request stays committed", hook)

    async def _close(self) -> None:
        if self._session is not None:
            try:
                await self._session.close()
            except Exception:
                logger.exception("closing the unit of work's AsyncSession failed")
            self._session = None
        # The hooks hold their owners (a web session holds this unit of work): let go of them
        # so the request's objects are freed at once, not by the garbage collector's cycles.
        self._before_commit_hooks.clear()
        self._on_rollback_hooks.clear()
        self._header_hooks.clear()
        self._right_after_commit_hooks.clear()

    def _new_session(
        self,
        isolation_level: IsolationLevel | None,
        write: bool,
        session_class: type[Session] = _RequestSession,
    ) -> AsyncSession:
        options: dict[str, Any] = {}
        engine = self._engine
        if engine.dialect.name == "sqlite":
            options[SQLITE_BEGIN_OPTION] = "IMMEDIATE" if write else "DEFERRED"
            if write:
                engine = writer_engine(engine)
        elif isolation_level is not None:
            options["isolation_level"] = isolation_level
        return AsyncSession(
            bind=_engine_variant(engine, options),
            expire_on_commit=False,
            autoflush=True,
            sync_session_class=session_class,
        )


@contextlib.asynccontextmanager
async def atomic(engine: AsyncEngine) -> AsyncIterator[UnitOfWork]:
    """One unit of work outside any request (a command, a job, a test).

    Committed when the block ends, rolled back if it raises; hooks run as in a request. No
    retries: a block is not a function that can be run again.
    """
    uow = SqlAlchemyUnitOfWork(engine)
    try:
        yield uow
        await uow._commit()
    except BaseException:
        await uow._rollback()
        raise
    finally:
        await uow._close()
    await uow._run_after_commit_hooks()


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
