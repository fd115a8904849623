"""The trigger that feeds the SQL store's cache on PostgreSQL: NOTIFY on every change of a row."""

from __future__ import annotations

from sqlalchemy import Table


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
