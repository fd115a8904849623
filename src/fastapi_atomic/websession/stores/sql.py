"""Web sessions in the app's own database, written through the request's AsyncSession.

This is what no other session library does: the session's changes are part of the request's
transaction, so they commit or roll back together with the data (an order and its id in the
session: both or neither). Include :func:`web_sessions_table` in the app's metadata so its
migrations create the table.
"""

from __future__ import annotations

import logging

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
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ...unit_of_work import UnitOfWork
from ..cache import PostgresFeed, RecordCache, notify_channel, trigger_name
from ..record import Changes, SessionRecord, apply_changes
from .base import StoreTimeouts

logger = logging.getLogger("fastapi_atomic.websession")

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
    """``cache=True`` answers reads from memory on PostgreSQL (see :mod:`..cache`).

    The cache needs the trigger of :func:`..cache.postgres_notify_trigger` (create it in a
    migration); without it, or on SQLite, every read goes to the database.
    """

    def __init__(self, table: Table, *, cache: bool | RecordCache = False) -> None:
        self.table = table
        # Built once: a statement built per request cost more CPU than the database's work.
        self._select = select(table.c.record).where(table.c.key == bindparam("key"))
        self._insert = insert(table)
        self._compare_and_set = (
            update(table)
            .where(table.c.key == bindparam("of_key"), table.c.version == bindparam("expected"))
            .values(
                version=bindparam("new_version"),
                record=bindparam("new_record"),
                expires_at=bindparam("new_expires_at"),
            )
        )
        self._delete = delete(table).where(table.c.key == bindparam("key"))
        self.cache = RecordCache.from_option(cache)
        self._feed: PostgresFeed | None = None
        super().__init__()

    async def start(self, engine: AsyncEngine) -> None:
        if self.cache is None or self._feed is not None:
            return
        if engine.dialect.name != "postgresql":
            logger.info("web-session cache off: it needs PostgreSQL's LISTEN/NOTIFY")
            return
        async with engine.connect() as connection:
            found = await connection.scalar(
                sql_text("SELECT count(*) FROM pg_trigger WHERE tgname = :name"),
                {"name": trigger_name(self.table)},
            )
        if not found:
            logger.warning(
                "web-session cache off: trigger %s is missing (see postgres_notify_trigger)",
                trigger_name(self.table),
            )
            return
        self._feed = PostgresFeed(self.cache, engine, notify_channel(self.table))
        await self._feed.start()

    async def aclose(self) -> None:
        if self._feed is not None:
            await self._feed.aclose()
            self._feed = None

    async def load(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        if uow.in_transaction:
            return await self._load(uow.db, key)

        # Read in autocommit, outside the request's transaction: one round trip instead of
        # BEGIN, SELECT, COMMIT, and no transaction held for a request that only reads the
        # session. On SQLite it also keeps the single write lock free for a separate
        # transaction the request may need first (an idempotency key's claim). Saving is a
        # compare-and-set on the version, so reading aside cannot lose a concurrent write.
        async def read() -> str | None:
            async with uow.autocommit_engine.connect() as connection:
                found: str | None = await connection.scalar(self._select, {"key": key})
                return found

        if self.cache is not None:
            return await self.cache.read_record(key, read)
        found = await read()
        return SessionRecord.from_json(found) if found is not None else None

    def _keep(self, uow: UnitOfWork, key: str, record: SessionRecord) -> None:
        if self.cache is not None:
            self.cache.keep_on_commit(uow, key, record)

    def _drop(self, uow: UnitOfWork, key: str) -> None:
        if self.cache is not None:
            self.cache.drop_on_commit(uow, key)

    async def _load(self, db: AsyncSession, key: str) -> SessionRecord | None:
        text = await db.scalar(self._select, {"key": key})
        return SessionRecord.from_json(text) if text is not None else None

    async def create(self, key: str, record: SessionRecord, uow: UnitOfWork) -> None:
        await uow.db.execute(
            self._insert,
            {
                "key": key,
                "version": record.version,
                "user_id": record.user_id,
                "record": record.to_json(),
                "expires_at": self.expires_at(record),
            },
        )
        self._keep(uow, key, record)

    async def update(
        self,
        key: str,
        changes: Changes,
        uow: UnitOfWork,
        *,
        current: SessionRecord | None = None,
    ) -> SessionRecord | None:
        for _ in range(_CAS_ATTEMPTS):
            if current is None:
                current = await self._load(uow.db, key)
                if current is None:
                    return None
            updated = apply_changes(current, changes)
            result = await uow.db.execute(
                self._compare_and_set,
                {
                    "of_key": key,
                    "expected": current.version,
                    "new_version": updated.version,
                    "new_record": updated.to_json(),
                    "new_expires_at": self.expires_at(updated),
                },
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                self._keep(uow, key, updated)
                return updated
            current = None  # changed (or gone) since it was read: read it again
        raise RuntimeError(f"web session kept changing under {_CAS_ATTEMPTS} attempts to save it")

    async def delete(self, key: str, uow: UnitOfWork) -> None:
        await uow.db.execute(self._delete, {"key": key})
        self._drop(uow, key)

    async def list_for_user(self, user_id: str, uow: UnitOfWork) -> list[tuple[str, SessionRecord]]:
        rows = await uow.db.execute(
            select(self.table.c.key, self.table.c.record).where(self.table.c.user_id == user_id)
        )
        return [(key, SessionRecord.from_json(text)) for key, text in rows.all()]

    async def delete_for_user(self, user_id: str, uow: UnitOfWork, *, keep: str | None) -> int:
        condition = self.table.c.user_id == user_id
        if keep is not None:
            condition &= self.table.c.key != keep
        statement = delete(self.table).where(condition).returning(self.table.c.key)
        result = await uow.db.execute(statement)
        keys = result.scalars().all()
        for key in keys:
            self._drop(uow, key)
        return len(keys)

    async def ping(self) -> None:
        return None  # the database's own readiness check covers it

    async def purge_expired(self, db: AsyncSession, now: float | None = None) -> int:
        moment = self.clock() if now is None else now
        result = await db.execute(delete(self.table).where(self.table.c.expires_at <= moment))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
