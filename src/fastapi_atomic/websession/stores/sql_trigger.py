"""The triggers that feed the SQL store's cache: NOTIFY on PostgreSQL, a change log on SQLite."""

from __future__ import annotations

from sqlalchemy import Table

#: the version a SQLite change-log row carries for a change whose version says nothing (a
#: hand-written UPDATE that left it alone, a key renamed): versions start at 1
UNKNOWN_VERSION = 0


def notify_channel(table: Table) -> str:
    """The channel the SQL store's trigger NOTIFYs on and its feed LISTENs to."""
    return f"{table.name}_changed"


def trigger_name(table: Table) -> str:
    """The trigger's name, and its function's."""
    return f"{table.name}_notify_change"


def postgres_notify_trigger(table: Table) -> list[str]:
    """DDL for the trigger that feeds the SQL store's cache (PostgreSQL only).

    Run it in a migration after creating the table (running it again replaces an older
    version). Every UPDATE or DELETE of a row, by the store or by anything else (a purge, a
    hand-written query), NOTIFYs on commit: "<key> <new version>" for an update that moved the
    version forward, "<key> -" for a delete, the bare key for any other change.
    """
    name, channel = trigger_name(table), notify_channel(table)
    return [
        f"""
        CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('{channel}', OLD.key || ' -');
            ELSIF NEW.key = OLD.key AND NEW.version > OLD.version THEN
                PERFORM pg_notify('{channel}', NEW.key || ' ' || NEW.version);
            ELSE
                PERFORM pg_notify('{channel}', OLD.key);
                PERFORM pg_notify('{channel}', NEW.key);
            END IF;
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """,
        f"DROP TRIGGER IF EXISTS {name} ON {table.name}",
        f"""
        CREATE TRIGGER {name}
        AFTER UPDATE OR DELETE ON {table.name}
        FOR EACH ROW EXECUTE FUNCTION {name}()
        """,
    ]


def change_log_name(table: Table) -> str:
    """The SQLite change log's table, which the store's feed reads."""
    return f"{table.name}_changes"


def sqlite_trigger_names(table: Table) -> tuple[str, str]:
    """The SQLite triggers that write the change log: on UPDATE, on DELETE."""
    return f"{table.name}_log_update", f"{table.name}_log_delete"


def sqlite_change_log(table: Table) -> list[str]:
    """DDL for the change log that feeds the SQL store's cache (SQLite only).

    SQLite has no NOTIFY, so triggers write every UPDATE or DELETE of a row into a table
    (:func:`change_log_name`) that every process's feed reads when the file changed. The rows
    are written in the writing transaction: they commit with the change, and vanish with one
    that rolled back. Each row says what a message of :mod:`..cache` says: the key and its new
    version, NULL for a delete, :data:`UNKNOWN_VERSION` for any other change. Inserts are not
    logged (as on PostgreSQL): a new key (256 random bits) is in no cache. Run it in a
    migration after creating the table (running it again replaces older triggers); a
    migration that rebuilds the table (Alembic's batch mode) drops them, and must run it again.
    """
    log = change_log_name(table)
    on_update, on_delete = sqlite_trigger_names(table)
    moved_forward = "NEW.key = OLD.key AND NEW.version > OLD.version"
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {log} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key VARCHAR(64) NOT NULL,
            version INTEGER
        )
        """,
        f"DROP TRIGGER IF EXISTS {on_update}",
        f"""
        CREATE TRIGGER {on_update} AFTER UPDATE ON {table.name} FOR EACH ROW
        BEGIN
            INSERT INTO {log} (key, version)
            SELECT NEW.key, NEW.version WHERE {moved_forward};
            INSERT INTO {log} (key, version)
            SELECT OLD.key, {UNKNOWN_VERSION} WHERE NOT ({moved_forward})
            UNION ALL
            SELECT NEW.key, {UNKNOWN_VERSION} WHERE NOT ({moved_forward});
        END
        """,
        f"DROP TRIGGER IF EXISTS {on_delete}",
        f"""
        CREATE TRIGGER {on_delete} AFTER DELETE ON {table.name} FOR EACH ROW
        BEGIN
            INSERT INTO {log} (key, version) VALUES (OLD.key, NULL);
        END
        """,
    ]


def drop_sqlite_change_log(table: Table) -> list[str]:
    """DDL that removes what :func:`sqlite_change_log` made (a migration's downgrade)."""
    return [
        *(f"DROP TRIGGER IF EXISTS {name}" for name in sqlite_trigger_names(table)),
        f"DROP TABLE IF EXISTS {change_log_name(table)}",
    ]
