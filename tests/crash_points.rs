//! Named crash points (`src/crash.rs`): the daemon is killed with SIGKILL exactly inside a
//! window a random kill -9 rarely hits, under a write load by the application's role, and
//! a restarted daemon must end with the replica equal to the source and nothing left over
//! on the source.

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tributary::crash::CrashPoint;

use crate::daemon::{wait_converged, Daemon};
use crate::harness::Cluster;

/// A source with an application owner writing two tables and a replication role reading
/// them, a store, and a daemon that will die at `point`.
fn installation(point: CrashPoint) -> (Cluster, Cluster, Daemon) {
    let source = Cluster::start();
    let store = Cluster::builder().major(source.major()).start();
    source.create_database("shop");
    source.psql(
        "shop",
        "CREATE ROLE app LOGIN;
         CREATE ROLE repl LOGIN REPLICATION;
         GRANT CREATE ON SCHEMA public TO app;
         SET ROLE app;
         CREATE TABLE items (id bigint PRIMARY KEY, qty int NOT NULL);
         CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, item bigint);
         INSERT INTO items SELECT g, 0 FROM generate_series(1, 5000) g;
         INSERT INTO orders (item) SELECT g % 5000 + 1 FROM generate_series(1, 5000) g;
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO repl;
         GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO repl;
         RESET ROLE;
         GRANT CREATE ON DATABASE shop TO repl;",
    );
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY_PG_BINDIR",
        &source.bindir().display().to_string(),
    );
    daemon.crash_at(Some(point));
    (source, store, daemon)
}

/// The application's writes, one transaction at a time, until `stop`.
fn app_writes(source: &Cluster, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let url = source.url("app", None, "shop");
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("the application connects");
        tokio::spawn(connection);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            client
                .batch_execute(&format!(
                    "BEGIN;
                     UPDATE items SET qty = qty + 1 WHERE id = {};
                     INSERT INTO orders (item) VALUES ({});
                     COMMIT;",
                    n % 5000 + 1,
                    n % 5000 + 1
                ))
                .await
                .expect("the application writes");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

async fn killed_at_then_recovers(point: CrashPoint) {
    let (source, store, mut daemon) = installation(point);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = app_writes(&source, stop.clone());
    daemon.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    daemon.start();
    let status = daemon.wait_exit();
    assert_eq!(
        status.signal(),
        Some(9),
        "the daemon must die by SIGKILL at {}:\n{}",
        point.name(),
        daemon.log_tail()
    );
    assert!(
        daemon.log_tail().contains(point.name()),
        "the daemon must have died at {}, not elsewhere:\n{}",
        point.name(),
        daemon.log_tail()
    );

    daemon.crash_at(None);
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
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
    let slots = source.psql(
        "shop",
        "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'",
    );
    assert_eq!(
        slots.trim(),
        "1",
        "one slot, none left over from the killed run"
    );
}

#[tokio::test]
async fn killed_between_slot_creation_and_the_first_commit() {
    killed_at_then_recovers(CrashPoint::AfterSlotBeforeFirstCommit).await;
}

#[tokio::test]
async fn killed_after_a_table_is_copied_before_its_progress_row() {
    killed_at_then_recovers(CrashPoint::AfterCopyBeforeProgress).await;
}

/// `connector delete` killed after it dropped the slot, before the replica and the
/// bookkeeping rows: the connector stays listed (disabled), running delete again finishes
/// the job, and a connector of the same name can be created and streams afterwards.
#[tokio::test]
async fn delete_killed_after_the_slot_is_dropped_finishes_when_run_again() {
    let (source, store, mut daemon) = installation(CrashPoint::DuringDelete);
    daemon.crash_at(None);
    daemon.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    let slots = || {
        source.psql(
            "shop",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'",
        )
    };
    let replicas = || {
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'shop_replica'",
        )
    };
    assert_eq!(slots().trim(), "1");

    daemon.crash_at(Some(CrashPoint::DuringDelete));
    let killed = daemon.cli(&["connector", "delete", "shop"]);
    let stderr = String::from_utf8_lossy(&killed.stderr);
    assert_eq!(
        killed.status.signal(),
        Some(9),
        "delete must die by SIGKILL at the crash point: {stderr}"
    );
    assert!(stderr.contains(CrashPoint::DuringDelete.name()), "{stderr}");
    // Killed in the window: the slot is gone, the replica and the rows are not.
    assert_eq!(slots().trim(), "0");
    assert_eq!(replicas().trim(), "1");
    let listed = daemon.connectors();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["enabled"], serde_json::json!(false));

    daemon.crash_at(None);
    let out = daemon.cli_ok(&["connector", "delete", "shop"]);
    assert!(out.contains("Deleted connector shop"), "{out}");
    assert_eq!(slots().trim(), "0");
    assert_eq!(replicas().trim(), "0");
    assert!(daemon.connectors().is_empty());
    let rows = store.psql(
        "postgres",
        "SELECT (SELECT count(*) FROM tributary.connectors) \
              + (SELECT count(*) FROM tributary.connector_tables)",
    );
    assert_eq!(rows.trim(), "0", "no bookkeeping rows left");

    // The name is free again: a new connector of the same name snapshots and streams.
    daemon.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    let out = daemon.cli_ok(&[
        "connector",
        "wait",
        "shop",
        "--caught-up",
        "--timeout",
        "120",
    ]);
    assert!(out.contains("shop has applied everything up to"), "{out}");
    wait_converged(
        &source,
        "shop",
        &store,
        "shop_replica",
        &["public"],
        &daemon,
    )
    .await;
    assert_eq!(slots().trim(), "1");
}
