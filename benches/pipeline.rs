//! Snapshot and catch-up, tributary against its peers, in one run on the same clusters.
//!
//! ```text
//! cargo bench --bench pipeline            # pgbench scale 50, 100 k transactions, 3 runs
//! TRIBUTARY_BENCH_SCALE=10 TRIBUTARY_BENCH_TRANSACTIONS=20000 TRIBUTARY_BENCH_RUNS=1 cargo bench --bench pipeline
//! ```
//!
//! 1. Snapshot of a pgbench database into the branch store: native logical replication
//!    (CREATE SUBSCRIPTION, copy_data), a binary COPY pipe table by table with indexes built
//!    afterwards, and tributary (connector created → state `streaming`).
//! 2. Catch-up of one pgbench TPC-B backlog, written while both replicators are paused:
//!    native apply and tributary, one after the other, each until its slot has confirmed
//!    the source's WAL position at the end of the backlog.
//!
//! Prints each figure, the medians and the ratios. Timings are never asserted.

#[path = "../tests/daemon.rs"]
mod daemon;
#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon::Daemon;
use harness::Cluster;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sh(script: &str) {
    let status = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "failed: {script}");
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn lsn_reached(source: &Cluster, slot: &str, target: &str) -> bool {
    source.psql(
        "bench",
        &format!(
            "SELECT coalesce(bool_or(confirmed_flush_lsn >= '{target}'), false) FROM pg_replication_slots WHERE slot_name LIKE '{slot}'"
        ),
    ) == "t"
}

fn wait_lsn(source: &Cluster, slot: &str, target: &str) {
    while !lsn_reached(source, slot, target) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's log lines that mark the phases of connector `name`'s snapshot, so that a
/// run shows where its time went.
fn phases(daemon: &Daemon, name: &str) -> String {
    const MARKS: [&str; 6] = [
        "snapshot started",
        "schema dumped",
        "schema restored",
        "rows copied",
        "snapshot complete",
        "streaming from=",
    ];
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    let span = format!("connector{{name={name}}}");
    log.lines()
        .filter(|line| line.contains(&span) && MARKS.iter().any(|m| line.contains(m)))
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every timed scenario starts from quiet servers: the previous one's dirty pages are
/// written out first, so the order of the scenarios does not decide who pays for them.
fn quiet(source: &Cluster, store: &Cluster) {
    source.psql("bench", "CHECKPOINT");
    store.psql("postgres", "CHECKPOINT");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes benchmarks; there are none to list by name.
    }
    let scale: u32 = env_or("TRIBUTARY_BENCH_SCALE", 50);
    let transactions: u32 = env_or("TRIBUTARY_BENCH_TRANSACTIONS", 100_000);
    let runs: usize = env_or("TRIBUTARY_BENCH_RUNS", 3);

    let tuned = |b: harness::ClusterBuilder| {
        b.setting("max_wal_size", "8GB")
            .setting("checkpoint_timeout", "30min")
            .setting("shared_buffers", "512MB")
            .setting("max_worker_processes", "16")
    };
    let source = tuned(Cluster::builder()).start();
    let store = tuned(Cluster::builder()).start();
    let bin = source.bindir().to_owned();
    let psql = bin.join("psql").display().to_string();
    let pg_dump = bin.join("pg_dump").display().to_string();
    let pgbench = bin.join("pgbench").display().to_string();
    let src = format!("postgresql://postgres@127.0.0.1:{}/bench", source.port());
    let dst = |db: &str| format!("postgresql://postgres@127.0.0.1:{}/{db}", store.port());

    eprintln!("preparing pgbench scale {scale} on the source…");
    source.create_database("bench");
    sh(&format!("{pgbench} -i -q -s {scale} {src}"));
    // pgbench_history has no key: `connector create` would need a decision for it. It is
    // only ever inserted into, so a FULL identity costs neither side anything.
    source.psql(
        "bench",
        "ALTER TABLE pgbench_history REPLICA IDENTITY FULL; \
         CREATE PUBLICATION bench_pub FOR ALL TABLES; CHECKPOINT;",
    );
    let tables = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ];

    let (mut pipe, mut native, mut ours) = (vec![], vec![], vec![]);
    let (mut native_catchup, mut ours_catchup) = (vec![], vec![]);
    let mut daemon = Daemon::new(&store);
    // Measured as shipped: the default chunk size (tests split tables into tiny chunks to
    // exercise the ranges) and no debug log.
    daemon
        .unset("TRIBUTARY__PIPELINE__SNAPSHOT_CHUNK_BYTES")
        .set("RUST_LOG", "info");
    daemon.start();

    for run in 0..runs {
        // COPY pipe: schema without indexes, binary COPY table by table, then indexes.
        let db = format!("pipe_{run}");
        store.create_database(&db);
        quiet(&source, &store);
        let started = Instant::now();
        sh(&format!(
            "{pg_dump} --schema-only --section=pre-data {src} | {psql} -q -X {}",
            dst(&db)
        ));
        let pre_data = started.elapsed().as_secs_f64();
        for table in tables {
            sh(&format!(
                "{psql} -X -c 'COPY {table} TO STDOUT (FORMAT binary)' {src} | {psql} -X -c 'COPY {table} FROM STDIN (FORMAT binary)' {}",
                dst(&db)
            ));
        }
        let copied = started.elapsed().as_secs_f64();
        sh(&format!(
            "{pg_dump} --schema-only --section=post-data {src} | {psql} -q -X {}",
            dst(&db)
        ));
        pipe.push(started.elapsed().as_secs_f64());
        eprintln!(
            "run {run}: copy pipe phases: pre-data {pre_data:.2}s, rows {:.2}s, post-data {:.2}s",
            copied - pre_data,
            pipe[run] - copied
        );

        // Native: full schema first, then the subscription's initial copy.
        let db = format!("native_{run}");
        store.create_database(&db);
        sh(&format!(
            "{pg_dump} --schema-only {src} | {psql} -q -X {}",
            dst(&db)
        ));
        quiet(&source, &store);
        let started = Instant::now();
        store.psql(
            &db,
            &format!(
                "CREATE SUBSCRIPTION sub_{run} CONNECTION 'host=127.0.0.1 port={} dbname=bench user=postgres' PUBLICATION bench_pub",
                source.port()
            ),
        );
        while store.psql(
            &db,
            "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'",
        ) != "0"
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        native.push(started.elapsed().as_secs_f64());

        // tributary: connector created → snapshot done and streaming.
        let name = format!("bench_{run}");
        quiet(&source, &store);
        let started = Instant::now();
        daemon.cli_ok(&[
            "connector",
            "create",
            "postgresql",
            &src,
            "--name",
            &name,
            "--schemas",
            "public",
        ]);
        // Polled like the native side (a psql query every 50 ms), not through the CLI,
        // whose start-up would load the machine during the measurement.
        let state = format!("SELECT state FROM tributary.connectors WHERE name = '{name}'");
        loop {
            match store.psql("postgres", &state).as_str() {
                "streaming" => break,
                "failed" => panic!("connector {name} failed:\n{}", daemon.log_tail()),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        ours.push(started.elapsed().as_secs_f64());
        eprintln!(
            "run {run}: tributary snapshot phases:\n{}",
            phases(&daemon, &name)
        );

        // One backlog for both, written while both are paused.
        store.psql(&db, &format!("ALTER SUBSCRIPTION sub_{run} DISABLE"));
        assert_eq!(daemon.terminate().code(), Some(0));
        eprintln!("run {run}: writing {transactions} TPC-B transactions…");
        sh(&format!(
            "{pgbench} -n -c 4 -j 2 -t {} {src}",
            transactions / 4
        ));
        let target = source.psql("bench", "SELECT pg_current_wal_lsn()");

        quiet(&source, &store);
        let started = Instant::now();
        store.psql(&db, &format!("ALTER SUBSCRIPTION sub_{run} ENABLE"));
        wait_lsn(&source, &format!("sub_{run}"), &target);
        native_catchup.push(started.elapsed().as_secs_f64());

        quiet(&source, &store);
        let started = Instant::now();
        daemon.start();
        wait_lsn(&source, &format!("tributary_%_{name}"), &target);
        ours_catchup.push(started.elapsed().as_secs_f64());

        eprintln!(
            "run {run}: snapshot pipe {:.1}s native {:.1}s tributary {:.1}s; catch-up native {:.1}s tributary {:.1}s",
            pipe[run], native[run], ours[run], native_catchup[run], ours_catchup[run]
        );
        store.psql(&db, &format!("DROP SUBSCRIPTION sub_{run}"));
        daemon.cli_ok(&["connector", "delete", &name]);
    }
    let _ = daemon.terminate();

    // Ratios of each run's own figures, whose median resists the drift of a shared
    // machine better than the ratio of medians (printed too).
    let ratio = |a: &[f64], b: &[f64]| {
        let mut per_run: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
        median(&mut per_run)
    };
    let (snapshot_pipe, snapshot_native) = (ratio(&ours, &pipe), ratio(&native, &ours));
    let catchup = ratio(&ours_catchup, &native_catchup);
    let (pipe, native, ours) = (median(&mut pipe), median(&mut native), median(&mut ours));
    let (native_c, ours_c) = (median(&mut native_catchup), median(&mut ours_catchup));
    println!("pgbench scale {scale}, {transactions} transactions, median of {runs} run(s)");
    println!("snapshot   copy pipe {pipe:6.1} s   native {native:6.1} s   tributary {ours:6.1} s");
    println!(
        "           tributary / copy pipe = {snapshot_pipe:.2} ({:.2} of medians)   native / tributary = {snapshot_native:.2} ({:.2})",
        ours / pipe,
        native / ours
    );
    println!("catch-up   native    {native_c:6.1} s   tributary {ours_c:6.1} s");
    println!(
        "           tributary / native = {catchup:.2} ({:.2} of medians)",
        ours_c / native_c
    );
}
