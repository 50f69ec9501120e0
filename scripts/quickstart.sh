#!/usr/bin/env bash
# Quickstart: two throw-away local PostgreSQL servers — a demo source (pgbench data, a
# write workload, wal2json) and a branch store — and tributary keeping a replica of the
# source on the store: the snapshot with a progress bar, a branch with its URL and psql
# command, then a live status that redraws its own lines below them (lag, changes/s).
# Ctrl-C stops everything and removes both servers.
#
#   scripts/quickstart.sh              # until Ctrl-C
#   scripts/quickstart.sh --for 30     # 30 s of streaming, then `tributary verify`
#                                      # compares the replica with the source under the
#                                      # workload; exit 1 if they differ
#
# Environment: QUICKSTART_SOURCE_PORT (54329), QUICKSTART_STORE_PORT (54330),
# QUICKSTART_DIR (a temporary directory), QUICKSTART_TPS (demo transactions per second,
# 20), QUICKSTART_METRICS (the metrics endpoint, 127.0.0.1:9932), TRIBUTARY_BIN (a built
# binary to use instead of building one).
set -euo pipefail

run_for=""
case "${1:-}" in
    --for) run_for="${2:?--for needs a number of seconds}" ;;
    "") ;;
    *) echo "usage: $0 [--for SECONDS]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "$0")/.." && pwd)"
source_port="${QUICKSTART_SOURCE_PORT:-54329}"
store_port="${QUICKSTART_STORE_PORT:-54330}"
tps="${QUICKSTART_TPS:-20}"
metrics="${QUICKSTART_METRICS:-127.0.0.1:9932}"

"$here/scripts/install-deps.sh"

bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
# QUICKSTART_DIR must be new (or empty): everything in it is removed at the end.
dir="${QUICKSTART_DIR:-$(mktemp -d /tmp/tributary-quickstart-XXXXXX)}"
mkdir -p "$dir"
if [ -n "$(ls -A "$dir")" ]; then
    echo "quickstart: $dir is not empty; give QUICKSTART_DIR a new directory" >&2
    exit 2
fi

# PostgreSQL refuses to run as root: run the demo servers as the postgres OS user then.
as_server() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$dir" && chmod 0700 "$dir"; fi

cleanup() {
    [ -n "${watcher:-}" ] && kill "$watcher" 2>/dev/null || true
    [ -n "${workload:-}" ] && kill "$workload" 2>/dev/null || true
    if [ -n "${daemon:-}" ]; then
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    for name in source store; do
        as_server "$bindir/pg_ctl" -D "$dir/$name" -m fast -w stop >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT

start_server() { # name port
    as_server "$bindir/initdb" -D "$dir/$1" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    as_server "$bindir/pg_ctl" -D "$dir/$1" -l "$dir/$1.log" -w \
        -o "-c port=$2 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c wal_level=logical" \
        start >/dev/null
}

echo "quickstart: starting a demo source on 127.0.0.1:$source_port and a branch store on 127.0.0.1:$store_port"
start_server source "$source_port"
start_server store "$store_port"
source_url="postgresql://postgres@127.0.0.1:$source_port/postgres"
# Current minor releases (15.19, 16.15, 17.11, 18.6 and later) refuse wal2json until a
# superuser adds it to output_plugin_libraries, as on any source: each list element quoted
# on its own (one quoted string would be one element), then a reload.
if "$bindir/postgres" --describe-config 2>/dev/null | grep '^output_plugin_libraries' >/dev/null; then
    # (grep -q would quit early, and pipefail would count postgres's SIGPIPE as a failure)
    "$bindir/psql" -X -q "$source_url" \
        -c "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json'" \
        -c 'SELECT pg_reload_conf()' >/dev/null
    # The postmaster rereads its configuration a moment later; new sessions then see it.
    for _ in $(seq 100); do
        case "$("$bindir/psql" -X -At "$source_url" -c 'SHOW output_plugin_libraries')" in
            *wal2json*) break ;;
        esac
        sleep 0.1
    done
fi
export TRIBUTARY__STORE__URL="postgresql://postgres@127.0.0.1:$store_port/postgres"
export TRIBUTARY__SECRETS__KEY_FILE="$dir/tributary.key"
"$bindir/pgbench" -i -s 1 -q "$source_url" >/dev/null 2>&1
# pgbench_history has no key; it only ever gets inserts, so the full row is a fine replica
# identity (tributary never changes one by itself: this is the operator's decision).
"$bindir/psql" -X -q "$source_url" -c 'ALTER TABLE pgbench_history REPLICA IDENTITY FULL'

if [ -n "${TRIBUTARY_BIN:-}" ]; then
    tributary="$TRIBUTARY_BIN"
else
    echo "quickstart: building tributary in release mode (the first time takes about 8 minutes on 2 cores)"
    cargo build --release --locked --manifest-path "$here/Cargo.toml"
    tributary="$here/target/release/tributary"
fi
export TRIBUTARY__METRICS__LISTEN="$metrics" TRIBUTARY__METRICS__SLOT_INTERVAL_SECS=2
"$tributary" connector create postgresql "$source_url" --name demo --schemas public

"$tributary" run >"$dir/tributary.log" 2>&1 &
daemon=$!
echo "quickstart: tributary runs (log: $dir/tributary.log, metrics: http://$metrics/metrics)"
"$tributary" connector wait demo

# A bounded workload (at most one hour) so that there is something to follow.
"$bindir/pgbench" -n -c 2 -R "$tps" -T 3600 "$source_url" >/dev/null 2>&1 &
workload=$!

"$tributary" branch create demo_dev
env="TRIBUTARY__STORE__URL=$TRIBUTARY__STORE__URL TRIBUTARY__SECRETS__KEY_FILE=$TRIBUTARY__SECRETS__KEY_FILE"
cat <<TXT

In another terminal:
  psql 'postgresql://postgres@127.0.0.1:$store_port/demo_replica' -c 'SELECT count(*) FROM pgbench_history'
  $env $tributary connector list
  $env $tributary branch create dev2

TXT

if [ -z "$run_for" ]; then
    echo "quickstart: live status (Ctrl-C to stop and clean up)"
    "$tributary" status --watch 2 || true
    exit 0
fi

"$tributary" status --watch 2 &
watcher=$!
sleep "$run_for"
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
watcher=""

# The replica compared with the source, table by table, at one source position, while
# the workload goes on: the pipeline stands still a moment for a snapshot of the source,
# then cuts a throw-away branch at exactly its position. Exit 1 if anything differs.
echo "quickstart: comparing the replica with the source (tributary verify demo)"
"$tributary" verify demo
