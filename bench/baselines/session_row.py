"""A web session kept in a row of the shop's ``web_sessions`` table, with nothing of the library
around it: written at log-in, the order id appended in the order's transaction by one UPDATE
(SQLite's ``json_insert``, no read). The least that keeping a session with the data costs a
checkout; the reference rows of ``idiom_writes.py`` and ``bench.layers`` both use it.
"""

from __future__ import annotations

import secrets
import time

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fastapi_atomic.websession.record import SessionRecord
from shop.db.models import web_sessions

#: the order id appended to the row's order_ids by SQLite, the version moved forward (so the
#: change-log trigger logs it, as it logs the store's compare-and-set)
APPEND_ORDER_ID = (
    update(web_sessions)
    .where(web_sessions.c.key == bindparam("of_key"))
    .values(
        record=func.json_insert(
            web_sessions.c.record, "$.data.order_ids[#]", bindparam("order_id")
        ),
        version=web_sessions.c.version + 1,
    )
)


async def create(connection: AsyncConnection, user_id: int, name: str, email: str) -> str:
    """A row for the user, as the shop's store writes one at log-in; its key."""
    key, now = secrets.token_urlsafe(32), time.time()
    record = SessionRecord(
        data={"user": {"name": name, "email": email, "roles": []}, "order_ids": []},
        created_at=now,
        last_seen_at=now,
        csrf_token=secrets.token_urlsafe(32),
        public_id=secrets.token_urlsafe(16),
        user_id=str(user_id),
        authenticated_at=now,
    )
    await connection.execute(
        insert(web_sessions),
        {
            "key": key,
            "version": record.version,
            "user_id": record.user_id,
            "record": record.to_json(),
            "expires_at": now + 86400,
        },
    )
    return key


async def append_order_id(db: AsyncSession, key: str, order_id: int) -> None:
    """In ``db``'s transaction; a row that is not there fails the request (the row measured
    would otherwise be a checkout that writes no session)."""
    result = await db.execute(APPEND_ORDER_ID, {"of_key": key, "order_id": order_id})
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LookupError(f"no web-session row {key!r}")
