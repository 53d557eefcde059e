#!/usr/bin/env bash
# The measurement suite behind BENCHMARKS.md: every workload and mode, 3 runs each,
# as JSON lines in bench-results/<date>.jsonl, then the summary table (medians and
# spread) and the chart. Takes about 25 minutes on the 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export RUST_LOG=${RUST_LOG:-warn}
cargo build --release --quiet
bin=target/release/dcb-store
mkdir -p bench-results
out=bench-results/$(date -u +%Y%m%d-%H%M%S).jsonl
run() { "$bin" bench "$@" --json --repeat 3 --seconds 5 --warmup 1 >> "$out"; }
scripts/pg-limit.sh --seconds 5 --json > "${out%.jsonl}.pg-limit.jsonl"
run append --clients 1,8,64,256 --mode normal,no-batching,no-metrics --chart "${out%.jsonl}.svg"
run append --clients 2000 --mode normal
run enrolment --clients 1,32 --mode normal,no-batching
run read --prefill 100000,1000000,5000000 --clients 1 --mode normal,no-cache --queries tag,type+tag
run read --prefill 100000,1000000,5000000 --clients 1 --queries key,type+key,range,type+range,tag100
run append --indexed-keys 0,2 --occurred-index btree,brin,none --clients 1,32
python3 scripts/summarize.py "$out" "${out%.jsonl}.pg-limit.jsonl"
