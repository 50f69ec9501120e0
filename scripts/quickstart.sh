#!/usr/bin/env bash
# Quickstart: two throw-away local PostgreSQL servers — a demo source (pgbench data, a
# light write workload, wal2json) and a branch store — and `tributary run` keeping a
# replica of the source on the store. Ctrl-C stops everything and removes both servers.
#
#   scripts/quickstart.sh
#
# While it runs, in another terminal (the script prints the exact commands):
#   psql <store URL>/demo_replica   -- the replica, following the source
#   tributary connector list        -- state of the connector
#   tributary branch create dev     -- a writable copy of the replica
#
# Environment: QUICKSTART_SOURCE_PORT (54329), QUICKSTART_STORE_PORT (54330),
# QUICKSTART_DIR (a temporary directory), QUICKSTART_TPS (demo writes per second, 2).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
source_port="${QUICKSTART_SOURCE_PORT:-54329}"
store_port="${QUICKSTART_STORE_PORT:-54330}"
tps="${QUICKSTART_TPS:-2}"

"$here/scripts/install-deps.sh"

bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
dir="${QUICKSTART_DIR:-$(mktemp -d /tmp/tributary-quickstart-XXXXXX)}"
mkdir -p "$dir"

# PostgreSQL refuses to run as root: run the demo servers as the postgres OS user then.
as_server() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$dir" && chmod 0700 "$dir"; fi

cleanup() {
    [ -n "${workload:-}" ] && kill "$workload" 2>/dev/null || true
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
export TRIBUTARY__STORE__URL="postgresql://postgres@127.0.0.1:$store_port/postgres"
export TRIBUTARY__SECRETS__KEY_FILE="$dir/tributary.key"
"$bindir/pgbench" -i -s 1 -q "$source_url" >/dev/null 2>&1
# pgbench_history has no key; it only ever gets inserts, so the full row is a fine replica
# identity (tributary never changes one by itself: this is the operator's decision).
"$bindir/psql" -X -q "$source_url" -c 'ALTER TABLE pgbench_history REPLICA IDENTITY FULL'

cargo build --release --locked --manifest-path "$here/Cargo.toml"
tributary="$here/target/release/tributary"
"$tributary" connector create postgresql "$source_url" --name demo --schemas public

# A gentle, bounded workload (at most one hour) so there is something to follow.
"$bindir/pgbench" -n -c 1 -R "$tps" -T 3600 "$source_url" >/dev/null 2>&1 &
workload=$!

env="TRIBUTARY__STORE__URL=$TRIBUTARY__STORE__URL TRIBUTARY__SECRETS__KEY_FILE=$TRIBUTARY__SECRETS__KEY_FILE"
cat <<TXT
quickstart: running tributary (Ctrl-C to stop). In another terminal:
  psql 'postgresql://postgres@127.0.0.1:$store_port/demo_replica' -c 'SELECT count(*) FROM pgbench_history'
  $env $tributary connector list
  $env $tributary branch create dev     # a writable copy, then: psql '…/dev'
TXT
"$tributary" run || true
