//! tributary's snapshot alone, in one run on the same clusters.
//!
//! ```text
//! cargo bench --bench snapshot            # pgbench scale 50, 3 runs
//! TRIBUTARY_BENCH_SCALE=5 TRIBUTARY_BENCH_RUNS=1 cargo bench --bench snapshot
//! ```
//!
//! 1. End to end as a user sees it: from `tributary connector create` until `tributary
//!    connector wait` returns, for a pgbench database of scale `TRIBUTARY_BENCH_SCALE`
//!    (default 50), against the serial COPY pipe (pre-data, a binary COPY per table,
//!    post-data) of the same tables; where tributary's time goes, from the daemon's log
//!    lines (slot and setup, schema dump, pre-data, row copy, post-data, the rest).
//! 2. Resume: the same snapshot, its daemon killed (SIGKILL) once
//!    `TRIBUTARY_BENCH_INTERRUPT_AT` (default 0.8) of the source's heap bytes are in the
//!    replica, and started again at once: the total time, interrupted part included,
//!    against the uninterrupted run. A table is copied under one snapshot, so a table
//!    whose copy was interrupted is copied again from its start: pgbench's data is almost
//!    all one table, hence the same for `TRIBUTARY_BENCH_MULTI_TABLES` (default 10) tables
//!    of equal size that hold pgbench_accounts' rows between them.
//! 3. The longest source transaction: the source's `pg_stat_activity` is sampled every
//!    150 ms through each of tributary's snapshots (client backends and walsenders with a
//!    transaction or an xmin; the age from `xact_start`, or for a walsender holding an
//!    exported snapshot from its last state change), with the default
//!    `pipeline.snapshot_max_transaction_secs` and with `TRIBUTARY_BENCH_SHORT_TRANSACTION_SECS`
//!    (default 5).
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{copy_pipe, env_or, median, poll, quiet, ratio, sh, tuned, PipePhases};
use daemon::Daemon;
use harness::Cluster;

const PGBENCH_TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];
const SHORT_ENV: &str = "TRIBUTARY__PIPELINE__SNAPSHOT_MAX_TRANSACTION_SECS";

/// The clusters, the daemon and how to reach them.
struct Bench {
    source: Cluster,
    store: Cluster,
    daemon: Daemon,
    src: String,
}

/// A source schema a connector snapshots, and its heap size.
struct Dataset {
    schema: &'static str,
    heap_bytes: i64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes benchmarks; there are none to list by name.
    }
    let scale: u32 = env_or("TRIBUTARY_BENCH_SCALE", 50);
    let runs: usize = env_or("TRIBUTARY_BENCH_RUNS", 3);
    let interrupt_at: f64 = env_or("TRIBUTARY_BENCH_INTERRUPT_AT", 0.8);
    let multi_tables: u32 = env_or("TRIBUTARY_BENCH_MULTI_TABLES", 10);
    let short_secs: u32 = env_or("TRIBUTARY_BENCH_SHORT_TRANSACTION_SECS", 5);

    let source = tuned(Cluster::builder()).start();
    let store = tuned(Cluster::builder()).start();
    let url = |cluster: &Cluster, db: &str| {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", cluster.port())
    };
    let src = url(&source, "bench");
    let pgbench = source.bindir().join("pgbench").display().to_string();

    eprintln!("preparing pgbench scale {scale} and {multi_tables} tables of its accounts…");
    source.create_database("bench");
    sh(&format!("{pgbench} -i -q -s {scale} {src}"));
    // pgbench_history has no key: `connector create` would need a decision for it. It is
    // only ever inserted into, so a FULL identity costs nothing.
    let rows = scale * 100_000;
    let per_table = rows.div_ceil(multi_tables);
    let mut sql =
        String::from("ALTER TABLE pgbench_history REPLICA IDENTITY FULL; CREATE SCHEMA multi;");
    for t in 0..multi_tables {
        sql.push_str(&format!(
            "CREATE TABLE multi.t{t} (LIKE pgbench_accounts INCLUDING ALL);
             INSERT INTO multi.t{t} SELECT * FROM pgbench_accounts
              WHERE aid > {} AND aid <= {};",
            t * per_table,
            (t + 1) * per_table
        ));
    }
    sql.push_str("VACUUM ANALYZE; CHECKPOINT;");
    source.psql("bench", &sql);
    let heap = |schema: &'static str| Dataset {
        schema,
        heap_bytes: source
            .psql(
                "bench",
                &format!(
                    "SELECT sum(pg_relation_size(c.oid)) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = '{schema}' AND c.relkind = 'r'"
                ),
            )
            .trim()
            .parse()
            .unwrap(),
    };
    let (pgbench_data, multi) = (heap("public"), heap("multi"));

    let mut daemon = Daemon::new(&store);
    // Measured as shipped: the default chunk size (tests split tables into tiny chunks to
    // exercise the ranges) and no debug log.
    daemon
        .unset("TRIBUTARY__PIPELINE__SNAPSHOT_CHUNK_BYTES")
        .set("RUST_LOG", "info")
        .set("TRIBUTARY__STORE__URL", &url(&store, "postgres"));
    daemon.start();
    let mut bench = Bench {
        source,
        store,
        daemon,
        src,
    };

    let mut pipe = vec![];
    let (mut ours, mut resumed) = (vec![], vec![]);
    let (mut multi_ours, mut multi_resumed) = (vec![], vec![]);
    let (mut short, mut multi_short) = (vec![], vec![]);
    for run in 0..runs {
        let db = format!("pipe_{run}");
        bench.store.create_database(&db);
        quiet(&bench.source, &bench.store);
        let bindir = bench.source.bindir();
        let phases = copy_pipe(
            bindir,
            &bench.src,
            &url(&bench.store, &db),
            "public",
            &PGBENCH_TABLES,
        );
        eprintln!(
            "run {run}: copy pipe {:.1} s: pre-data {:.2} s, rows {:.2} s, post-data {:.2} s",
            phases.total(),
            phases.pre_data,
            phases.rows,
            phases.post_data
        );
        pipe.push(phases);
        bench.store.psql("postgres", &format!("DROP DATABASE {db}"));

        ours.push(bench.snapshot(&format!("e2e_{run}"), &pgbench_data, None));
        resumed.push(bench.snapshot(&format!("resume_{run}"), &pgbench_data, Some(interrupt_at)));
        multi_ours.push(bench.snapshot(&format!("multi_{run}"), &multi, None));
        multi_resumed.push(bench.snapshot(
            &format!("multi_resume_{run}"),
            &multi,
            Some(interrupt_at),
        ));

        bench.restart_with(Some(short_secs));
        short.push(bench.snapshot(&format!("short_{run}"), &pgbench_data, None));
        multi_short.push(bench.snapshot(&format!("multi_short_{run}"), &multi, None));
        bench.restart_with(None);
    }
    let _ = bench.daemon.terminate();

    let seconds = |m: &[Measured]| m.iter().map(|m| m.seconds).collect::<Vec<_>>();
    let mut pipe_total: Vec<f64> = pipe.iter().map(PipePhases::total).collect();
    let ours_s = seconds(&ours);
    println!(
        "snapshot benchmark: pgbench scale {scale} ({} MB of heap), median of {runs} run(s), \
         TCP on 127.0.0.1, {} cores shared with whatever else runs",
        pgbench_data.heap_bytes >> 20,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("1. end to end (connector create → connector wait returns)");
    println!(
        "   copy pipe {:6.1} s   (pre-data {:.1} s, rows {:.1} s, post-data {:.1} s)",
        median(&mut pipe_total.clone()),
        median(&mut pipe.iter().map(|p| p.pre_data).collect::<Vec<_>>()),
        median(&mut pipe.iter().map(|p| p.rows).collect::<Vec<_>>()),
        median(&mut pipe.iter().map(|p| p.post_data).collect::<Vec<_>>()),
    );
    println!(
        "   tributary {:6.1} s   = {:.2} × the copy pipe ({:.2} of medians)",
        median(&mut ours_s.clone()),
        ratio(&ours_s, &pipe_total),
        median(&mut ours_s.clone()) / median(&mut pipe_total),
    );
    println!("   where tributary's time goes (medians):");
    print_phases(&ours);
    println!(
        "2. resume (SIGKILL once {:.0} % of the heap bytes are in the replica, restarted at once)",
        interrupt_at * 100.0
    );
    print_resume("pgbench", &ours, &resumed);
    print_resume(
        &format!("{multi_tables} tables"),
        &multi_ours,
        &multi_resumed,
    );
    println!("3. longest source transaction during the snapshot (sampled every 150 ms)");
    let multi_name = format!("{multi_tables} tables");
    for (what, secs, measured) in [
        ("pgbench", 300, &ours),
        ("pgbench", short_secs, &short),
        (multi_name.as_str(), 300, &multi_ours),
        (multi_name.as_str(), short_secs, &multi_short),
    ] {
        let longest = measured
            .iter()
            .map(|m| &m.longest)
            .max_by(|a, b| a.seconds.total_cmp(&b.seconds))
            .cloned()
            .unwrap_or_default();
        println!(
            "   {what}, snapshot_max_transaction_secs={secs}: {:.1} s ({}); snapshot {:.1} s (median)",
            longest.seconds,
            longest.who,
            median(&mut seconds(measured))
        );
    }
}

/// The medians of the phases of uninterrupted snapshots, which all have the same marks.
fn print_phases(measured: &[Measured]) {
    let spans: Vec<Vec<(String, f64)>> = measured.iter().map(|m| m.timeline.spans()).collect();
    let Some(first) = spans.first() else { return };
    let total: f64 = median(&mut measured.iter().map(|m| m.seconds).collect::<Vec<_>>());
    for (i, (label, _)) in first.iter().enumerate() {
        let mut values: Vec<f64> = spans
            .iter()
            .filter_map(|s| s.get(i).filter(|(l, _)| l == label).map(|(_, v)| *v))
            .collect();
        let value = median(&mut values);
        println!(
            "     {value:6.1} s {:4.0} %  {label}",
            value / total * 100.0
        );
    }
}

fn print_resume(what: &str, uninterrupted: &[Measured], resumed: &[Measured]) {
    let (a, b): (Vec<f64>, Vec<f64>) = (
        uninterrupted.iter().map(|m| m.seconds).collect(),
        resumed.iter().map(|m| m.seconds).collect(),
    );
    println!(
        "   {what}: uninterrupted {:.1} s, interrupted and resumed {:.1} s = {:.2} × ({:.2} of medians)",
        median(&mut a.clone()),
        median(&mut b.clone()),
        ratio(&b, &a),
        median(&mut b.clone()) / median(&mut a.clone()),
    );
    for (run, m) in resumed.iter().enumerate() {
        if let Some(kill) = &m.kill {
            println!(
                "     run {run}: killed at {:.0} % of the bytes after {:.1} s; tables copied before \
                 the kill {}, after the restart {}; restart → resumed {:.1} s",
                kill.fraction * 100.0,
                m.timeline.between(CREATE, KILLED),
                kill.tables_before,
                kill.tables_after,
                m.timeline.between(RESTARTED, RESUMED),
            );
        }
    }
}

/// One of tributary's snapshots.
struct Measured {
    /// From `connector create` until `connector wait` returned, interruption included.
    seconds: f64,
    longest: Longest,
    timeline: Timeline,
    kill: Option<Kill>,
}

struct Kill {
    /// Of the source's heap bytes, in the replica when the daemon was killed.
    fraction: f64,
    /// Tables whose copy completed before the kill, and after the restart.
    tables_before: usize,
    tables_after: usize,
}

impl Bench {
    /// Connector `name` on `data`'s schema, created and waited for with the CLI as a user
    /// would; with `interrupt`, the daemon is killed once that fraction of the data's heap
    /// is in the replica, and started again at once. Deletes the connector afterwards.
    fn snapshot(&mut self, name: &str, data: &Dataset, interrupt: Option<f64>) -> Measured {
        quiet(&self.source, &self.store);
        let sampler = Sampler::start(&self.source);
        let mut events = vec![(Utc::now(), CREATE.to_owned())];
        let started = Instant::now();
        self.daemon.create_connector(&self.src, name, data.schema);
        let fraction = interrupt.map(|fraction| {
            let copied = self.replica_bytes(name, (fraction * data.heap_bytes as f64) as i64);
            self.daemon.kill9();
            events.push((Utc::now(), KILLED.to_owned()));
            self.daemon.start();
            events.push((Utc::now(), RESTARTED.to_owned()));
            copied as f64 / data.heap_bytes as f64
        });
        self.daemon.cli_ok(&["connector", "wait", name]);
        let seconds = started.elapsed().as_secs_f64();
        events.push((Utc::now(), WAITED.to_owned()));
        let longest = sampler.stop();
        let log = std::fs::read_to_string(self.daemon.log_path()).unwrap_or_default();
        let timeline = Timeline::new(&log, name, events);
        let kill = fraction.map(|fraction| {
            let killed = timeline.at(KILLED).expect("the kill is on the timeline");
            let copied = timeline.tables_copied(&log, name);
            Kill {
                fraction,
                tables_before: copied.iter().filter(|at| **at < killed).count(),
                tables_after: copied.iter().filter(|at| **at >= killed).count(),
            }
        });
        eprintln!(
            "{name}: {seconds:.1} s; longest source transaction {:.1} s ({})",
            longest.seconds, longest.who
        );
        for (label, span) in timeline.spans() {
            eprintln!("  {span:6.1} s  {label}");
        }
        self.daemon.cli_ok(&["connector", "delete", name]);
        Measured {
            seconds,
            longest,
            timeline,
            kill,
        }
    }

    /// Waits until connector `name`'s replica database holds at least `bytes` beyond an
    /// empty database's size (before the index builds, that is the tables' heap), and
    /// returns how many it holds.
    fn replica_bytes(&self, name: &str, bytes: i64) -> i64 {
        let query = format!(
            "SELECT coalesce((SELECT pg_database_size(datname) FROM pg_database \
                              WHERE datname = '{name}_replica'), 0) \
                    - pg_database_size('template1')"
        );
        let held = poll(
            &self.store,
            "postgres",
            &query,
            Duration::from_millis(100),
            |v| v.parse::<i64>().is_ok_and(|held| held >= bytes),
        );
        held.parse().unwrap()
    }

    /// Restarts the daemon with `pipeline.snapshot_max_transaction_secs` set to `secs`, or
    /// to its default.
    fn restart_with(&mut self, secs: Option<u32>) {
        assert_eq!(self.daemon.terminate().code(), Some(0));
        match secs {
            Some(secs) => self.daemon.set(SHORT_ENV, &secs.to_string()),
            None => self.daemon.unset(SHORT_ENV),
        };
        self.daemon.start();
    }
}

const CREATE: &str = "connector create";
const STARTED: &str = "slot created, snapshot started";
const DUMPED: &str = "schema dumped";
const PRE_DATA: &str = "pre-data restored";
const KILLED: &str = "daemon killed (SIGKILL)";
const RESTARTED: &str = "daemon started again";
const RESUMED: &str = "snapshot resumed";
const COPIED: &str = "last group of tables copied";
const POST_DATA: &str = "post-data restored (index builds)";
const COMPLETE: &str = "snapshot complete";
const STREAMING: &str = "stream started";
const WAITED: &str = "connector wait returned";

/// The daemon's log lines that mark a snapshot's phases (`src/pipeline/sync.rs`,
/// `src/pipeline/snapshot/schema.rs`): the label, what the line contains, and whether the
/// first or the last such line counts.
const MARKS: [(&str, &[&str], bool); 8] = [
    (STARTED, &["snapshot started"], true),
    (DUMPED, &["schema dumped"], true),
    (
        PRE_DATA,
        &["schema restored into the replica", "pre-data"],
        true,
    ),
    (RESUMED, &["resuming the interrupted snapshot"], true),
    (COPIED, &["group copied"], false),
    (
        POST_DATA,
        &["schema restored into the replica", "post-data"],
        false,
    ),
    (COMPLETE, &["snapshot complete"], false),
    (STREAMING, &["streaming from="], true),
];

/// A snapshot's marks in time order: the benchmark's own (create, kill, restart, wait
/// returned) and the daemon's log lines.
struct Timeline(Vec<(DateTime<Utc>, String)>);

impl Timeline {
    fn new(log: &str, name: &str, mut events: Vec<(DateTime<Utc>, String)>) -> Timeline {
        let lines = connector_lines(log, name);
        for (label, needles, first) in MARKS {
            let mut found = lines
                .iter()
                .filter(|(_, line)| needles.iter().all(|n| line.contains(n)));
            let at = if first {
                found.next()
            } else {
                found.next_back()
            };
            if let Some((at, _)) = at {
                events.push((*at, label.to_owned()));
            }
        }
        events.sort_by_key(|(at, _)| *at);
        Timeline(events)
    }

    fn at(&self, label: &str) -> Option<DateTime<Utc>> {
        self.0.iter().find(|(_, l)| l == label).map(|(at, _)| *at)
    }

    /// Seconds from mark `from` to mark `to` (NaN when one is missing).
    fn between(&self, from: &str, to: &str) -> f64 {
        match (self.at(from), self.at(to)) {
            (Some(a), Some(b)) => (b - a).as_seconds_f64(),
            _ => f64::NAN,
        }
    }

    /// Each mark after the first, with the seconds since the previous one.
    fn spans(&self) -> Vec<(String, f64)> {
        self.0
            .windows(2)
            .map(|w| {
                (
                    format!("{} → {}", w[0].1, w[1].1),
                    (w[1].0 - w[0].0).as_seconds_f64(),
                )
            })
            .collect()
    }

    /// When each `table copied` line of the connector was logged.
    fn tables_copied(&self, log: &str, name: &str) -> Vec<DateTime<Utc>> {
        connector_lines(log, name)
            .into_iter()
            .filter(|(_, line)| line.contains("table copied"))
            .map(|(at, _)| at)
            .collect()
    }
}

/// The log lines of connector `name`'s span with their time stamps.
fn connector_lines<'a>(log: &'a str, name: &str) -> Vec<(DateTime<Utc>, &'a str)> {
    let span = format!("connector{{name={name}}}");
    log.lines()
        .filter(|line| line.contains(&span))
        .filter_map(|line| {
            let stamp = line.split_whitespace().next()?;
            let at = DateTime::parse_from_rfc3339(stamp).ok()?;
            Some((at.with_timezone(&Utc), line))
        })
        .collect()
}

/// The oldest source transaction (or exported snapshot) seen.
#[derive(Clone, Default)]
struct Longest {
    seconds: f64,
    /// What held it: backend type, state and the start of its query.
    who: String,
}

/// Samples the source's `pg_stat_activity` every 150 ms on a thread of its own, keeping
/// the oldest transaction seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Longest>,
}

const OLDEST: &str = "
SELECT extract(epoch FROM now() - coalesce(xact_start, state_change))::float8,
       backend_type || ' ' || coalesce(state, '') || ': ' || left(query, 50)
  FROM pg_stat_activity
 WHERE pid <> pg_backend_pid()
   AND backend_type IN ('client backend', 'walsender')
   AND (xact_start IS NOT NULL OR backend_xmin IS NOT NULL)
 ORDER BY 1 DESC NULLS LAST
 LIMIT 1";

impl Sampler {
    fn start(source: &Cluster) -> Sampler {
        let url = source.superuser_url("bench");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("the sampler connects to the source");
                tokio::spawn(connection);
                let mut longest = Longest::default();
                while !stopped.load(Ordering::Relaxed) {
                    let rows = client.simple_query(OLDEST).await.unwrap();
                    for message in rows {
                        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                            let seconds: f64 =
                                row.get(0).and_then(|s| s.parse().ok()).unwrap_or(0.0);
                            if seconds > longest.seconds {
                                longest = Longest {
                                    seconds,
                                    who: row.get(1).unwrap_or_default().replace('\n', " "),
                                };
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                longest
            })
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> Longest {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
