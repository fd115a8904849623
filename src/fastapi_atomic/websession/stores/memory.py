"""One process's memory: for tests and demos. Changes undo themselves on a rollback."""

from __future__ import annotations

from ...unit_of_work import UnitOfWork
from ..record import Changes, SessionRecord, apply_changes
from .base import StoreTimeouts


class MemoryStore(StoreTimeouts):
    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}
        super().__init__()

    async def load(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        record = self._records.get(key)
        return _isolated(record) if record is not None else None

    async def create(self, key: str, record: SessionRecord, uow: UnitOfWork) -> None:
        self._records[key] = _isolated(record)
        uow.on_rollback(lambda: self._restore(key, record.version, None))

    async def update(
        self,
        key: str,
        changes: Changes,
        uow: UnitOfWork,
        *,
        current: SessionRecord | None = None,
    ) -> SessionRecord | None:
        current = self._records.get(key)  # always the newest: no compare-and-set needed
        if current is None:
            return None
        updated = apply_changes(current, changes)
        self._records[key] = updated
        uow.on_rollback(lambda: self._restore(key, updated.version, current))
        return _isolated(updated)

    async def delete(self, key: str, uow: UnitOfWork) -> None:
        old = self._records.pop(key, None)
        if old is not None:
            uow.on_rollback(lambda: self._restore(key, None, old))

    async def list_for_user(self, user_id: str, uow: UnitOfWork) -> list[tuple[str, SessionRecord]]:
        return [(k, _isolated(r)) for k, r in self._records.items() if r.user_id == user_id]

    async def delete_for_user(self, user_id: str, uow: UnitOfWork, *, keep: str | None) -> int:
        doomed = [k for k, r in self._records.items() if r.user_id == user_id and k != keep]
        for key in doomed:
            await self.delete(key, uow)
        return len(doomed)

    async def ping(self) -> None:
        return None

    async def purge_expired(self, now: float | None = None) -> int:
        moment = self.clock() if now is None else now
        dead = [key for key, record in self._records.items() if self.expires_at(record) <= moment]
        for key in dead:
            del self._records[key]
        return len(dead)

    def _restore(
        self, key: str, expected_version: int | None, previous: SessionRecord | None
    ) -> None:
        """Undo one write if nothing else changed the record since."""
        current = self._records.get(key)
        current_version = current.version if current is not None else None
        if current_version != expected_version:
            return
        if previous is None:
            self._records.pop(key, None)
        else:
            self._records[key] = previous


def _isolated(record: SessionRecord) -> SessionRecord:
    """A copy sharing nothing with ``record``, as if it had been stored and read back."""
    return SessionRecord.from_json(record.to_json())
