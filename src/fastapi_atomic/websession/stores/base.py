"""The store protocol. Every store passes ``fastapi_atomic.testing``'s contract suite.

Writes happen while the request's unit of work is finishing (before its COMMIT): the SQL store
writes through ``uow.db`` and so commits or rolls back with the data; other stores write at once
and register an ``on_rollback`` hook that undoes the write if the COMMIT then fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from ...unit_of_work import UnitOfWork
from ..record import Changes, SessionRecord


class StoreTimeouts:
    """What every store is told by the manager: its timeouts and its clock (for TTLs, purge)."""

    def __init__(self) -> None:
        self.idle_timeout = 1800.0
        self.absolute_timeout = 43200.0
        self.clock: Callable[[], float] = time.time

    def configure(
        self,
        *,
        idle_timeout: float,
        absolute_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.idle_timeout, self.absolute_timeout, self.clock = idle_timeout, absolute_timeout, clock

    def expires_at(self, record: SessionRecord) -> float:
        return record.expires_at(self.idle_timeout, self.absolute_timeout)

    async def start(self, engine: AsyncEngine) -> None:
        """Start what runs in the background (a cache's invalidation feed); app start-up."""

    async def aclose(self) -> None:
        """Stop it and let go of connections; app shut-down."""


class WebSessionStore(Protocol):
    async def load(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        """The record under ``key`` (expired or not: the manager judges), or None."""
        ...

    async def create(self, key: str, record: SessionRecord, uow: UnitOfWork) -> None:
        """Store a new record; ``key`` is fresh (256 random bits), never one in use."""
        ...

    async def update(
        self,
        key: str,
        changes: Changes,
        uow: UnitOfWork,
        *,
        current: SessionRecord | None = None,
    ) -> SessionRecord | None:
        """Replay ``changes`` on the newest record (compare-and-set on its version, retried).

        ``current`` is the record as the request loaded it: tried first, it saves a read when
        nobody changed the session meanwhile (the common case).

        Returns None, writing nothing, when the record is gone: a session destroyed by a logout
        or a regeneration meanwhile is never written back into existence.
        """
        ...

    async def delete(self, key: str, uow: UnitOfWork) -> None: ...

    async def list_for_user(
        self, user_id: str, uow: UnitOfWork
    ) -> list[tuple[str, SessionRecord]]: ...

    async def delete_for_user(self, user_id: str, uow: UnitOfWork, *, keep: str | None) -> int:
        """Delete every session of ``user_id`` but ``keep``; returns how many."""
        ...

    async def ping(self) -> None:
        """Raise if the store does not answer (for readiness checks)."""
        ...

    def configure(
        self, *, idle_timeout: float, absolute_timeout: float, clock: Callable[[], float] = ...
    ) -> None:
        """Told by the manager, so a store can expire records on its own (TTLs, purge)."""
        ...

    async def start(self, engine: AsyncEngine) -> None:
        """App start-up, with the app's engine (where the SQL store's feed LISTENs)."""
        ...

    async def aclose(self) -> None: ...
