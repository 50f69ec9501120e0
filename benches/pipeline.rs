//! tributary against its peers, in one run on the same clusters.
//!
//! ```text
//! cargo bench --bench pipeline            # pgbench scale 50, 100 k transactions, 3 runs
//! TRIBUTARY_BENCH_SCALE=10 TRIBUTARY_BENCH_TRANSACTIONS=20000 TRIBUTARY_BENCH_RUNS=1 cargo bench --bench pipeline
//! ```
//!
//! 1. Snapshot of a pgbench database into the branch store: native logical replication
//!    (CREATE SUBSCRIPTION, copy_data), a binary COPY pipe table by table with indexes built
//!    afterwards, and tributary (connector created → state `streaming`).
//! 2. Catch-up of one pgbench TPC-B backlog, written while every replicator is paused:
//!    native apply, tributary, and `pg_recvlogical` with wal2json into /dev/null (the
//!    decode limit: what the source can produce), one after the other, each until its
//!    slot has confirmed the source's WAL position at the end of the backlog.
//! 3. Steady state (`TRIBUTARY_BENCH_STEADY_RATE` transactions/s, default 5000, for
//!    `TRIBUTARY_BENCH_STEADY_SECS`, default 60; 0 skips it): pgbench `simple-update` at a
//!    fixed rate while a probe row is updated every 100 ms on the source and the replica
//!    is polled every 5 ms; the apply lag of each probe is the time from its commit on the
//!    source until the replica shows it.
//! 4. Memory: the daemon's peak RSS through the snapshot, the catch-up, and one source
//!    transaction of `TRIBUTARY_BENCH_BIG_TX_MB` megabytes (default 1024; 0 skips it).
//! 5. Scaling (`TRIBUTARY_BENCH_SCALING=k`, off by default): one catch-up of k times the
//!    backlog, against k times the median catch-up of step 2.
//!
//! Every party connects over TCP on 127.0.0.1, or over unix sockets with
//! `TRIBUTARY_BENCH_TRANSPORT=unix`.
//!
//! Prints each figure, the medians and the ratios. Timings are never asserted.

mod common;
#[path = "../tests/daemon.rs"]
mod daemon;
#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{copy_pipe, env_or, median, poll, quiet, ratio, sh, tuned};
use daemon::Daemon;
use harness::Cluster;

fn wait_lsn(source: &Cluster, slot: &str, target: &str) {
    let reached = format!(
        "SELECT coalesce(bool_or(confirmed_flush_lsn >= '{target}'), false) FROM pg_replication_slots WHERE slot_name LIKE '{slot}'"
    );
    poll(source, "bench", &reached, Duration::from_millis(20), |v| {
        v == "t"
    });
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes benchmarks; there are none to list by name.
    }
    let scale: u32 = env_or("TRIBUTARY_BENCH_SCALE", 50);
    let transactions: u32 = env_or("TRIBUTARY_BENCH_TRANSACTIONS", 100_000);
    let runs: usize = env_or("TRIBUTARY_BENCH_RUNS", 3);
    let steady_rate: u32 = env_or("TRIBUTARY_BENCH_STEADY_RATE", 5000);
    let steady_secs: u32 = env_or("TRIBUTARY_BENCH_STEADY_SECS", 60);
    let big_tx_mb: u64 = env_or("TRIBUTARY_BENCH_BIG_TX_MB", 1024);
    let scaling: u32 = env_or("TRIBUTARY_BENCH_SCALING", 0);

    let source = tuned(Cluster::builder()).start();
    let store = tuned(Cluster::builder()).start();
    let bin = source.bindir().to_owned();
    let psql = bin.join("psql").display().to_string();
    let pg_dump = bin.join("pg_dump").display().to_string();
    let pgbench = bin.join("pgbench").display().to_string();
    let pg_recvlogical = bin.join("pg_recvlogical").display().to_string();
    // Every party connects the same way: over TCP on 127.0.0.1, or over the clusters' unix
    // sockets (`TRIBUTARY_BENCH_TRANSPORT=unix`), where a message costs the walsender far
    // less than a loopback TCP segment does.
    let unix = match std::env::var("TRIBUTARY_BENCH_TRANSPORT").as_deref() {
        Ok("unix") => true,
        Ok("tcp") | Err(_) => false,
        Ok(other) => panic!("TRIBUTARY_BENCH_TRANSPORT={other:?}: use tcp or unix"),
    };
    let url = |cluster: &Cluster, db: &str| {
        let url = format!("postgresql://postgres@127.0.0.1:{}/{db}", cluster.port());
        match unix {
            true => format!("{url}?host={}", cluster.socket_dir().display()),
            false => url,
        }
    };
    let src = url(&source, "bench");
    let dst = |db: &str| url(&store, db);
    // The subscription's conninfo, in libpq's key=value form.
    let native_conninfo = match unix {
        true => format!(
            "host={} port={} dbname=bench user=postgres",
            source.socket_dir().display(),
            source.port()
        ),
        false => format!(
            "host=127.0.0.1 port={} dbname=bench user=postgres",
            source.port()
        ),
    };

    eprintln!("preparing pgbench scale {scale} on the source…");
    source.create_database("bench");
    sh(&format!("{pgbench} -i -q -s {scale} {src}"));
    // pgbench_history has no key: `connector create` would need a decision for it. It is
    // only ever inserted into, so a FULL identity costs neither side anything.
    // The `live` schema is for the steady-state and memory scenarios only.
    source.psql(
        "bench",
        "ALTER TABLE pgbench_history REPLICA IDENTITY FULL; \
         CREATE PUBLICATION bench_pub FOR TABLES IN SCHEMA public; \
         CREATE SCHEMA live; \
         CREATE TABLE live.probe (id int PRIMARY KEY, seq bigint NOT NULL); \
         INSERT INTO live.probe VALUES (1, 0); \
         CREATE TABLE live.big (id bigint PRIMARY KEY, payload text NOT NULL); \
         CHECKPOINT;",
    );
    let tables = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ];

    let (mut pipe, mut native, mut ours) = (vec![], vec![], vec![]);
    let (mut native_catchup, mut ours_catchup, mut decode_catchup) = (vec![], vec![], vec![]);
    let (mut peak_snapshot, mut peak_catchup) = (None, None);
    let mut daemon = Daemon::new(&store);
    // Measured as shipped: the default chunk size (tests split tables into tiny chunks to
    // exercise the ranges) and no debug log.
    daemon
        .unset("TRIBUTARY__PIPELINE__SNAPSHOT_CHUNK_BYTES")
        .set("RUST_LOG", "info")
        .set("TRIBUTARY__STORE__URL", &dst("postgres"));
    daemon.start();

    for run in 0..runs {
        // COPY pipe: schema without indexes, binary COPY table by table, then indexes.
        let db = format!("pipe_{run}");
        store.create_database(&db);
        quiet(&source, &store);
        let steps = copy_pipe(&bin, &src, &dst(&db), "public", &tables);
        pipe.push(steps.total());
        eprintln!(
            "run {run}: copy pipe phases: pre-data {:.2}s, rows {:.2}s, post-data {:.2}s",
            steps.pre_data, steps.rows, steps.post_data
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
                "CREATE SUBSCRIPTION sub_{run} CONNECTION '{native_conninfo}' PUBLICATION bench_pub"
            ),
        );
        poll(
            &store,
            &db,
            "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'",
            Duration::from_millis(50),
            |v| v == "0",
        );
        native.push(started.elapsed().as_secs_f64());

        // tributary: connector created → snapshot done and streaming.
        let name = format!("bench_{run}");
        quiet(&source, &store);
        let started = Instant::now();
        create_streaming(&store, &daemon, &src, &name, "public");
        ours.push(started.elapsed().as_secs_f64());
        eprintln!(
            "run {run}: tributary snapshot phases:\n{}",
            phases(&daemon, &name)
        );

        if run == 0 {
            peak_snapshot = Some(daemon.peak_rss_kib());
        }

        // One backlog for all, written while all are paused.
        store.psql(&db, &format!("ALTER SUBSCRIPTION sub_{run} DISABLE"));
        assert_eq!(daemon.terminate().code(), Some(0));
        let decode_slot = format!("bench_decode_{run}");
        sh(&format!(
            "{pg_recvlogical} -d {src} --slot {decode_slot} --create-slot -P wal2json"
        ));
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
        peak_catchup = peak_catchup.max(Some(daemon.peak_rss_kib()));

        // The decode limit: wal2json with tributary's options, into /dev/null.
        quiet(&source, &store);
        let started = Instant::now();
        sh(&format!(
            "{pg_recvlogical} -d {src} --slot {decode_slot} --start --endpos {target} --no-loop \
             -F 0 -f - -o format-version=2 -o include-transaction=1 -o include-xids=1 \
             -o include-timestamp=1 -o include-lsn=1 -o include-types=0 -o include-schemas=1"
        ));
        decode_catchup.push(started.elapsed().as_secs_f64());
        sh(&format!(
            "{pg_recvlogical} -d {src} --slot {decode_slot} --drop-slot"
        ));

        eprintln!(
            "run {run}: snapshot pipe {:.1}s native {:.1}s tributary {:.1}s; catch-up native {:.1}s tributary {:.1}s decode {:.1}s",
            pipe[run], native[run], ours[run], native_catchup[run], ours_catchup[run], decode_catchup[run]
        );
        store.psql(&db, &format!("DROP SUBSCRIPTION sub_{run}"));
        daemon.cli_ok(&["connector", "delete", &name]);
    }

    // One connector that stays, for the scenarios that need a streaming pipeline.
    let live_needed = steady_secs > 0 || big_tx_mb > 0 || scaling > 0;
    if live_needed {
        create_streaming(&store, &daemon, &src, "live", "public,live");
    }
    let steady = (steady_secs > 0).then(|| {
        eprintln!("steady state: {steady_rate} transactions/s for {steady_secs} s…");
        steady_state(&source, &store, &pgbench, &src, steady_rate, steady_secs)
    });
    let big_tx = (big_tx_mb > 0).then(|| {
        // A fresh process, so that its peak memory is this transaction's.
        assert_eq!(daemon.terminate().code(), Some(0));
        daemon.start();
        eprintln!("one source transaction of {big_tx_mb} MB…");
        let rows = big_tx_mb * 1024 * 1024 / 1000;
        source.psql(
            "bench",
            &format!(
                "INSERT INTO live.big SELECT g, repeat(md5(g::text), 30) \
                 FROM generate_series(1, {rows}) g"
            ),
        );
        let target = source.psql("bench", "SELECT pg_current_wal_lsn()");
        let started = Instant::now();
        wait_lsn(&source, "tributary_%_live", &target);
        let seconds = started.elapsed().as_secs_f64();
        (seconds, daemon.peak_rss_kib())
    });
    let scaled = (scaling > 0).then(|| {
        assert_eq!(daemon.terminate().code(), Some(0));
        let backlog = transactions * scaling;
        eprintln!("scaling: writing {backlog} TPC-B transactions…");
        sh(&format!("{pgbench} -n -c 4 -j 2 -t {} {src}", backlog / 4));
        let target = source.psql("bench", "SELECT pg_current_wal_lsn()");
        quiet(&source, &store);
        let started = Instant::now();
        daemon.start();
        wait_lsn(&source, "tributary_%_live", &target);
        started.elapsed().as_secs_f64()
    });
    let _ = daemon.terminate();

    // Ratios of each run's own figures (`common::ratio`); the ratio of medians is printed too.
    let (snapshot_pipe, snapshot_native) = (ratio(&ours, &pipe), ratio(&native, &ours));
    let catchup = ratio(&ours_catchup, &native_catchup);
    let decode_ratio = ratio(&ours_catchup, &decode_catchup);
    let decode_c = median(&mut decode_catchup);
    let (pipe, native, ours) = (median(&mut pipe), median(&mut native), median(&mut ours));
    let (native_c, ours_c) = (median(&mut native_catchup), median(&mut ours_catchup));
    println!(
        "pgbench scale {scale}, {transactions} transactions, median of {runs} run(s), over {}",
        if unix {
            "unix sockets"
        } else {
            "TCP on 127.0.0.1"
        }
    );
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
    println!(
        "           decode limit {decode_c:6.1} s   tributary / decode limit = {decode_ratio:.2}"
    );
    if let Some(steady) = steady {
        println!(
            "steady     {:.0} transactions/s asked, {:.0} achieved; apply lag over {} probes: \
             p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            steady_rate as f64,
            steady.achieved_tps,
            steady.lags.len(),
            steady.percentile(0.50) * 1e3,
            steady.percentile(0.99) * 1e3,
            steady.percentile(1.0) * 1e3,
        );
    }
    println!(
        "memory     peak RSS: snapshot {}, catch-up {}",
        mb(peak_snapshot),
        mb(peak_catchup)
    );
    if let Some((seconds, peak)) = big_tx {
        println!(
            "           one {big_tx_mb} MB transaction: applied in {seconds:.1} s, peak RSS {}",
            mb(Some(peak))
        );
    }
    if let Some(seconds) = scaled {
        let expected = ours_c * scaling as f64;
        println!(
            "scaling    catch-up of {scaling}× the backlog: {seconds:.1} s = {:.2} × the 1× median ({ours_c:.1} s)",
            seconds / ours_c
        );
        println!("           (≤ {:.1} s is linear)", expected);
    }
}

fn mb(kib: Option<u64>) -> String {
    kib.map_or("unknown".into(), |k| format!("{} MB", k / 1024))
}

/// Creates connector `name` and waits until its snapshot is done and it streams.
fn create_streaming(store: &Cluster, daemon: &Daemon, src: &str, name: &str, schemas: &str) {
    daemon.create_connector(src, name, schemas);
    wait_state(store, daemon, name, "streaming");
}

/// Polled like the native side, not through the CLI, whose start-up would load the machine
/// during a measurement.
fn wait_state(store: &Cluster, daemon: &Daemon, name: &str, wanted: &str) {
    let state = format!("SELECT state FROM tributary.connectors WHERE name = '{name}'");
    let state = poll(store, "postgres", &state, Duration::from_millis(50), |s| {
        s == wanted || s == "failed"
    });
    if state == "failed" {
        panic!("connector {name} failed:\n{}", daemon.log_tail());
    }
}

/// What the steady-state scenario measured.
struct Steady {
    achieved_tps: f64,
    /// Apply lag of each probe, in seconds, sorted.
    lags: Vec<f64>,
}

impl Steady {
    fn percentile(&self, p: f64) -> f64 {
        if self.lags.is_empty() {
            return f64::NAN;
        }
        let index = ((self.lags.len() as f64 * p).ceil() as usize).clamp(1, self.lags.len());
        self.lags[index - 1]
    }
}

/// pgbench `simple-update` at `rate` transactions/s for `secs` seconds, with probes; see the
/// module docs.
fn steady_state(
    source: &Cluster,
    store: &Cluster,
    pgbench: &str,
    src: &str,
    rate: u32,
    secs: u32,
) -> Steady {
    let load = Command::new("sh")
        .args([
            "-c",
            &format!("{pgbench} -n -c 4 -j 2 -R {rate} -T {secs} -b simple-update {src}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sent, seen) = runtime.block_on(async {
        let writer = source.connect("bench").await;
        let reader = store.connect("live_replica").await;
        let update = writer
            .prepare("UPDATE live.probe SET seq = $1 WHERE id = 1")
            .await
            .unwrap();
        let read = reader
            .prepare("SELECT seq FROM live.probe WHERE id = 1")
            .await
            .unwrap();
        let ends = tokio::time::Instant::now() + Duration::from_secs(secs.into());
        let mut probe = tokio::time::interval(Duration::from_millis(100));
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        let (mut sent, mut seen): (Vec<Instant>, Vec<Instant>) = (vec![], vec![]);
        loop {
            tokio::select! {
                _ = probe.tick(), if tokio::time::Instant::now() < ends => {
                    let seq = sent.len() as i64 + 1;
                    writer.execute(&update, &[&seq]).await.unwrap();
                    sent.push(Instant::now());
                }
                _ = poll.tick() => {
                    let applied: i64 = reader.query_one(&read, &[]).await.unwrap().get(0);
                    let now = Instant::now();
                    while (seen.len() as i64) < applied {
                        seen.push(now);
                    }
                    let drained = tokio::time::Instant::now() >= ends && seen.len() >= sent.len();
                    let gave_up = tokio::time::Instant::now() >= ends + Duration::from_secs(60);
                    if drained || gave_up {
                        break;
                    }
                }
            }
        }
        (sent, seen)
    });
    let output = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let achieved_tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    let mut lags: Vec<f64> = sent
        .iter()
        .zip(&seen)
        .map(|(sent, seen)| seen.saturating_duration_since(*sent).as_secs_f64())
        .collect();
    // Probes the replica never showed count as the longest possible lag.
    lags.extend(std::iter::repeat_n(
        f64::INFINITY,
        sent.len() - seen.len().min(sent.len()),
    ));
    lags.sort_by(|a, b| a.total_cmp(b));
    Steady { achieved_tps, lags }
}
