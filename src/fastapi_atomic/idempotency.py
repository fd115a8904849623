"""Idempotency keys: a client retry of an unsafe request returns the first response again.

Follows draft-ietf-httpapi-idempotency-key-header and Stripe's practice:

- the first request with a key claims it (a lease, committed at once, so a parallel repeat sees
  it and gets 409 while the first still runs);
- its response (status, body) is stored *in the same transaction as its effects*, so a replay
  can never disagree with what the database holds;
- a final outcome is stored even when it is an error (a declined payment's 402), but a request
  that changed nothing and may well succeed later (409, 422, 429, 401, 403) releases the key;
- the same key with a different request is 422; keys live for ``ttl`` seconds;
- a 5xx that changed nothing is not final either (the key is released); a request that ended
  in an exception or a failed COMMIT after a phase committed keeps its key, unlocked, so the
  client's retry runs at once and finishes what the first attempt began;
- a repeat while the first still runs is 409 with ``Retry-After`` saying when its lease ends;
  a key left locked by a process that died is taken over then;
- a request whose database went away (a failover, a restart) cannot release its key when it
  ends: the release is tried again in the background until the database answers or the lease
  ends, so the client's retry is not refused for the rest of the lease once the database is
  back.

Usage: give the keys to the middleware, and claim the request's key in a dependency of the
app's own, which knows who owns it (keys are per user)::

    keys = IdempotencyKeys(idempotency_table(Base.metadata))
    app.add_middleware(AtomicMiddleware, engine=engine, idempotency_keys=keys)

    async def idempotency_key(request: Request, user: CurrentUser) -> IdempotencyKey | None:
        return await claim_idempotency_key(request, owner=str(user.id))

    Idempotent = Annotated[IdempotencyKey | None, Depends(idempotency_key)]

    @app.post("/orders")
    async def place(order: OrderIn, db: DBDep, key: Idempotent) -> OrderOut: ...
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request
from sqlalchemy import (
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement, Executable

from .dependencies import UNIT_OF_WORK
from .exceptions import ConfigurationError, ReplayResponse
from .middleware import IDEMPOTENCY_KEYS, KEPT_BODY
from .retry import CONNECTION_LOST, database_unavailable, retry_reason
from .unit_of_work import SqlAlchemyUnitOfWork

HEADER = "Idempotency-Key"
logger = logging.getLogger("fastapi_atomic")

RELEASE_STATUSES = frozenset({401, 403, 409, 422, 429})
_KEPT_HEADERS = frozenset({b"content-type", b"content-language", b"location"})


def idempotency_table(metadata: MetaData, name: str = "idempotency_keys") -> Table:
    """The table of keys, added to ``metadata`` so the app's migrations create it."""
    return Table(
        name,
        metadata,
        Column("owner", String(128), primary_key=True),
        Column("key", String(255), primary_key=True),
        Column("fingerprint", String(64), nullable=False),
        Column("locked_by", String(64), nullable=True),
        Column("locked_until", Float, nullable=True),
        Column("status_code", Integer, nullable=True),
        Column("headers", Text, nullable=True),
        Column("body", LargeBinary, nullable=True),
        Column("created_at", Float, nullable=False),
        Column("expires_at", Float, nullable=False, index=True),
    )


@dataclass(frozen=True)
class IdempotencyKey:
    """The key the current request claimed."""

    owner: str
    key: str
    fingerprint: str

    def external_key(self, purpose: str) -> str:
        """A key for a call to the outside world (a charge) that is the same on every retry."""
        digest = hashlib.sha256(f"{self.owner}\x00{self.key}\x00{purpose}".encode()).hexdigest()
        return f"idem_{digest[:40]}"


class IdempotencyKeys:
    def __init__(
        self,
        table: Table,
        *,
        lease_seconds: float = 60.0,
        ttl_seconds: float = 24 * 3600.0,
        header: str = HEADER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.lease_seconds = lease_seconds
        self.ttl_seconds = ttl_seconds
        self.header = header
        self.clock = clock
        #: releases waiting for the database to come back (kept: a task needs a reference)
        self._deferred: set[asyncio.Task[None]] = set()

    async def claim(
        self, request: Request, owner: str, key: str | None = None
    ) -> IdempotencyKey | None:
        """Claim the request's key for ``owner``, or replay, or refuse; None without a key.

        ``key`` is for a key that does not travel in the header: an HTML form's hidden field.
        """
        if key is None:
            key = request.headers.get(self.header)
        if key is None:
            return None
        if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
            raise HTTPException(422, f"{self.header} must be 1 to 255 printable ASCII characters.")
        uow = request.scope.get(UNIT_OF_WORK)
        if not isinstance(uow, SqlAlchemyUnitOfWork):
            raise ConfigurationError(
                "Idempotency keys need the request's unit of work: add AtomicMiddleware."
            )
        claimed = IdempotencyKey(owner, key, await _fingerprint(request))
        await self._claim(uow, claimed)
        uow._capture_response = True
        uow._before_commit(lambda: self._store(uow.db, uow, claimed))
        uow.on_rollback(lambda: self._after_rollback(uow, claimed))
        return claimed

    # --- claiming ------------------------------------------------------------------

    async def _claim(self, uow: SqlAlchemyUnitOfWork, claimed: IdempotencyKey) -> None:
        failure: Exception | None = None
        #: an attempt lost its connection: its COMMIT may have landed unseen, leaving the key
        #: locked by this request
        lost = False
        try:
            for _ in range(5):
                db = uow._independent_session()
                try:
                    async with db.begin():
                        if await self._try_claim(db, uow._request_id, claimed):
                            return  # a claim that landed unseen is found here as our own
                    failure = None  # taken over by another request meanwhile: look again
                except IntegrityError:
                    failure = None  # a concurrent first request inserted it: look again
                except Exception as exc:
                    reason = retry_reason(exc)
                    if reason is None:
                        raise
                    lost = lost or reason == CONNECTION_LOST
                    failure = exc
                finally:
                    await db.close()
            if failure is not None:
                # Not a request in progress: the database kept failing (a lost connection
                # each time, a server going away). The middleware answers what that is (a 503).
                raise failure
            raise self._in_progress(retry_after=1)
        except BaseException:
            if lost:  # this request will not run: free a key it may hold, once possible
                self._finish_in_background(
                    uow, claimed, delete(self.table).where(self._held(uow, claimed))
                )
            raise

    async def _try_claim(self, db: AsyncSession, request_id: str, claimed: IdempotencyKey) -> bool:
        t = self.table
        now = self.clock()
        where = (t.c.owner == claimed.owner) & (t.c.key == claimed.key)
        query = select(t).where(where)
        if db.get_bind().dialect.name != "sqlite":  # PostgreSQL, CockroachDB: lock the row
            query = query.with_for_update()
        row = (await db.execute(query)).mappings().first()
        if row is not None and row["expires_at"] <= now:
            await db.execute(delete(t).where(where))
            row = None
        if row is None:
            await db.execute(
                insert(t).values(
                    owner=claimed.owner,
                    key=claimed.key,
                    fingerprint=claimed.fingerprint,
                    locked_by=request_id,
                    locked_until=now + self.lease_seconds,
                    created_at=now,
                    expires_at=now + self.ttl_seconds,
                )
            )
            return True
        if row["fingerprint"] != claimed.fingerprint:
            raise HTTPException(
                422, f"This {self.header} was used for a different request; use a new key."
            )
        if row["status_code"] is not None:
            raise ReplayResponse(
                row["status_code"],
                [(k.encode("latin-1"), v.encode("latin-1")) for k, v in json.loads(row["headers"])],
                row["body"] or b"",
            )
        if row["locked_by"] == request_id:
            return True  # our own earlier attempt, re-run after a serialization failure
        if row["locked_until"] is not None and row["locked_until"] > now:
            raise self._in_progress(retry_after=row["locked_until"] - now)
        taken = await db.execute(
            update(t)
            .where(where & (t.c.locked_by == row["locked_by"]))
            .values(locked_by=request_id, locked_until=now + self.lease_seconds)
        )
        return bool(getattr(taken, "rowcount", 0))

    def _in_progress(self, *, retry_after: float) -> HTTPException:
        seconds = max(1, math.ceil(retry_after))
        return HTTPException(
            409,
            f"A request with this {self.header} is still in progress; retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )

    # --- finishing -----------------------------------------------------------------

    async def _store(
        self, db: AsyncSession, uow: SqlAlchemyUnitOfWork, claimed: IdempotencyKey
    ) -> None:
        """Record the response in the request's own transaction (before its COMMIT)."""
        await self._write_response(db, uow, claimed)

    async def _after_rollback(self, uow: SqlAlchemyUnitOfWork, claimed: IdempotencyKey) -> None:
        response = uow._response
        effects = not uow._can_retry
        t = self.table
        ours = self._held(uow, claimed)
        if response is None or response.status < 400:
            # An exception or a failed COMMIT: nothing final. The request has ended, so a retry
            # may run at once: the key is released, or, when a phase committed, kept (with its
            # fingerprint) but unlocked, and the retry takes over from there.
            statement = (
                update(t).where(ours).values(locked_until=self.clock())
                if effects
                else delete(t).where(ours)
            )
        elif not effects and (response.status in RELEASE_STATUSES or response.status >= 500):
            statement = delete(t).where(ours)
        else:
            statement = None
        try:
            await self._finish(uow, claimed, statement)
        except Exception as exc:
            if not _database_away(exc):
                raise
            self._finish_in_background(uow, claimed, statement)

    def _held(self, uow: SqlAlchemyUnitOfWork, claimed: IdempotencyKey) -> ColumnElement[bool]:
        """The key's row, while this request holds it."""
        t = self.table
        return (
            (t.c.owner == claimed.owner)
            & (t.c.key == claimed.key)
            & (t.c.locked_by == uow._request_id)
        )

    def _finish_in_background(
        self, uow: SqlAlchemyUnitOfWork, claimed: IdempotencyKey, statement: Executable | None
    ) -> None:
        """:meth:`_finish_later`, in a task of its own: the request ends meanwhile."""
        deadline = self.clock() + self.lease_seconds
        task = asyncio.create_task(self._finish_later(uow, claimed, statement, deadline))
        self._deferred.add(task)
        task.add_done_callback(self._deferred.discard)
        logger.warning("idempotency key not released (the database did not answer); trying again")

    async def _finish(
        self, uow: SqlAlchemyUnitOfWork, claimed: IdempotencyKey, statement: Executable | None
    ) -> None:
        """Release the key (``statement``) or record the final response (None)."""
        db = uow._independent_session()
        try:
            async with db.begin():
                if statement is None:
                    await self._write_response(db, uow, claimed)
                else:
                    await db.execute(statement)
        finally:
            await db.close()

    async def _finish_later(
        self,
        uow: SqlAlchemyUnitOfWork,
        claimed: IdempotencyKey,
        statement: Executable | None,
        deadline: float,
    ) -> None:
        """:meth:`_finish` again, backing off, until it works or the lease would have ended
        (then a retry takes the key over anyway). Safe to repeat: each statement touches the
        row only while this request still holds it."""
        delay = 0.25
        while self.clock() + delay < deadline:
            await asyncio.sleep(delay)
            try:
                await self._finish(uow, claimed, statement)
            except Exception as exc:
                if not _database_away(exc):
                    logger.exception("idempotency key release failed; its lease will end it")
                    return
                delay = min(delay * 2, 5.0)
            else:
                logger.info("idempotency key released once the database answered")
                return

    async def _write_response(
        self, db: AsyncSession, uow: SqlAlchemyUnitOfWork, claimed: IdempotencyKey
    ) -> None:
        response = uow._response
        assert response is not None and response.body is not None, "response not captured"
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in response.headers
            if name.lower() in _KEPT_HEADERS
        ]
        t = self.table
        await db.execute(
            update(t)
            .where(
                (t.c.owner == claimed.owner)
                & (t.c.key == claimed.key)
                & (t.c.locked_by == uow._request_id)
            )
            .values(
                status_code=response.status,
                headers=json.dumps(headers),
                body=response.body,
                locked_by=None,
                locked_until=None,
            )
        )

    async def purge_expired(self, db: AsyncSession) -> int:
        """Delete keys past their time to live; returns how many."""
        result = await db.execute(delete(self.table).where(self.table.c.expires_at <= self.clock()))
        return int(getattr(result, "rowcount", 0) or 0)


async def claim_idempotency_key(
    request: Request, owner: str, key: str | None = None
) -> IdempotencyKey | None:
    """Claim the request's ``Idempotency-Key`` for ``owner`` (the user): the dependency's work.

    None when the request sends no key. A repeat of a finished request raises, and the
    middleware answers with the first response again; a repeat of one still running is a 409,
    a key reused for another request a 422. ``key`` is used instead of the header's: a form's
    hidden field, made when the form was rendered, so that a double submit is one operation.
    """
    keys = request.scope.get(IDEMPOTENCY_KEYS)
    if keys is None:
        raise ConfigurationError(
            "No idempotency keys in this request: pass them to the middleware "
            "(app.add_middleware(AtomicMiddleware, engine=..., idempotency_keys=keys))."
        )
    claimed: IdempotencyKey | None = await keys.claim(request, owner, key)
    return claimed


def _database_away(exc: BaseException) -> bool:
    """The database did not answer (down, failing over, the connection lost): worth trying the
    same statement again later, unlike an error of the statement itself."""
    return database_unavailable(exc) or retry_reason(exc) == CONNECTION_LOST


async def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    digest.update(request.method.encode())
    digest.update(b"\x00" + request.url.path.encode())
    digest.update(b"\x00" + request.url.query.encode())
    # A form parsed before the route ran has consumed the stream: its bytes are the kept ones.
    kept = request.scope.get(KEPT_BODY)
    body = kept.whole if kept is not None else None
    digest.update(b"\x00" + (body if body is not None else await request.body()))
    return digest.hexdigest()
