#!/usr/bin/env bash
# What PostgreSQL itself does on this machine, on the store's table shape (events with
# its three indexes plus two event_tags rows per event, ~200-byte jsonb payload):
#   - single-event inserts, one transaction each, from K clients;
#   - 100-event multi-row inserts, one transaction each.
# Synchronous commit, as the store uses. Prints events/s per case, and JSON lines with --json.
#
# Usage: scripts/pg-limit.sh [--seconds 10] [--clients "1 8 64"] [--protocol prepared|simple] [--json]
# (prepared, the default: statements parsed and planned once per connection, as the store's are).
# Needs pgbench (Debian: postgresql-contrib or the server package) and DATABASE_URL
# (default postgres://postgres@127.0.0.1:5432/test).
set -euo pipefail
url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
seconds=10
clients="1 8 64"
json=false
protocol=prepared
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --json) json=true; shift ;;
        --protocol) protocol=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -n 1)
[ -x "$pgbench" ] || { echo "pgbench not found: install postgresql-contrib" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

psql -q "$url" <<'SQL'
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS pglimit CASCADE;
CREATE SCHEMA pglimit;
CREATE SEQUENCE pglimit.positions;
CREATE TABLE pglimit.events (
    position bigint PRIMARY KEY, event_id uuid NOT NULL UNIQUE, event_type text NOT NULL,
    tags text[] NOT NULL, data jsonb NOT NULL, metadata jsonb NOT NULL,
    occurred_at timestamptz NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON pglimit.events (event_type, position);
CREATE TABLE pglimit.event_tags (tag text NOT NULL, position bigint NOT NULL, PRIMARY KEY (tag, position));
SQL

make_script() { # $1 = rows per transaction
    cat <<SQL
\set stream random(1, 100000)
WITH ev AS (
    SELECT nextval('pglimit.positions') AS position, gen_random_uuid() AS id, (:stream)::int + g AS stream
    FROM generate_series(1, $1) g
), ins AS (
    INSERT INTO pglimit.events (position, event_id, event_type, tags, data, metadata, occurred_at)
    SELECT position, id, 'BenchAppended', ARRAY['stream:' || stream, 'client:' || (:client_id)::int],
           jsonb_build_object('stream', stream, 'client', (:client_id)::int, 'payload', repeat('x', 150)), '{}', now()
    FROM ev
)
INSERT INTO pglimit.event_tags (tag, position)
SELECT t, position FROM ev, unnest(ARRAY['stream:' || stream, 'client:' || (:client_id)::int]) t;
SQL
}
make_script 1 > "$work/single.sql"
make_script 100 > "$work/multi100.sql"

run() { # $1 = case, $2 = script, $3 = rows per tx, $4 = clients
    local tps threads=$(( $4 < 2 ? $4 : 2 ))
    rm -f "$work"/log.*
    tps=$(cd "$work" && "$pgbench" -n -M "$protocol" -c "$4" -j "$threads" -T "$seconds" -l --log-prefix=log -f "$2" "$url" 2>/dev/null \
        | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n 1)
    local events p50
    events=$(awk -v t="$tps" -v r="$3" 'BEGIN { printf "%.0f", t * r }')
    # Per-transaction latencies (µs, third column of pgbench's log): the median.
    p50=$(cat "$work"/log.* 2>/dev/null | awk '{ print $3 }' | sort -n \
        | awk '{ v[NR] = $1 } END { if (NR) printf "%.3f", v[int((NR + 1) / 2)] / 1000; else print "null" }')
    if $json; then
        printf '{"case":"%s","clients":%s,"tps":%s,"events_per_s":%s,"p50_ms":%s,"seconds":%s}\n' "$1" "$4" "$tps" "$events" "$p50" "$seconds"
    else
        printf '%-22s clients %4s  %10.0f tx/s  %10s events/s  p50 %s ms\n' "$1" "$4" "$tps" "$events" "$p50"
    fi
}

for k in $clients; do
    run single-event-insert "$work/single.sql" 1 "$k"
done
for k in 1 2; do
    run 100-event-insert "$work/multi100.sql" 100 "$k"
done
psql -q "$url" -c 'SET client_min_messages = warning' -c 'DROP SCHEMA pglimit CASCADE'
