#!/usr/bin/env bash
# Before/after of a change, interleaved in one run (BENCHMARKS.md, "The reshape"):
#   scripts/ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS]
# Each round runs both binaries, in turn, on append (1, 64 and 256 clients), read
# (tag, key and range queries on 100,000 events, 8 clients), enrolment through
# `decide` (8 clients) and the demo; JSON lines go to bench-results/ab-<time>.jsonl,
# the demo's lines to ab-<time>.demo.txt, then summarize-ab.py prints medians and
# ratios. About 2.5 minutes per binary per round.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1 after=$2 rounds=${3:-3}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export RUST_LOG=${RUST_LOG:-warn}
mkdir -p bench-results
out=bench-results/ab-$(date -u +%Y%m%d-%H%M%S)
for round in $(seq "$rounds"); do
  for side in before after; do
    bin=${!side}
    tag() { python3 -c "import sys,json
for l in sys.stdin:
    l=l.strip()
    if l.startswith('{'):
        o=json.loads(l); o['side']='$side'; o['round']=$round; print(json.dumps(o))"; }
    "$bin" bench append --clients 1,64,256 --seconds 5 --warmup 1 --json | tag >> "$out.jsonl"
    "$bin" bench read --prefill 100000 --clients 8 --queries tag,key,range --seconds 5 --warmup 1 --json | tag >> "$out.jsonl"
    "$bin" bench enrolment --decider decide --clients 8 --seconds 5 --warmup 1 --json | tag >> "$out.jsonl"
    echo "$side $round $("$bin" demo --seconds 5 2>&1 | grep -E 'decisions/s|PASS|FAIL' | tr '\n' ' ')" >> "$out.demo.txt"
  done
done
python3 scripts/summarize-ab.py "$out.jsonl" "$out.demo.txt"
