#!/usr/bin/env bash
# Quickstart: a local demo source database with wal2json and a light write workload, and
# tributary streaming its changes to this terminal. Ctrl-C stops everything and removes
# the demo cluster.
#
#   scripts/quickstart.sh
#
# Environment: QUICKSTART_PORT (default 54329), QUICKSTART_DIR (default a temporary
# directory), QUICKSTART_TPS (demo write rate, default 2 transactions per second).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
port="${QUICKSTART_PORT:-54329}"
tps="${QUICKSTART_TPS:-2}"

"$here/scripts/install-deps.sh"

bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
dir="${QUICKSTART_DIR:-$(mktemp -d /tmp/tributary-quickstart-XXXXXX)}"
mkdir -p "$dir"

# PostgreSQL refuses to run as root: run the demo server as the postgres OS user then.
as_server() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$dir" && chmod 0700 "$dir"

cleanup() {
    [ -n "${workload:-}" ] && kill "$workload" 2>/dev/null || true
    as_server "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

echo "quickstart: starting a demo source on 127.0.0.1:$port (data in $dir)"
as_server "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
as_server "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c wal_level=logical" \
    start >/dev/null
"$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -s 1 -q postgres >/dev/null 2>&1

cargo build --release --locked --manifest-path "$here/Cargo.toml"

# A gentle, bounded workload (at most one hour) so there is something to watch.
"$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c 1 -R "$tps" -T 3600 postgres \
    >/dev/null 2>&1 &
workload=$!

echo "quickstart: streaming changes (Ctrl-C to stop)"
"$here/target/release/tributary" tail "postgresql://postgres@127.0.0.1:$port/postgres" || true
