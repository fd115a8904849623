"""web session change notifications carry the new version (PostgreSQL)

The feed's messages become "<key> <version>" (or "<key> -" for a delete), so a process can keep
the record it just wrote in its cache: its own notification, arriving afterwards for the same
version, no longer evicts it. Processes of the previous release read these messages as keys
they do not hold and would keep stale records for up to the cache's max age (60 s): do not run
them beside this one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

from alembic import op

from fastapi_atomic.websession import postgres_notify_trigger
from fastapi_atomic.websession.cache import notify_channel, trigger_name
from shop.db.models import web_sessions

revision: str = "0004"
down_revision: str | None = "0003"
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
    name, channel = trigger_name(web_sessions), notify_channel(web_sessions)
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{channel}', OLD.key);
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
