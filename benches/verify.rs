//! `tributary verify` against the serial COPY pipe of the same data, on the same clusters.
//!
//! ```text
//! cargo bench --bench verify              # pgbench scale 50, 3 runs
//! TRIBUTARY_BENCH_SCALE=5 TRIBUTARY_BENCH_RUNS=1 cargo bench --bench verify
//! ```
//!
//! A pgbench database of scale `TRIBUTARY_BENCH_SCALE` (default 50) is snapshotted by a
//! connector of a running daemon. Then, per run: the serial COPY pipe of its tables into a
//! new database of the branch store (pre-data, a binary COPY per table, post-data), and
//! `tributary verify` of the connector with `--jobs` 1, 2 and 4 (4 is the default): from
//! the command's start to its exit, and the pause it cost the pipeline. With
//! `TRIBUTARY_BENCH_VERIFY_LOAD` transactions/s (default 0: none), pgbench's simple-update
//! runs against the source at that rate throughout.
//!
//! Every party connects over TCP on 127.0.0.1. Prints each figure, the medians and the
//! ratios. Timings are never asserted.

mod common;
#[path = "../tests/daemon.rs"]
mod daemon;
#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/support.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::{copy_pipe, env_or, median, quiet, ratio, sh, tuned, PipePhases};
use daemon::Daemon;
use harness::Cluster;

const PGBENCH_TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

const JOBS: [&str; 3] = ["1", "2", "4"];

/// One verify: wall time and the pipeline's pause, in seconds.
struct Measured {
    seconds: f64,
    paused: f64,
}

fn verify(daemon: &Daemon, jobs: &str) -> Measured {
    let started = Instant::now();
    let out = daemon.cli(&["verify", "bench", "--jobs", jobs, "--format", "json"]);
    let seconds = started.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["equal"], true, "{report}");
    Measured {
        seconds,
        paused: report["paused_ms"].as_f64().unwrap() / 1000.0,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes benchmarks; there are none to list by name.
    }
    let scale: u32 = env_or("TRIBUTARY_BENCH_SCALE", 50);
    let runs: usize = env_or("TRIBUTARY_BENCH_RUNS", 3);
    let load: u32 = env_or("TRIBUTARY_BENCH_VERIFY_LOAD", 0);

    let source = tuned(Cluster::builder()).start();
    let store = tuned(Cluster::builder()).start();
    let url = |cluster: &Cluster, db: &str| {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", cluster.port())
    };
    let src = url(&source, "bench");
    let pgbench = source.bindir().join("pgbench").display().to_string();
    eprintln!("preparing pgbench scale {scale}…");
    source.create_database("bench");
    sh(&format!("{pgbench} -i -q -s {scale} {src}"));
    // pgbench_history has no key: only ever inserted into, so a FULL identity costs nothing.
    source.psql(
        "bench",
        "ALTER TABLE pgbench_history REPLICA IDENTITY FULL; VACUUM ANALYZE; CHECKPOINT;",
    );
    let heap_mb: i64 = source
        .psql(
            "bench",
            "SELECT (sum(pg_relation_size(c.oid)) / 1048576)::int8 FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r'",
        )
        .parse()
        .unwrap();

    let mut daemon = Daemon::new(&store);
    daemon
        .unset("TRIBUTARY__PIPELINE__SNAPSHOT_CHUNK_BYTES")
        .set("RUST_LOG", "info")
        .set("TRIBUTARY__STORE__URL", &url(&store, "postgres"));
    daemon.start();
    daemon.cli_ok(&["connector", "create", "postgresql", &src, "--name", "bench"]);
    daemon.cli_ok(&["connector", "wait", "bench"]);

    let mut writer: Option<Child> = (load > 0).then(|| {
        Command::new(&pgbench)
            .args(["-n", "-b", "simple-update", "-c", "2", "-T", "36000"])
            .args(["-R", &load.to_string(), &src])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    });

    let mut pipe: Vec<PipePhases> = Vec::new();
    let mut ours: Vec<Vec<Measured>> = JOBS.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        let db = format!("pipe_{run}");
        store.create_database(&db);
        quiet(&source, &store);
        let phases = copy_pipe(
            source.bindir(),
            &src,
            &url(&store, &db),
            "public",
            &PGBENCH_TABLES,
        );
        eprintln!(
            "run {run}: copy pipe {:.1} s (rows {:.2} s)",
            phases.total(),
            phases.rows
        );
        pipe.push(phases);
        store.psql("postgres", &format!("DROP DATABASE {db}"));
        for (j, jobs) in JOBS.iter().enumerate() {
            quiet(&source, &store);
            let measured = verify(&daemon, jobs);
            eprintln!(
                "run {run}: verify --jobs {jobs} {:.1} s (pipeline paused {:.2} s)",
                measured.seconds, measured.paused
            );
            ours[j].push(measured);
        }
    }
    if let Some(mut writer) = writer.take() {
        let _ = writer.kill();
        let _ = writer.wait();
    }
    let _ = daemon.terminate();

    let pipe_total: Vec<f64> = pipe.iter().map(PipePhases::total).collect();
    let pipe_rows: Vec<f64> = pipe.iter().map(|p| p.rows).collect();
    println!(
        "verify benchmark: pgbench scale {scale} ({heap_mb} MB of heap), median of {runs} \
         run(s), TCP on 127.0.0.1, {} cores shared, write load {load} tps",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "copy pipe          {:6.1} s   (rows alone {:.1} s)",
        median(&mut pipe_total.clone()),
        median(&mut pipe_rows.clone())
    );
    for (j, jobs) in JOBS.iter().enumerate() {
        let seconds: Vec<f64> = ours[j].iter().map(|m| m.seconds).collect();
        let mut paused: Vec<f64> = ours[j].iter().map(|m| m.paused).collect();
        println!(
            "verify --jobs {jobs}    {:6.1} s   = {:.2} × the copy pipe, {:.2} × its rows alone; \
             pipeline paused {:.2} s",
            median(&mut seconds.clone()),
            ratio(&seconds, &pipe_total),
            ratio(&seconds, &pipe_rows),
            median(&mut paused),
        );
    }
}
