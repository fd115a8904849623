#!/usr/bin/env bash
# What a web session's change notification costs PostgreSQL, three ways, with pgbench only (no
# HTTP, no Python): each transaction updates one web session row (the client's own) and
# inserts an order row, and
#   none     sends no notification (the floor of this comparison);
#   trigger  NOTIFYs from a trigger, inside the writing transaction (SqlStore(notify="trigger"));
#   store    NOTIFYs in a transaction of its own before the writing one, without waiting for
#            its WAL flush (SqlStore(notify="store"), unbatched: one per write, its worst case).
# Usage: bench/pgbench/notify.sh [clients=64] [seconds=15] [postgres URL's database=test]
# It makes and drops a database of its own (bench_notify_<pid>) on the server PG* points at.
set -euo pipefail
clients=${1:-64}
seconds=${2:-15}
admin_db=${3:-test}
db="bench_notify_$$"
export PGHOST=${PGHOST:-127.0.0.1} PGUSER=${PGUSER:-postgres}
work=$(mktemp -d)
trap 'psql -q -d "$admin_db" -c "DROP DATABASE IF EXISTS $db" >/dev/null; rm -rf "$work"' EXIT
psql -q -d "$admin_db" -c "CREATE DATABASE $db" >/dev/null
psql -q -d "$db" >/dev/null <<SQL
CREATE TABLE sessions (key text PRIMARY KEY, version int NOT NULL, record text NOT NULL);
INSERT INTO sessions SELECT 'k' || n, 1, repeat('x', 200) FROM generate_series(1, $clients) n;
CREATE TABLE orders (id bigserial PRIMARY KEY, session text NOT NULL, total int NOT NULL);
CREATE FUNCTION notify_change() RETURNS trigger AS \$\$
BEGIN PERFORM pg_notify('sessions_changed', NEW.key || ' ' || NEW.version); RETURN NULL; END;
\$\$ LANGUAGE plpgsql;
CREATE TRIGGER notify_change AFTER UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION notify_change();
ALTER TABLE sessions DISABLE TRIGGER notify_change;
SQL
write='BEGIN;
INSERT INTO orders (session, total) VALUES ('"'"'k'"'"' || :client_id, 100);
UPDATE sessions SET version = version + 1 WHERE key = '"'"'k'"'"' || (:client_id + 1);
COMMIT;'
printf '%s\n' "$write" > "$work/none.sql"
cp "$work/none.sql" "$work/trigger.sql"
{
    echo "BEGIN; SET LOCAL synchronous_commit TO off;"
    echo "SELECT pg_notify('sessions_changed', 'k' || (:client_id + 1) || ' 2'); COMMIT;"
    printf '%s\n' "$write"
} > "$work/store.sql"
for round in 1 2; do
    for way in none trigger store; do
        if [ "$way" = trigger ]; then state=ENABLE; else state=DISABLE; fi
        psql -q -d "$db" -c "ALTER TABLE sessions $state TRIGGER notify_change" >/dev/null
        tps=$(pgbench -n -c "$clients" -j 2 -T "$seconds" -f "$work/$way.sql" "$db" 2>/dev/null \
            | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
        echo "round $round  $way  $tps tps  ($clients clients, $seconds s)"
    done
done
