"""Web sessions in the app's own database, written through the unit of work's AsyncSession.

This is what no other session library does: the session's changes are part of the request's
transaction, so they commit or roll back together with the data (an order and its id in the
session: both or neither). Include :func:`web_sessions_table` in the app's metadata so its
migrations create the table.
"""

from __future__ import annotations

import logging
from typing import Literal

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
from sqlalchemy.ext.asyncio import AsyncEngine

from ...engine import transaction_pooled
from ...exceptions import ServiceUnavailable
from ...unit_of_work import SqlAlchemyUnitOfWork, UnitOfWork
from ..cache import DELETED, RecordCache, message
from ..feeds import InvalidationFeed, PostgresFeed, PostgresPublisher, SqliteFeed
from ..record import SessionRecord
from .base import WebSessionStore
from .sql_trigger import change_log_name, notify_channel, sqlite_trigger_names, trigger_name

logger = logging.getLogger("fastapi_atomic.websession")


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


class SqlStore(WebSessionStore):
    """``cache=True`` answers reads from memory (see :mod:`..cache`).

    The cache needs its feed's triggers, created in a migration: on PostgreSQL those of
    :func:`.sql_trigger.postgres_notify_trigger` (LISTEN/NOTIFY), on a SQLite file the change
    log of :func:`.sql_trigger.sqlite_change_log`, which the feed looks at every
    ``poll_interval`` seconds. Without them, or on a SQLite database in memory (which no other
    connection could watch), every read goes to the database.

    On PostgreSQL, ``notify`` says who tells the other processes of a change:

    - ``"store"`` (the default): the store itself, just before the writing transaction
      commits, in a transaction of its own (:class:`.feeds.PostgresPublisher`), so that
      COMMITs that write web sessions do not wait for each other on NOTIFY's lock. Every
      process that writes web sessions must run the store (``start()``, as the manager's
      lifespan does); a change made around it (a hand-written UPDATE) is seen by the other
      processes' caches only after their ``max_age``.
    - ``"trigger"``: the trigger of :func:`.sql_trigger.postgres_notify_trigger`, in the
      writing transaction: it sees every change, however made, at the price of that lock.

    ``listen_url``: where the PostgreSQL feed's LISTEN connection (and the store's own
    NOTIFYs) go, when not to the engine's URL. A LISTEN needs a server session of its own,
    which a pooler in transaction mode does not give: point it past the pooler, at the primary
    (a URL naming every host with ``target_session_attrs=primary`` follows a failover).
    """

    kind = "sql"

    def __init__(
        self,
        table: Table,
        *,
        cache: bool | RecordCache = False,
        poll_interval: float = 0.002,
        listen_url: str | None = None,
        notify: Literal["store", "trigger"] = "store",
    ) -> None:
        super().__init__()
        self.table = table
        self.cache = RecordCache.from_option(cache)
        self.poll_interval = poll_interval
        self.listen_url = listen_url
        self.notify = notify
        self._publisher: PostgresPublisher | None = None
        self._feed: InvalidationFeed | None = None
        # Built once, with bind parameters: these run on every request that saves a session.
        self._select = select(table.c.record).where(table.c.key == bindparam("key"))
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

    async def read(self, key: str, uow: UnitOfWork) -> SessionRecord | None:
        if isinstance(uow, SqlAlchemyUnitOfWork) and not uow._in_transaction:
            # Not in a transaction yet: read in autocommit, one round trip instead of BEGIN,
            # SELECT, COMMIT, and no transaction held by a request that only reads its session.
            # On SQLite it also leaves the single write lock free for a separate transaction
            # the request may need first (an idempotency key's claim). Saving is a
            # compare-and-set on the version, so reading aside cannot lose a concurrent write.
            async with uow._autocommit_engine.connect() as connection:
                text = await connection.scalar(self._select, {"key": key})
        else:
            text = await uow.db.scalar(self._select, {"key": key})
        return SessionRecord.from_json(text) if text is not None else None

    async def create(self, key: str, record: SessionRecord, uow: UnitOfWork) -> None:
        await uow.db.execute(
            insert(self.table),
            {
                "key": key,
                "version": record.version,
                "user_id": record.user_id,
                "record": record.to_json(),
                "expires_at": self.expires_at(record),
            },
        )
        self.cache_on_commit(uow, key, record)

    async def compare_and_set(
        self, key: str, expected: SessionRecord, new: SessionRecord, uow: UnitOfWork
    ) -> bool:
        result = await uow.db.execute(
            self._compare_and_set,
            {
                "of_key": key,
                "expected": expected.version,
                "new_version": new.version,
                "new_record": new.to_json(),
                "new_expires_at": self.expires_at(new),
            },
        )
        changed = bool(result.rowcount == 1)  # type: ignore[attr-defined]
        if changed:
            self._announce(uow, [message(key, new.version)])
        return changed

    async def delete(self, key: str, uow: UnitOfWork) -> None:
        await uow.db.execute(self._delete, {"key": key})
        self.uncache_on_commit(uow, key)
        self._announce(uow, [message(key, DELETED)])

    async def list_for_user(self, user_id: str, uow: UnitOfWork) -> list[tuple[str, SessionRecord]]:
        rows = await uow.db.execute(
            select(self.table.c.key, self.table.c.record).where(self.table.c.user_id == user_id)
        )
        return [(key, SessionRecord.from_json(text)) for key, text in rows.all()]

    async def delete_for_user(self, user_id: str, uow: UnitOfWork, *, keep: str | None) -> int:
        condition = self.table.c.user_id == user_id
        if keep is not None:
            condition &= self.table.c.key != keep
        result = await uow.db.execute(
            delete(self.table).where(condition).returning(self.table.c.key)
        )
        keys = result.scalars().all()
        for key in keys:
            self.uncache_on_commit(uow, key)
        self._announce(uow, [message(key, DELETED) for key in keys])
        return len(keys)

    def _announce(self, uow: UnitOfWork, messages: list[str]) -> None:
        """Have the publisher send ``messages`` before ``uow`` commits (``notify="store"``).
        A publisher that does not answer fails the request before COMMIT: a change no other
        process would hear of is not made."""
        publisher = self._publisher
        if publisher is None or not messages or not isinstance(uow, SqlAlchemyUnitOfWork):
            return

        async def publish() -> None:
            try:
                await publisher.publish(messages)
            except Exception as exc:
                raise ServiceUnavailable(
                    "The web-session change feed is unavailable; try again."
                ) from exc

        uow._before_commit(publish)

    async def purge_expired(self, uow: UnitOfWork) -> int:
        result = await uow.db.execute(
            delete(self.table).where(self.table.c.expires_at <= self.clock())
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def start(self, engine: AsyncEngine) -> None:
        channel = notify_channel(self.table)
        postgres = engine.dialect.name == "postgresql"
        if postgres and self.notify == "store" and self._publisher is None:
            # whether or not this process caches: the others may
            self._publisher = PostgresPublisher(engine, channel, url=self.listen_url)
        if self.cache is None or self._feed is not None:
            return
        if postgres and self.listen_url is None and transaction_pooled(engine):
            logger.warning(
                "web-session cache off: a LISTEN through a pooler in transaction mode hears "
                "nothing; give the store a listen_url past the pooler"
            )
            return
        if postgres:
            trigger = trigger_name(self.table) if self.notify == "trigger" else None
            self._feed = PostgresFeed(self.cache, engine, channel, trigger, url=self.listen_url)
        elif engine.dialect.name == "sqlite":
            self._feed = SqliteFeed.for_engine(
                self.cache,
                engine,
                change_log=change_log_name(self.table),
                table=self.table.name,
                triggers=sqlite_trigger_names(self.table),
                poll_interval=self.poll_interval,
            )
            if self._feed is None:
                logger.info("web-session cache off: nothing can watch a SQLite database in memory")
                return
        else:
            logger.info("web-session cache off: no change feed for %s", engine.dialect.name)
            return
        await self._feed.start()

    async def aclose(self) -> None:
        if self._feed is not None:
            await self._feed.aclose()
            self._feed = None
        if self._publisher is not None:
            await self._publisher.aclose()
            self._publisher = None
