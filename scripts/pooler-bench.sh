#!/usr/bin/env bash
# The cost of running behind PgBouncer (BENCHMARKS.md, "Behind PgBouncer"), in one
# interleaved run against the machine's PostgreSQL (127.0.0.1:5432):
#   scripts/pooler-bench.sh [BINARY] [ROUNDS]
# Each round measures, in turn: direct connections (pooler_mode none); direct with
# pooler_mode = "transaction" (the statements' cost without the pooler's hop);
# PgBouncer in session mode; PgBouncer in transaction mode with pooler_mode =
# "transaction". Workloads: append (1 and 64 clients), read (tag query, 8 clients,
# 20,000 events) and enrolment through `decide` (8 clients). Two PgBouncers (Debian's
# package) run for the duration, as the postgres user, on ports 6441 and 6442.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/dcb-store} rounds=${2:-3}
unset DATABASE_URL
export RUST_LOG=${RUST_LOG:-warn}
dir=$(mktemp -d)
trap 'for p in "$dir"/*.pid; do kill "$(cat "$p")" 2>/dev/null || true; done; rm -rf "$dir"' EXIT
echo '"postgres" ""' > "$dir/users.txt"
for mode in session transaction; do
  port=$([ $mode = session ] && echo 6441 || echo 6442)
  cat > "$dir/$mode.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = $mode
default_pool_size = 20
max_client_conn = 500
logfile = $dir/$mode.log
pidfile = $dir/$mode.pid
ignore_startup_parameters = extra_float_digits
INI
done
chown -R postgres "$dir" 2>/dev/null || true
as=(); [ "$(id -u)" = 0 ] && as=(-u postgres)  # PgBouncer refuses to run as root
for mode in session transaction; do pgbouncer -d "${as[@]}" "$dir/$mode.ini"; done
url=postgres://postgres@127.0.0.1
printf 'database_url = "%s:5432/test"\n' "$url" > "$dir/direct.toml"
printf 'database_url = "%s:5432/test"\npooler_mode = "transaction"\n' "$url" > "$dir/direct-tx.toml"
printf 'database_url = "%s:6441/test"\npooler_mode = "session"\n' "$url" > "$dir/bouncer-session.toml"
printf 'database_url = "%s:6442/test"\npooler_mode = "transaction"\n' "$url" > "$dir/bouncer-tx.toml"
mkdir -p bench-results
out=bench-results/pooler-$(date -u +%Y%m%d-%H%M%S).jsonl
for round in $(seq "$rounds"); do
  for side in direct direct-tx bouncer-session bouncer-tx; do
    config="$dir/$side.toml"
    tag() { python3 -c "import sys,json
for l in sys.stdin:
    l=l.strip()
    if l.startswith('{'):
        o=json.loads(l); o['side']='$side'; o['round']=$round; print(json.dumps(o))"; }
    "$bin" bench append --config "$config" --clients 1,64 --seconds 5 --warmup 1 --json | tag >> "$out"
    "$bin" bench read --config "$config" --prefill 20000 --clients 8 --queries tag --seconds 5 --warmup 1 --json | tag >> "$out"
    "$bin" bench enrolment --config "$config" --decider decide --clients 8 --seconds 5 --warmup 1 --json | tag >> "$out"
  done
done
python3 scripts/summarize-sides.py "$out" direct direct-tx bouncer-session bouncer-tx
