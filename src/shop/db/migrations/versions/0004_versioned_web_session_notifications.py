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

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no LISTEN/NOTIFY: its web sessions are read from the file
    # The trigger created by 0003 calls this function: replacing it is enough.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION web_sessions_notify_change() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('web_sessions_changed', OLD.key || ' -');
            ELSIF NEW.key = OLD.key AND NEW.version > OLD.version THEN
                PERFORM pg_notify('web_sessions_changed', NEW.key || ' ' || NEW.version);
            ELSE
                PERFORM pg_notify('web_sessions_changed', OLD.key);
                PERFORM pg_notify('web_sessions_changed', NEW.key);
            END IF;
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
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
