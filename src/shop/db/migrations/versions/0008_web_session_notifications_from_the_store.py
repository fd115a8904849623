"""web session change notifications sent by the store, not by a trigger (PostgreSQL)

The NOTIFY trigger made every COMMIT that wrote a web session take PostgreSQL's notify lock
and hold it through its WAL flush, so those COMMITs ran one at a time. The SQL store now sends
the same messages itself, just before the writing transaction commits, in a transaction of
its own (``SqlStore(notify="store")``), and the trigger goes. Processes of the previous
release find the trigger missing and stop caching (they read every session from the
database) until they are replaced.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 10:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from fastapi_atomic.websession import postgres_notify_trigger

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite's change log stays: it is how a process hears of another's writes
    op.execute("DROP TRIGGER IF EXISTS web_sessions_notify_change ON web_sessions")
    op.execute("DROP FUNCTION IF EXISTS web_sessions_notify_change()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in postgres_notify_trigger(sa.Table("web_sessions", sa.MetaData())):
        op.execute(statement)
