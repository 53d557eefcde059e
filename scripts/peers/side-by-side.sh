#!/usr/bin/env bash
# The write path side by side, in interleaved rounds on one machine: PostgreSQL itself
# (scripts/pg-limit.sh, pgbench), UmaDB (umadb.sh) and dcb-store (`dcb-store bench`),
# optionally a second dcb-store build as "before". Each round runs every system once,
# in the same order; JSON lines (one per measurement, tagged with system and round) go
# to the output file; summarize.py prints medians and spreads.
#
# Usage: scripts/peers/side-by-side.sh OUT.jsonl [--rounds 3] [--seconds 8]
#            [--store target/release/dcb-store] [--before /path/to/older/dcb-store]
# Needs DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), pgbench and umadb
# (see README.md beside this file). Nothing else should run meanwhile.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out=${1:?usage: side-by-side.sh OUT.jsonl [options]}
shift
rounds=3
seconds=8
store="$root/target/release/dcb-store"
before=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --store) store=$2; shift 2 ;;
        --before) before=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
enrolment=(--courses 200 --capacity 1000 --students 5000 --max-courses 1000)

tag() { # $1 = system, $2 = round: adds both to every JSON line read from stdin
    python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        row = json.loads(line)
        row.setdefault("system", sys.argv[1])
        row["round"] = int(sys.argv[2])
        print(json.dumps(row), flush=True)
' "$1" "$2"
}

store_round() { # $1 = system name, $2 = binary, $3 = round
    "$2" bench append --clients 1,8,32,256 --seconds "$seconds" --warmup 2 --json 2>/dev/null \
        | tag "$1" "$3" >>"$out"
    "$2" bench enrolment --decider decide --clients 1,8,32 "${enrolment[@]}" \
        --seconds "$seconds" --warmup 4 --json 2>/dev/null | tag "$1" "$3" >>"$out"
}

for round in $(seq 1 "$rounds"); do
    echo "round $round: pgbench" >&2
    "$root/scripts/pg-limit.sh" --seconds "$seconds" --clients "1 8 32" --json \
        | tag pgbench "$round" >>"$out"
    "$root/scripts/pg-limit.sh" --seconds "$seconds" --clients "1" --protocol simple --json \
        | tag pgbench-simple "$round" >>"$out"
    echo "round $round: umadb" >&2
    "$here/umadb.sh" append --clients 1,8,32 --seconds "$seconds" --warmup 2 2>/dev/null \
        | tag umadb "$round" >>"$out"
    "$here/umadb.sh" enrolment --clients 1,8,32 "${enrolment[@]}" --seconds "$seconds" \
        --warmup 4 2>/dev/null | tag umadb "$round" >>"$out"
    echo "round $round: dcb-store" >&2
    store_round dcb-store "$store" "$round"
    if [ -n "$before" ]; then
        echo "round $round: dcb-store before" >&2
        store_round dcb-store-before "$before" "$round"
    fi
done
echo "done: $out" >&2
