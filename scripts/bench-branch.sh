#!/usr/bin/env bash
# Branch creation on a replica of about 1 GB: how long replication pauses and how long the
# whole `branch create` takes, while the source takes a light write load; then CREATE
# DATABASE's two strategies side by side on the same replica. Timings are printed, never
# judged: the machine decides them.
#
#   cargo build --release && scripts/bench-branch.sh
#   # PostgreSQL 18's clone on XFS with reflinks (as root), against its plain copy:
#   BENCH_STORE_BINDIR=/opt/tributary-pg/18/bin BENCH_XFS=1 BENCH_FILE_COPY_METHOD=clone scripts/bench-branch.sh
#
# Environment: BENCH_SCALE (pgbench scale, 70 ≈ 1 GB), BENCH_BRANCHES (3), BENCH_TPS (200),
# BENCH_STORE_BINDIR (the branch store's server; default the newest in /usr/lib/postgresql),
# BENCH_XFS=1 (the store's data directory on a loop-mounted XFS made with reflink=1; root),
# BENCH_FILE_COPY_METHOD (the store's file_copy_method, PostgreSQL 18).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$here/target/release/tributary"
scale="${BENCH_SCALE:-70}"
branches="${BENCH_BRANCHES:-3}"
tps="${BENCH_TPS:-200}"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }

bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
store_bindir="${BENCH_STORE_BINDIR:-$bindir}"
dir="$(mktemp -d /tmp/tributary-bench-branch-XXXXXX)"
as_server() {
    # The version matrix's wrappers (scripts/install-pg-versions.sh) start as root and
    # become postgres inside their chroot themselves.
    if [ "$(id -u)" = 0 ] && ! grep -qs chroot-run "$1"; then runuser -u postgres -- "$@"; else "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres "$dir"
pids=()
server_bindir() { if [ "$1" = store ]; then echo "$store_bindir"; else echo "$bindir"; fi; }
data_dir() { if [ "$1" = store ] && [ "${BENCH_XFS:-0}" = 1 ]; then echo "$dir/xfs/store"; else echo "$dir/$1"; fi; }
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for n in source store; do
        [ -f "$(data_dir $n)/postmaster.pid" ] && as_server "$(server_bindir $n)/pg_ctl" -D "$(data_dir $n)" -m immediate stop >/dev/null
    done
    mountpoint -q "$dir/xfs" && umount -l "$dir/xfs"
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${BENCH_XFS:-0}" = 1 ]; then
    truncate -s "$((scale / 10 + 8))G" "$dir/xfs.img"
    mkfs.xfs -q -m reflink=1 "$dir/xfs.img"
    mkdir "$dir/xfs" && mount -o loop "$dir/xfs.img" "$dir/xfs"
    [ "$(id -u)" = 0 ] && chown postgres "$dir/xfs"
fi
port=55621
for n in source store; do
    as_server "$(server_bindir $n)/initdb" -D "$(data_dir $n)" -U postgres --auth=trust --no-sync >/dev/null
    if [ "$n" = store ] && [ -n "${BENCH_FILE_COPY_METHOD:-}" ]; then
        echo "file_copy_method = $BENCH_FILE_COPY_METHOD" >>"$(data_dir $n)/postgresql.conf"
    fi
    as_server "$(server_bindir $n)/pg_ctl" -D "$(data_dir $n)" -l "$dir/$n.log" -w -o "-c port=$port \
        -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c wal_level=logical \
        -c max_wal_size=8GB -c shared_buffers=512MB -c checkpoint_timeout=30min" start >/dev/null
    port=$((port + 1))
done
psql=("$bindir/psql" -XAtq)
src=postgresql://postgres@127.0.0.1:55621/postgres
store=postgresql://postgres@127.0.0.1:55622/postgres
export TRIBUTARY__STORE__URL="$store" TRIBUTARY__SECRETS__KEY_FILE="$dir/key" RUST_LOG=warn,tributary::pipeline::stream=info \
    TRIBUTARY_PG_BINDIR="$bindir"

echo "pgbench scale $scale on the source…"
"$bindir/pgbench" -i -q -s "$scale" "$src" >/dev/null 2>&1
"${psql[@]}" "$src" -c "ALTER TABLE pgbench_history REPLICA IDENTITY FULL; CHECKPOINT"
"$bin" run >"$dir/run.log" 2>&1 & pids+=($!)
"$bin" connector create postgresql "$src" --name bench >/dev/null
until [ "$("${psql[@]}" "$store" -c "SELECT state FROM tributary.connectors")" = streaming ]; do sleep 0.2; done
echo "replica: $("${psql[@]}" "$store" -c "SELECT pg_size_pretty(pg_database_size('bench_replica'))")"

"$bindir/pgbench" -n -c 2 -j 2 -R "$tps" -T 600 "$src" >/dev/null 2>&1 & pids+=($!)
sleep 3
for i in $(seq "$branches"); do
    "$bin" branch create "b$i" | head -n1
    sleep 2
done

echo "CREATE DATABASE alone (no pipeline), after a checkpoint:"
for strategy in WAL_LOG FILE_COPY WAL_LOG FILE_COPY; do
    "${psql[@]}" "$store" -c CHECKPOINT
    start=$(date +%s.%N)
    "${psql[@]}" "$store" -c "CREATE DATABASE strategy_test TEMPLATE b1 STRATEGY $strategy"
    end=$(date +%s.%N)
    printf '  %-9s %.2f s\n' "$strategy" "$(echo "$end - $start" | bc)"
    "${psql[@]}" "$store" -c "DROP DATABASE strategy_test"
done
