"""web session change log (SQLite): the feed of the session read cache

SQLite has no NOTIFY: triggers write every UPDATE or DELETE of a web session into
web_sessions_changes, in the writing transaction, and each process's feed reads the rows it has
not seen when the file changed. A row holds the key and the version the change produced, NULL
for a delete, 0 for a change whose version says nothing. PostgreSQL has its NOTIFY trigger
(0003, 0004): nothing to do there.

A later migration that rebuilds web_sessions on SQLite (batch mode) drops these triggers: it
must create them again, or the cache stays off (the feed finds them missing).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL's cache is fed by NOTIFY (0003, 0004)
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS web_sessions_changes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key VARCHAR(64) NOT NULL,
            version INTEGER
        )
        """
    )
    op.execute("DROP TRIGGER IF EXISTS web_sessions_log_update")
    op.execute(
        """
        CREATE TRIGGER web_sessions_log_update AFTER UPDATE ON web_sessions FOR EACH ROW
        BEGIN
            INSERT INTO web_sessions_changes (key, version)
            SELECT NEW.key, NEW.version WHERE NEW.key = OLD.key AND NEW.version > OLD.version;
            INSERT INTO web_sessions_changes (key, version)
            SELECT OLD.key, 0 WHERE NOT (NEW.key = OLD.key AND NEW.version > OLD.version)
            UNION ALL
            SELECT NEW.key, 0 WHERE NOT (NEW.key = OLD.key AND NEW.version > OLD.version);
        END
        """
    )
    op.execute("DROP TRIGGER IF EXISTS web_sessions_log_delete")
    op.execute(
        """
        CREATE TRIGGER web_sessions_log_delete AFTER DELETE ON web_sessions FOR EACH ROW
        BEGIN
            INSERT INTO web_sessions_changes (key, version) VALUES (OLD.key, NULL);
        END
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER IF EXISTS web_sessions_log_update")
    op.execute("DROP TRIGGER IF EXISTS web_sessions_log_delete")
    op.execute("DROP TABLE IF EXISTS web_sessions_changes")
