"""web session change notifications (PostgreSQL): the feed of the session read cache

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 11:40:00
"""

from collections.abc import Sequence

from alembic import op

from fastapi_atomic.websession import postgres_notify_trigger
from fastapi_atomic.websession.cache import trigger_name
from shop.db.models import web_sessions

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no LISTEN/NOTIFY: its web sessions are read from the file
    for statement in postgres_notify_trigger(web_sessions):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    name = trigger_name(web_sessions)
    op.execute(f"DROP TRIGGER IF EXISTS {name} ON {web_sessions.name}")
    op.execute(f"DROP FUNCTION IF EXISTS {name}()")
