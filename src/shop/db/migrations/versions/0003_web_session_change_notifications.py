"""web session change notifications (PostgreSQL): the feed of the session read cache

Every UPDATE or DELETE of a web session NOTIFYs its key when its transaction commits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 11:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no LISTEN/NOTIFY: its web sessions are read from the file
    op.execute(
        """
        CREATE OR REPLACE FUNCTION web_sessions_notify_change() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('web_sessions_changed', OLD.key);
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute("DROP TRIGGER IF EXISTS web_sessions_notify_change ON web_sessions")
    op.execute(
        """
        CREATE TRIGGER web_sessions_notify_change
        AFTER UPDATE OR DELETE ON web_sessions
        FOR EACH ROW EXECUTE FUNCTION web_sessions_notify_change()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS web_sessions_notify_change ON web_sessions")
    op.execute("DROP FUNCTION IF EXISTS web_sessions_notify_change()")
