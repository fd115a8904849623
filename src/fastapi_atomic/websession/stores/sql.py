"""Web sessions in the app's own database, written through the request's AsyncSession.

This is what no other session library does: the session's changes are part of the request's
transaction, so they commit or roll back together with the data (an order and its id in the
session: both or neither). Include :func:`web_sessions_table` in the app's metadata so its
migrations create the table.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from ...unit_of_work import UnitOfWork
from ..record import Changes, SessionRecord, apply_changes
from .base import StoreTimeouts

_CAS_ATTEMPTS = 20


def web_sessions_table(metadata: MetaData, name: str = "web_sessions") -> Table:
    return Table(
        name,
        metadata,
        Column("key", String(64), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("user_id", String(64), nullable=True, index=True),
        Column("record", Text, nullable=False),
        Column("expires_at", Float, nullable=False, index=True),
    )


class SqlStore(StoreTimeouts):
    def __init__(self, table: Table) -> None:
        self.table = table
        self._select = select(table.c.record).where(table.c.key == bindparam("key"))
        super().__init__()

    async def load(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        if uow.in_transaction:
            return await self._load(uow.db, key)
        # Read in autocommit, outside the request's transaction: one round trip instead of
        # BEGIN, SELECT, COMMIT, and no transaction held for a request that only reads the
        # session. On SQLite it also keeps the single write lock free for a separate
        # transaction the request may need first (an idempotency key's claim). Saving is a
        # compare-and-set on the version, so reading aside cannot lose a concurrent write.
        async with uow.autocommit_engine.connect() as connection:
            text = await connection.scalar(self._select, {"key": key})
        return SessionRecord.from_json(text) if text is not None else None

    async def _load(self, db: AsyncSession, key: str) -> SessionRecord | None:
        text = await db.scalar(self._select, {"key": key})
        return SessionRecord.from_json(text) if text is not None else None

    async def create(self, key: str, record: SessionRecord, uow: UnitOfWork) -> None:
        await uow.db.execute(
            insert(self.table).values(
                key=key,
                version=record.version,
                user_id=record.user_id,
                record=record.to_json(),
                expires_at=self.expires_at(record),
            )
        )

    async def update(
        self,
        key: str,
        changes: Changes,
        uow: UnitOfWork,
        *,
        current: SessionRecord | None = None,
    ) -> SessionRecord | None:
        t = self.table
        for _ in range(_CAS_ATTEMPTS):
            if current is None:
                current = await self._load(uow.db, key)
                if current is None:
                    return None
            updated = apply_changes(current, changes)
            result = await uow.db.execute(
                update(t)
                .where(t.c.key == key, t.c.version == current.version)
                .values(
                    version=updated.version,
                    record=updated.to_json(),
                    expires_at=self.expires_at(updated),
                )
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                return updated
            current = None  # changed (or gone) since it was read: read it again
        raise RuntimeError(f"web session kept changing under {_CAS_ATTEMPTS} attempts to save it")

    async def delete(self, key: str, uow: UnitOfWork) -> None:
        await uow.db.execute(delete(self.table).where(self.table.c.key == key))

    async def list_for_user(self, user_id: str, uow: UnitOfWork) -> list[tuple[str, SessionRecord]]:
        rows = await uow.db.execute(
            select(self.table.c.key, self.table.c.record).where(self.table.c.user_id == user_id)
        )
        return [(key, SessionRecord.from_json(text)) for key, text in rows.all()]

    async def delete_for_user(self, user_id: str, uow: UnitOfWork, *, keep: str | None) -> int:
        condition = self.table.c.user_id == user_id
        if keep is not None:
            condition &= self.table.c.key != keep
        result = await uow.db.execute(delete(self.table).where(condition))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def ping(self) -> None:
        return None  # the database's own readiness check covers it

    async def purge_expired(self, db: AsyncSession, now: float | None = None) -> int:
        moment = self.clock() if now is None else now
        result = await db.execute(delete(self.table).where(self.table.c.expires_at <= moment))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
