//! Snapshots that resume (`src/pipeline/sync.rs`): a snapshot interrupted by kill -9,
//! SIGTERM, a lease takeover or a source restart goes on with the tables it had not
//! copied; tables copied before the interruption are never copied again (their copy count
//! stays 1 and their copy position does not move), and the replica ends equal to the
//! source, which the application's role writes throughout, in transactions that touch
//! every table (tables already copied and tables being copied alike), with UPDATEs that
//! change keys.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tributary::crash::CrashPoint;

use crate::daemon::{wait_converged, Daemon};
use crate::harness::Cluster;
use crate::support::PATIENCE;

const TABLES: usize = 8;
const ROWS: usize = 40_000;

/// A source whose application role owns `TABLES` tables of `ROWS` rows each (a few MB, so
/// the largest are copied in page ranges), read by a replication role; a store; a daemon
/// that copies with one worker and starts a new snapshot every second (so a snapshot has
/// several groups).
fn installation() -> (Cluster, Cluster, Daemon) {
    let source = Cluster::start();
    let store = Cluster::builder().major(source.major()).start();
    source.create_database("shop");
    let mut sql = String::from(
        "CREATE ROLE app LOGIN;
         CREATE ROLE repl LOGIN REPLICATION;
         GRANT CREATE ON SCHEMA public TO app;
         SET ROLE app;",
    );
    for t in 0..TABLES {
        // Different sizes, so that groups and ranges differ.
        let rows = ROWS / (t % 3 + 1);
        sql.push_str(&format!(
            "CREATE TABLE t{t} (id bigint PRIMARY KEY, v int NOT NULL, pad text NOT NULL);
             INSERT INTO t{t} SELECT g, 0, repeat('x', 60) FROM generate_series(1, {rows}) g;"
        ));
    }
    sql.push_str(
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO repl;
         RESET ROLE;
         GRANT CREATE ON DATABASE shop TO repl;",
    );
    source.psql("shop", &sql);
    let mut daemon = Daemon::new(&store);
    daemon
        .set(
            "TRIBUTARY_PG_BINDIR",
            &source.bindir().display().to_string(),
        )
        .set("TRIBUTARY__PIPELINE__SNAPSHOT_WORKERS", "1")
        .set("TRIBUTARY__PIPELINE__SNAPSHOT_MAX_TRANSACTION_SECS", "1")
        .set("TRIBUTARY__SUPERVISOR__LEASE_TTL_SECS", "3");
    (source, store, daemon)
}

/// The application's writes until `stop`: each transaction updates a row of every table,
/// and moves one row of one table to a new key and back over time.
fn app_writes(source: &Cluster, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let url = source.url("app", None, "shop");
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("the application connects");
        tokio::spawn(connection);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let mut sql = String::from("BEGIN;");
            for t in 0..TABLES {
                sql.push_str(&format!(
                    "UPDATE t{t} SET v = v + 1 WHERE id = {};",
                    n % 1000 + 1
                ));
            }
            let moved = n % TABLES as u64;
            let key = n % 500 + 2000;
            sql.push_str(&format!(
                "UPDATE t{moved} SET id = CASE WHEN id > 0 THEN -id ELSE -id END \
                 WHERE id IN ({key}, -{key});
                 INSERT INTO t{moved} VALUES ({}, 1, 'new') ON CONFLICT DO NOTHING;
                 COMMIT;",
                1_000_000 + n
            ));
            // The source restarting (one of the tests) interrupts the application too.
            if client.batch_execute(&sql).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        n
    })
}

/// The replica's record of its tables: copy position and complete copies, by name.
fn copies(store: &Cluster) -> BTreeMap<String, (String, i32)> {
    let rows = store.psql(
        "shop_replica",
        "SELECT table_name || ' ' || coalesce(copied_lsn::text, '-') || ' ' || copies
           FROM tributary.table_sync ORDER BY 1",
    );
    rows.lines()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            (
                parts[0].to_owned(),
                (parts[1].to_owned(), parts[2].parse().unwrap()),
            )
        })
        .collect()
}

/// The tables whose copy completed.
fn copied(store: &Cluster) -> BTreeMap<String, (String, i32)> {
    let exists = store.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname = 'shop_replica'",
    );
    if exists.trim() != "1" {
        return BTreeMap::new();
    }
    let has_table = store.psql(
        "shop_replica",
        "SELECT to_regclass('tributary.table_sync') IS NOT NULL",
    );
    if has_table.trim() != "t" {
        return BTreeMap::new();
    }
    copies(store)
        .into_iter()
        .filter(|(_, (at, _))| at != "-")
        .collect()
}

/// Waits until at least `n` tables, but not all, are copied; returns them.
async fn wait_partly_copied(
    store: &Cluster,
    n: usize,
    daemon: &Daemon,
) -> BTreeMap<String, (String, i32)> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let done = copied(store);
        if done.len() >= n {
            assert!(
                done.len() < TABLES,
                "the snapshot finished before it could be interrupted: make it slower\n{}",
                daemon.log_tail()
            );
            return done;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no table copied in time:\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After the interruption: the snapshot finishes, the replica equals the source, every
/// table was copied exactly once, and those copied before the interruption kept their
/// copy position; the bookkeeping says the same, and every table streams.
async fn finishes_without_copying_again(
    source: &Cluster,
    store: &Cluster,
    daemon: &Daemon,
    before: &BTreeMap<String, (String, i32)>,
    stop: Arc<AtomicBool>,
    writes: tokio::task::JoinHandle<u64>,
) {
    daemon.wait_for_state("shop", "streaming").await;
    stop.store(true, Ordering::Relaxed);
    let written = writes.await.unwrap();
    assert!(written > 10, "the application wrote throughout ({written})");
    wait_converged(source, "shop", store, "shop_replica", &["public"], daemon).await;
    let after = copies(store);
    assert_eq!(after.len(), TABLES, "{after:?}");
    for (table, (at, n)) in &after {
        assert_eq!(
            *n,
            1,
            "{table} was copied {n} times:\n{}",
            daemon.log_tail()
        );
        if let Some((before_at, _)) = before.get(table) {
            assert_eq!(at, before_at, "{table}'s copy must be kept, not redone");
        }
    }
    let log = std::fs::read_to_string(daemon.log_path()).unwrap();
    assert!(
        log.contains("resuming the interrupted snapshot"),
        "{}",
        daemon.log_tail()
    );
    assert!(
        log.contains("copying tables under a new snapshot"),
        "the rest was copied under new snapshots"
    );
    // The bookkeeping's view, as `connector tables` shows it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let states = store.psql(
            "postgres",
            "SELECT string_agg(DISTINCT sync_state || ':' || copies, ',') \
               FROM tributary.connector_tables",
        );
        if states.trim() == "streaming:1" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tables not all streaming with one copy each: {states}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing left on the source: no temporary slot, no second slot.
    let slots = source.psql(
        "shop",
        "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'",
    );
    assert_eq!(slots.trim(), "1");
}

async fn killed_after_nth_table(nth: u32) {
    let (source, store, mut daemon) = installation();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = app_writes(&source, stop.clone());
    daemon.crash_at_nth(CrashPoint::AfterCopyBeforeProgress, nth);
    daemon.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    daemon.start();
    let status = daemon.wait_exit();
    assert_eq!(status.signal(), Some(9), "{}", daemon.log_tail());
    let before = copied(&store);
    assert_eq!(
        before.len(),
        nth as usize,
        "the replica records exactly the copies that committed: {before:?}"
    );
    daemon.crash_at(None);
    daemon.start();
    finishes_without_copying_again(&source, &store, &daemon, &before, stop, writes).await;
}

#[tokio::test]
async fn killed_after_the_first_table_resumes_with_the_others() {
    killed_after_nth_table(1).await;
}

#[tokio::test]
async fn killed_after_five_tables_resumes_with_the_others() {
    killed_after_nth_table(5).await;
}

#[tokio::test]
async fn sigterm_during_a_snapshot_resumes_after_the_restart() {
    let (source, store, mut daemon) = installation();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = app_writes(&source, stop.clone());
    daemon.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    daemon.start();
    wait_partly_copied(&store, 2, &daemon).await;
    // As a rolling update does.
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}\n{}", daemon.log_tail());
    let before = copied(&store);
    daemon.start();
    finishes_without_copying_again(&source, &store, &daemon, &before, stop, writes).await;
}

#[tokio::test]
async fn a_lease_takeover_mid_snapshot_resumes_and_fences_the_old_owner() {
    let (source, store, mut first) = installation();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = app_writes(&source, stop.clone());
    first.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    first.start();
    wait_partly_copied(&store, 2, &first).await;
    // Paused (a node freeze, a long GC pause): its lease runs out, a second daemon takes
    // the connector over and goes on with the snapshot.
    first.signal("STOP");
    let before = copied(&store);
    let mut second = first.sibling();
    second.start();
    second.wait_for_state("shop", "streaming").await;
    // The first wakes up: anything it still writes is refused by the replica's lease.
    first.signal("CONT");
    finishes_without_copying_again(&source, &store, &second, &before, stop, writes).await;
    assert_eq!(crate::daemon::overlapping_leases(&store), 0);
}

#[tokio::test]
async fn a_source_restart_mid_snapshot_resumes() {
    let (source, store, mut daemon) = installation();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = app_writes(&source, stop.clone());
    daemon.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    daemon.start();
    // Once pg_dump is done (it locks every table), the two tables copied last wait
    // behind a lock until the restart: it interrupts the snapshot however fast the
    // machine copies.
    crate::support::eventually("the schema restored", || async {
        let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
        log.contains("section=\"pre-data\"").then_some(())
    })
    .await;
    let (locker, connection) =
        tokio_postgres::connect(&source.superuser_url("shop"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    // The smallest tables, t2 and t5, come last (largest first).
    let locking = tokio::spawn(async move {
        locker
            .batch_execute("BEGIN; LOCK TABLE t2, t5 IN ACCESS EXCLUSIVE MODE")
            .await
    });
    wait_partly_copied(&store, 2, &daemon).await;
    let before = copied(&store);
    source.restart();
    let _ = locking.await;
    connection.abort();
    // The application reconnects after the restart and writes on.
    stop.store(true, Ordering::Relaxed);
    let _ = writes.await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = app_writes(&source, stop.clone());
    finishes_without_copying_again(&source, &store, &daemon, &before, stop, writes).await;
}

#[tokio::test]
async fn a_resync_under_writes_copies_one_table_again_and_it_rejoins_exactly() {
    let (source, store, mut daemon) = installation();
    daemon.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    let before = copies(&store);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = app_writes(&source, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Copied again while the application writes to it and to every other table, in the
    // same transactions: the stream resumes from the replica's position for the others
    // and from the new copy's position for t3.
    daemon.cli_ok(&["connector", "resync", "shop", "--table", "t3"]);
    daemon.cli_ok(&["connector", "wait", "shop"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writes.await.unwrap();
    wait_converged(
        &source,
        "shop",
        &store,
        "shop_replica",
        &["public"],
        &daemon,
    )
    .await;
    let after = copies(&store);
    for (table, (at, n)) in &after {
        if table == "t3" {
            assert_eq!(*n, 2, "t3 copied once more");
            let lsn = |text: &str| text.parse::<tributary::types::Lsn>().unwrap();
            assert!(lsn(at) > lsn(&before[table].0), "t3's copy is newer: {at}");
        } else {
            assert_eq!((at, *n), (&before[table].0, 1), "{table} untouched");
        }
    }
}

/// `count(*)` and `sum(v)` of `table`.
fn summary(cluster: &Cluster, db: &str, table: &str) -> String {
    cluster.psql(db, &format!("SELECT count(*), sum(v) FROM {table}"))
}

#[tokio::test]
async fn a_table_whose_change_cannot_be_applied_is_held_out_while_the_others_stream() {
    let (source, store, mut daemon) = installation();
    daemon.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = app_writes(&source, stop.clone());

    // Rows changed on the replica behind tributary's back: a row t2's next UPDATE will
    // not find, and a key t5's next INSERT will collide with. Each is a definite error of
    // that table alone.
    store.psql(
        "shop_replica",
        "DELETE FROM t2 WHERE id = 5; INSERT INTO t5 VALUES (9000000, 0, 'planted');",
    );
    source.psql(
        "shop",
        "UPDATE t2 SET v = v + 100 WHERE id = 5; INSERT INTO t5 VALUES (9000000, 1, 'source');",
    );
    let states = crate::support::eventually("t2 and t5 held out", || async {
        let states = daemon.tables("shop");
        let failed = |t: &str| states[&format!("public.{t}")]["state"] == "failed";
        (failed("t2") && failed("t5")).then_some(states)
    })
    .await;
    assert!(
        states["public.t2"]["problem"]
            .as_str()
            .unwrap()
            .contains("row not found"),
        "{}",
        states["public.t2"]
    );
    assert!(
        states["public.t5"]["problem"]
            .as_str()
            .unwrap()
            .contains("23505"),
        "{}",
        states["public.t5"]
    );
    for held in ["t2", "t5"] {
        let next = states[&format!("public.{held}")]["next_step"]
            .as_str()
            .unwrap();
        assert!(
            next.contains(&format!("connector resync shop --table public.{held}")),
            "{next}"
        );
    }
    // The others stream on under the writes, the connector never failed, and no row of
    // another table was lost or applied twice by the rolled-back target transaction.
    // (The run that met the error ended; the next one streams without those tables.)
    daemon.wait_for_state("shop", "streaming").await;
    let (healthy, views) = daemon.status();
    assert!(!healthy, "a held-out table is not healthy: {views:?}");
    assert_eq!(views[0]["state"], "streaming", "{views:?}");
    let progressed = summary(&store, "shop_replica", "t0");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writes.await.unwrap();
    for t in (0..TABLES).filter(|t| ![2, 5].contains(t)) {
        let table = format!("t{t}");
        crate::support::eventually(&format!("{table} to match the source"), || async {
            (summary(&store, "shop_replica", &table) == summary(&source, "shop", &table))
                .then_some(())
        })
        .await;
    }
    assert_ne!(
        summary(&store, "shop_replica", "t0"),
        progressed,
        "t0 kept streaming"
    );
    assert_eq!(
        store.psql("shop_replica", "SELECT count(*) FROM t2 WHERE id = 5"),
        "0",
        "t2 stays as it was when it was held out"
    );

    // Copied again, both rejoin: the replica equals the source, and only they were copied.
    daemon.cli_ok(&[
        "connector",
        "resync",
        "shop",
        "--table",
        "t2",
        "--table",
        "t5",
    ]);
    daemon.cli_ok(&["connector", "wait", "shop"]);
    wait_converged(
        &source,
        "shop",
        &store,
        "shop_replica",
        &["public"],
        &daemon,
    )
    .await;
    for (table, (_, n)) in copies(&store) {
        let expected = if table == "t2" || table == "t5" { 2 } else { 1 };
        assert_eq!(n, expected, "{table}");
    }
    let (healthy, views) = daemon.status();
    assert!(healthy, "{views:?}");
}
