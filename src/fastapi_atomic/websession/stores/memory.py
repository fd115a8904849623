"""One process's memory: for tests and demos. Changes undo themselves on a rollback."""

from __future__ import annotations

from ...unit_of_work import UnitOfWork
from ..record import SessionRecord
from .base import WebSessionStore


class MemoryStore(WebSessionStore):
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, SessionRecord] = {}

    async def read(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        record = self._records.get(key)
        return _isolated(record) if record is not None else None

    async def create(self, key: str, record: SessionRecord, uow: UnitOfWork) -> None:
        self._records[key] = _isolated(record)
        uow.on_rollback(lambda: self._restore(key, record.version, None))

    async def compare_and_set(
        self, key: str, expected: SessionRecord, new: SessionRecord, uow: UnitOfWork
    ) -> bool:
        previous = self._records.get(key)
        if previous is None or previous.version != expected.version:
            return False
        self._records[key] = _isolated(new)
        uow.on_rollback(lambda: self._restore(key, new.version, previous))
        return True

    async def delete(self, key: str, uow: UnitOfWork) -> None:
        old = self._records.pop(key, None)
        if old is not None:
            uow.on_rollback(lambda: self._restore(key, None, old))

    async def list_for_user(self, user_id: str, uow: UnitOfWork) -> list[tuple[str, SessionRecord]]:
        return [(k, _isolated(r)) for k, r in self._records.items() if r.user_id == user_id]

    async def purge_expired(self, uow: UnitOfWork) -> int:
        now = self.clock()
        dead = [key for key, record in self._records.items() if self.expires_at(record) <= now]
        for key in dead:
            await self.delete(key, uow)
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
