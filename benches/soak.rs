//! Soak: a mixed write load on several connectors while daemons sharing one bookkeeping are
//! killed, stopped and paused at random; at the end every replica must equal its source.
//!
//! ```text
//! cargo bench --bench soak                                    # 10 minutes
//! TRIBUTARY_SOAK_SECS=120 TRIBUTARY_SOAK_DAEMONS=3 cargo bench --bench soak
//! ```
//!
//! - `TRIBUTARY_SOAK_SECS` (default 600): how long the load and the faults go on.
//! - `TRIBUTARY_SOAK_CONNECTORS` (default 3): one source database and connector each.
//! - `TRIBUTARY_SOAK_DAEMONS` (default 2): daemons on the one bookkeeping.
//! - `TRIBUTARY_SOAK_FAULT_SECS` (default 20): the mean time between two faults.
//!
//! The load, per source database: transfers between keyed accounts, appends to a keyless
//! ledger (REPLICA IDENTITY FULL: a change applied twice shows as an extra row), inserts,
//! updates and deletes of items, now and then a 5,000-row transaction, and every few
//! minutes a schema change (a column added, later dropped). The faults: `kill -9` and
//! restart, SIGTERM and restart, and SIGSTOP for longer than the lease TTL, then SIGCONT.
//!
//! Reports the transactions and row changes written, the faults survived, the leases taken,
//! the daemons' peak RSS, and the comparison of every table; exits 1 on any difference.
//! Not part of the test suite: it runs for minutes and its numbers vary.

#[path = "../tests/daemon.rs"]
mod daemon;
#[path = "../tests/harness/mod.rs"]
mod harness;
#[path = "../tests/support.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon::{content, Daemon};
use harness::Cluster;
use rand::Rng;

const LEASE_TTL_SECS: u64 = 5;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the load did, over all databases.
#[derive(Default)]
struct Written {
    transactions: AtomicU64,
    schema_changes: AtomicU64,
}

/// Rows seeded per database, which the snapshot copies rather than the stream.
const SEEDED_ROWS: u64 = 6_000;

fn seed(source: &Cluster, db: &str) {
    source.create_database(db);
    source.psql(
        db,
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 1000) g;
         CREATE TABLE ledger (n bigint, amount int, note text);
         ALTER TABLE ledger REPLICA IDENTITY FULL;
         CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, qty int NOT NULL,
                             price numeric(12,2), at timestamptz NOT NULL DEFAULT now());
         INSERT INTO items SELECT g, 'item ' || g, g % 17, g * 1.25 FROM generate_series(1, 5000) g;",
    );
}

/// One database's load until `stop`, reconnecting whenever the source hiccups.
async fn load(url: String, stop: Arc<AtomicBool>, written: Arc<Written>, seed: u64) {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n: u64 = 0;
    let mut next_item: i64 = 1_000_000;
    let mut extra_column: Option<u32> = None;
    let mut last_ddl = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
        else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        tokio::spawn(connection);
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let (sql, ddl) = match rng.gen_range(0..100) {
                0..=39 => {
                    let (from, to) = (rng.gen_range(1..=1000), rng.gen_range(1..=1000));
                    let amount = rng.gen_range(1..100);
                    (
                        format!(
                            "BEGIN;
                             UPDATE accounts SET balance = balance - {amount} WHERE id = {from};
                             UPDATE accounts SET balance = balance + {amount} WHERE id = {to};
                             INSERT INTO ledger VALUES ({n}, {amount}, 'transfer');
                             COMMIT;"
                        ),
                        false,
                    )
                }
                40..=69 => {
                    next_item += 1;
                    (
                        format!(
                            "INSERT INTO items (id, label, qty, price) VALUES \
                             ({next_item}, 'new ' || {n}, {}, {}.{:02})",
                            rng.gen_range(0..50),
                            rng.gen_range(0..1000),
                            rng.gen_range(0..100)
                        ),
                        false,
                    )
                }
                70..=84 => (
                    format!(
                        "UPDATE items SET qty = qty + 1, label = label || '+' WHERE id = {}",
                        rng.gen_range(1..=next_item)
                    ),
                    false,
                ),
                85..=96 => (
                    format!(
                        "DELETE FROM items WHERE id = {}",
                        rng.gen_range(1..=next_item)
                    ),
                    false,
                ),
                97 => {
                    let start = next_item + 1;
                    next_item += 5_000;
                    (
                        format!(
                            "INSERT INTO items (id, label, qty, price) \
                             SELECT g, md5(g::text), g % 7, g / 100.0 \
                               FROM generate_series({start}, {next_item}) g"
                        ),
                        false,
                    )
                }
                _ if last_ddl.elapsed() > Duration::from_secs(120) => {
                    last_ddl = Instant::now();
                    match extra_column.take() {
                        None => {
                            let c = (n % 1000) as u32;
                            extra_column = Some(c);
                            (
                                format!("ALTER TABLE items ADD COLUMN extra_{c} int DEFAULT {c}"),
                                true,
                            )
                        }
                        Some(c) => (format!("ALTER TABLE items DROP COLUMN extra_{c}"), true),
                    }
                }
                _ => (format!("INSERT INTO ledger VALUES ({n}, 0, 'noop')"), false),
            };
            if client.batch_execute(&sql).await.is_err() {
                break;
            }
            written.transactions.fetch_add(1, Ordering::Relaxed);
            if ddl {
                written.schema_changes.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1..6))).await;
        }
    }
}

#[derive(Default)]
struct Faults {
    killed: u32,
    terminated: u32,
    paused: u32,
    peak_rss_kib: u64,
}

impl Faults {
    fn sample_rss(&mut self, daemon: &mut Daemon) {
        if daemon.is_running() {
            self.peak_rss_kib = self.peak_rss_kib.max(daemon.peak_rss_kib());
        }
    }
}

fn main() {
    let secs: u64 = env_or("TRIBUTARY_SOAK_SECS", 600);
    let connectors: usize = env_or("TRIBUTARY_SOAK_CONNECTORS", 3);
    let daemon_count: usize = env_or("TRIBUTARY_SOAK_DAEMONS", 2);
    let fault_secs: u64 = env_or("TRIBUTARY_SOAK_FAULT_SECS", 20);
    println!(
        "soak: {secs} s, {connectors} connectors, {daemon_count} daemons, a fault every ~{fault_secs} s, lease TTL {LEASE_TTL_SECS} s"
    );

    let source = Cluster::builder()
        .setting("max_wal_size", "1GB")
        .setting("wal_sender_timeout", "10s")
        .start();
    let store = Cluster::start();
    let dbs: Vec<String> = (1..=connectors).map(|i| format!("soak{i}")).collect();
    for db in &dbs {
        seed(&source, db);
    }
    let mut first = Daemon::new(&store);
    first
        .set(
            "TRIBUTARY__SUPERVISOR__LEASE_TTL_SECS",
            &LEASE_TTL_SECS.to_string(),
        )
        .set("RUST_LOG", "info");
    let mut daemons = vec![first];
    while daemons.len() < daemon_count {
        let sibling = daemons[0].sibling();
        daemons.push(sibling);
    }
    for (i, db) in dbs.iter().enumerate() {
        daemons[0].create_connector(&source.superuser_url(db), &format!("c{}", i + 1), "public");
    }
    for daemon in &mut daemons {
        daemon.start();
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Written::default());
    let loads: Vec<_> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| {
            runtime.spawn(load(
                source.superuser_url(db),
                stop.clone(),
                written.clone(),
                i as u64,
            ))
        })
        .collect();

    let started = Instant::now();
    let mut faults = Faults::default();
    let mut rng = rand::thread_rng();
    while started.elapsed() < Duration::from_secs(secs) {
        let wait = rng.gen_range(fault_secs / 2..=fault_secs * 3 / 2).max(1);
        std::thread::sleep(Duration::from_secs(wait));
        for daemon in &mut daemons {
            faults.sample_rss(daemon);
        }
        let victim = &mut daemons[rng.gen_range(0..daemon_count)];
        let at = started.elapsed().as_secs();
        match rng.gen_range(0..3) {
            0 => {
                println!("  {at:>4} s: kill -9 daemon {}", victim.pid());
                victim.kill9();
                std::thread::sleep(Duration::from_millis(rng.gen_range(200..3000)));
                victim.start();
                faults.killed += 1;
            }
            1 => {
                println!("  {at:>4} s: SIGTERM daemon {}", victim.pid());
                let status = victim.terminate();
                assert!(status.success(), "exit {status}:\n{}", victim.log_tail());
                victim.start();
                faults.terminated += 1;
            }
            _ => {
                let pause = LEASE_TTL_SECS + rng.gen_range(1..5);
                println!("  {at:>4} s: SIGSTOP daemon {} for {pause} s", victim.pid());
                victim.signal("STOP");
                std::thread::sleep(Duration::from_secs(pause));
                victim.signal("CONT");
                faults.paused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for load in loads {
            let _ = load.await;
        }
    });
    let load_secs = started.elapsed().as_secs_f64();
    for daemon in &mut daemons {
        faults.sample_rss(daemon);
    }

    // Every replica must come to equal its source.
    let settle = Instant::now();
    let mut differences = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        let replica = format!("c{}_replica", i + 1);
        let expected = content(&source, db, &["public"]);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let got = content(&store, &replica, &["public"]);
            if got == expected {
                break;
            }
            if Instant::now() > deadline {
                differences.push(format!(
                    "{replica}:\n  source  {expected:?}\n  replica {got:?}"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let settled = settle.elapsed().as_secs_f64();
    for daemon in &mut daemons {
        faults.sample_rss(daemon);
    }
    let leases = store.psql("postgres", "SELECT count(*) FROM tributary.lease_history");
    let overlaps = daemon::overlapping_leases(&store);
    let states = store.psql(
        "postgres",
        "SELECT string_agg(name || '=' || state, ' ' ORDER BY name) FROM tributary.connectors",
    );

    println!();
    println!("load                {load_secs:.0} s");
    // Rows inserted, updated and deleted on the sources since the seed: each one a change
    // every replica had to apply exactly once.
    let row_changes: u64 = dbs
        .iter()
        .map(|db| {
            let changed: u64 = source
                .psql(
                    db,
                    "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables",
                )
                .parse()
                .unwrap();
            changed.saturating_sub(SEEDED_ROWS)
        })
        .sum();
    println!(
        "written             {} transactions, {} schema changes",
        written.transactions.load(Ordering::Relaxed),
        written.schema_changes.load(Ordering::Relaxed)
    );
    println!("changes replicated  {row_changes} row changes (pg_stat_user_tables on the sources)");
    println!(
        "faults survived     {} (kill -9 {}, SIGTERM {}, SIGSTOP {})",
        faults.killed + faults.terminated + faults.paused,
        faults.killed,
        faults.terminated,
        faults.paused
    );
    println!("leases taken        {leases} (overlapping: {overlaps})");
    println!(
        "peak RSS            {:.1} MB (largest of any daemon process sampled)",
        faults.peak_rss_kib as f64 / 1024.0
    );
    println!("caught up           {settled:.1} s after the load stopped");
    println!("connector states    {states}");
    if differences.is_empty() && overlaps == 0 {
        println!("content             every table equal to the source ({connectors} replicas)");
    } else {
        println!("content             MISMATCH");
        for d in &differences {
            println!("{d}");
        }
        for daemon in &daemons {
            println!("--- daemon log ---\n{}", daemon.log_tail());
        }
        std::process::exit(1);
    }
}
