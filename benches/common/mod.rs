//! What the end-to-end benchmarks (`pipeline.rs`, `snapshot.rs`) share: settings from the
//! environment, shell steps, medians, polling a server, and the serial COPY pipe they
//! measure tributary's snapshot against.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, ClusterBuilder};

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn sh(script: &str) {
    let status = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "failed: {script}");
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The median of each run's `a / b`, which resists the drift of a shared machine better
/// than the ratio of medians.
pub fn ratio(a: &[f64], b: &[f64]) -> f64 {
    let mut per_run: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    median(&mut per_run)
}

/// Both clusters of a benchmark: room for a large snapshot's WAL without checkpoints in
/// the middle of a measurement.
pub fn tuned(builder: ClusterBuilder) -> ClusterBuilder {
    builder
        .setting("max_wal_size", "8GB")
        .setting("checkpoint_timeout", "30min")
        .setting("shared_buffers", "512MB")
        .setting("max_worker_processes", "16")
}

/// Runs `query` (one value) on `db` every `interval` until `done` accepts the value, and
/// returns it. One connection for the whole wait: a psql process per poll would load the
/// machine during the measurement it waits for (about a tenth of both cores at 50 polls/s).
pub fn poll(
    cluster: &Cluster,
    db: &str,
    query: &str,
    interval: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = cluster.connect(db).await;
        loop {
            let rows = client.simple_query(query).await.unwrap();
            let value = rows
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .unwrap_or_default();
            if done(&value) {
                return value;
            }
            tokio::time::sleep(interval).await;
        }
    })
}

/// Every timed scenario starts from quiet servers: the previous one's dirty pages are
/// written out first, so the order of the scenarios does not decide who pays for them.
pub fn quiet(source: &Cluster, store: &Cluster) {
    source.psql("bench", "CHECKPOINT");
    store.psql("postgres", "CHECKPOINT");
}

/// How long each step of the serial COPY pipe took, in seconds.
pub struct PipePhases {
    pub pre_data: f64,
    pub rows: f64,
    pub post_data: f64,
}

impl PipePhases {
    pub fn total(&self) -> f64 {
        self.pre_data + self.rows + self.post_data
    }
}

/// The serial COPY pipe from database URL `src` into the empty database URL `dst`, with
/// the client programs of `bindir`: the pre-data of schema `schema`'s tables (without
/// indexes; the schema itself is there already), a binary COPY of each of `tables` one
/// after the other, then their post-data (indexes, constraints).
pub fn copy_pipe(bindir: &Path, src: &str, dst: &str, schema: &str, tables: &[&str]) -> PipePhases {
    let psql = bindir.join("psql").display().to_string();
    let pg_dump = bindir.join("pg_dump").display().to_string();
    let section = |section: &str| {
        sh(&format!(
            "{pg_dump} --schema-only --section={section} --table='{schema}.*' {src} | {psql} -q -X {dst}"
        ))
    };
    let started = Instant::now();
    section("pre-data");
    let pre_data = started.elapsed().as_secs_f64();
    for table in tables {
        sh(&format!(
            "{psql} -X -c 'COPY {schema}.{table} TO STDOUT (FORMAT binary)' {src} | {psql} -X -c 'COPY {schema}.{table} FROM STDIN (FORMAT binary)' {dst}"
        ));
    }
    let copied = started.elapsed().as_secs_f64();
    section("post-data");
    let total = started.elapsed().as_secs_f64();
    PipePhases {
        pre_data,
        rows: copied - pre_data,
        post_data: total - copied,
    }
}
