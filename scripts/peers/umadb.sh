#!/usr/bin/env bash
# Runs the umadb-bench harness (scripts/peers/umadb-bench) against a UmaDB server
# started here: on 127.0.0.1, a free port, a fresh data directory under /tmp, with the
# server's default flags (each commit fsynced). Arguments go to the harness:
#
#   scripts/peers/umadb.sh append    --clients 1,8,32 --seconds 10 --warmup 2
#   scripts/peers/umadb.sh enrolment --clients 1,8,32 --seconds 8 --warmup 6
#
# Each value of --clients gets its own fresh server and data directory (as
# `dcb-store bench` takes a fresh schema per measurement); one JSON line each on
# stdout. Environment: UMADB_BIN (default ~/.cargo/bin/umadb), UMADB_PORT (default:
# a free port), UMADB_SERVER_ARGS (extra server flags, e.g. "--page-cache-max-mb 256").
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
harness_dir="$here/umadb-bench"
harness="$harness_dir/target/release/umadb-bench"
umadb="${UMADB_BIN:-$HOME/.cargo/bin/umadb}"

if [[ ! -x "$umadb" ]]; then
    cat >&2 <<EOF
umadb is not installed ($umadb not found). Install UmaDB 0.7.8 with:
    apt-get install protobuf-compiler
    cargo install umadb --version 0.7.8 --locked
(or set UMADB_BIN to the server binary)
EOF
    exit 2
fi
if [[ ! -x "$harness" ]]; then
    echo "building the harness (cargo build --release in $harness_dir) ..." >&2
    (cd "$harness_dir" && cargo build --release --quiet)
fi

if [[ $# -eq 0 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 append|enrolment [harness options, --url excepted]" >&2
    "$harness" --help >&2
    exit 0
fi

# Split off --clients: one fresh server per value.
clients="1,8,32"
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --clients) clients="$2"; shift 2 ;;
        --clients=*) clients="${1#--clients=}"; shift ;;
        --url|--url=*) echo "$0: --url is set by this script" >&2; exit 2 ;;
        *) args+=("$1"); shift ;;
    esac
done

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

server_pid=""
data_dir=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
    if [[ -n "$data_dir" ]]; then
        rm -rf "$data_dir"
        data_dir=""
    fi
}
trap cleanup EXIT INT TERM

IFS=',' read -r -a client_list <<<"$clients"
for k in "${client_list[@]}"; do
    port="${UMADB_PORT:-$(free_port)}"
    data_dir="$(mktemp -d /tmp/umadb-bench.XXXXXX)"
    # shellcheck disable=SC2086 # UMADB_SERVER_ARGS is a list of flags
    "$umadb" --listen "127.0.0.1:$port" --db-path "$data_dir/uma.db" ${UMADB_SERVER_ARGS:-} \
        >"$data_dir/server.log" 2>&1 &
    server_pid=$!
    ready=""
    for _ in $(seq 1 100); do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            break
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [[ -z "$ready" ]]; then
        echo "$0: umadb did not accept on 127.0.0.1:$port; its log:" >&2
        cat "$data_dir/server.log" >&2 || true
        exit 1
    fi
    "$harness" "${args[@]}" --clients "$k" --url "http://127.0.0.1:$port"
    cleanup
done
