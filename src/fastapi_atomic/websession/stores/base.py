"""The store contract: one base class, what a store must implement under one heading.

Writes happen while the unit of work is finishing (before its COMMIT): the SQL store writes
through ``uow.db`` and so commits or rolls back with the data; other stores write at once and
register an ``uow.on_rollback`` hook that undoes the write if the COMMIT then fails.
``fastapi_atomic.testing.WebSessionStoreContract`` checks every rule below on a real backend.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncEngine

from ...unit_of_work import UnitOfWork
from ..cache import RecordCache
from ..metrics import StoreCounters, WebSessionMetrics
from ..record import Changes, SessionRecord, apply_changes

#: how often a save re-reads and retries a session that other requests keep changing
COMPARE_AND_SET_ATTEMPTS = 20


class WebSessionStore(abc.ABC):
    """Where web sessions live, keyed by the hash of their id (never the id itself).

    Records carry a version that every write moves forward; saving a request's changes is a
    compare-and-set on it, written once here (:meth:`update`), so concurrent requests of one
    session replay their changes on each other's instead of overwriting them.
    """

    #: a process-local read cache kept honest by the store's change feed, or None
    cache: RecordCache | None = None
    #: the ``store`` label of its metrics (``atomic_websession_*``); a subclass names itself
    kind = "custom"
    _store_counters: StoreCounters | None = None

    def __init__(self) -> None:
        self.idle_timeout = 1800.0
        self.absolute_timeout = 43200.0
        self.clock: Callable[[], float] = time.time

    # --- What a store implements -------------------------------------------------------

    @abc.abstractmethod
    async def read(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        """The record under ``key`` as stored now (expired or not: the manager judges), or None.

        Never from a cache: :meth:`update` relies on it to see the newest version.
        """

    @abc.abstractmethod
    async def create(self, key: str, record: SessionRecord, uow: UnitOfWork) -> None:
        """Store a new record; ``key`` is fresh (256 random bits), never one in use."""

    @abc.abstractmethod
    async def compare_and_set(
        self, key: str, expected: SessionRecord, new: SessionRecord, uow: UnitOfWork
    ) -> bool:
        """Write ``new`` under ``key`` if the stored version is still ``expected.version``.

        False, writing nothing, when the record changed meanwhile or is gone. A store that
        writes outside the unit of work's transaction undoes the write on rollback (back to
        ``expected``, unless another write came since).
        """

    @abc.abstractmethod
    async def delete(self, key: str, uow: UnitOfWork) -> None:
        """Delete the record under ``key``, if there is one."""

    @abc.abstractmethod
    async def list_for_user(self, user_id: str, uow: UnitOfWork) -> list[tuple[str, SessionRecord]]:
        """Every record of ``user_id``, with its key (expired ones may be among them)."""

    @abc.abstractmethod
    async def purge_expired(self, uow: UnitOfWork) -> int:
        """Delete expired records; returns how many (0 where the store expires them itself)."""

    # --- What a store may override -----------------------------------------------------

    async def delete_for_user(self, user_id: str, uow: UnitOfWork, *, keep: str | None) -> int:
        """Delete every session of ``user_id`` but ``keep``; returns how many."""
        doomed = [key for key, _ in await self.list_for_user(user_id, uow) if key != keep]
        for key in doomed:
            await self.delete(key, uow)
        return len(doomed)

    async def ping(self) -> None:
        """Raise if the store does not answer (readiness checks)."""
        return None

    async def start(self, engine: AsyncEngine) -> None:
        """App start-up, with the app's engine: start what runs in the background."""
        return None

    async def aclose(self) -> None:
        """App shut-down: stop it and let go of connections."""
        return None

    # --- Provided ----------------------------------------------------------------------

    def configure(
        self,
        *,
        idle_timeout: float,
        absolute_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Told by the manager, so a store can expire records on its own (TTLs, purge)."""
        self.idle_timeout, self.absolute_timeout, self.clock = idle_timeout, absolute_timeout, clock

    def expires_at(self, record: SessionRecord) -> float:
        return record.expires_at(self.idle_timeout, self.absolute_timeout)

    async def load(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        """The record a request starts from: from the cache when it holds it, else :meth:`read`."""
        counters = self.counters
        counters.loads.inc()
        if self.cache is None:
            return await self.read(key, uow)
        return await self.cache.read_record(key, lambda: self.read(key, uow), counters)

    @property
    def counters(self) -> StoreCounters:
        """This store's ``atomic_websession_*`` counters (the process-wide ones, by default)."""
        counters = self._store_counters
        if counters is None:
            counters = self._store_counters = WebSessionMetrics.default().for_store(self.kind)
        return counters

    async def update(
        self,
        key: str,
        changes: Changes,
        uow: UnitOfWork,
        *,
        current: SessionRecord | None = None,
    ) -> SessionRecord | None:
        """Replay ``changes`` on the newest record; returns what was written.

        ``current`` is the record as the request loaded it, or the newer one this process's
        cache holds by now: tried first, it saves a read when nobody else changed the session
        meanwhile (the common case). None, writing nothing, when the record is gone: a session
        destroyed by a logout or a regeneration meanwhile is never written back into existence.
        """
        if current is not None and self.cache is not None:
            current = self.cache.newer(key, current.version) or current
        for _ in range(COMPARE_AND_SET_ATTEMPTS):
            if current is None:
                current = await self.read(key, uow)
                if current is None:
                    return None
            updated = apply_changes(current, changes)
            if await self.compare_and_set(key, current, updated, uow):
                self.cache_on_commit(uow, key, updated)
                return updated
            current = None  # changed (or gone) since it was read: read it again
        raise RuntimeError(
            f"web session kept changing under {COMPARE_AND_SET_ATTEMPTS} attempts to save it"
        )

    def cache_on_commit(self, uow: UnitOfWork, key: str, record: SessionRecord) -> None:
        """``uow`` wrote ``record``: this process serves it from memory once ``uow`` commits."""
        if self.cache is not None:
            self.cache.keep_on_commit(uow, key, record)

    def uncache_on_commit(self, uow: UnitOfWork, key: str) -> None:
        """``uow`` deleted ``key``: this process stops serving it the moment ``uow`` commits."""
        if self.cache is not None:
            self.cache.drop_on_commit(uow, key)
