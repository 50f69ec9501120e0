//! Named crash points (`src/crash.rs`): the daemon is killed with SIGKILL exactly inside a
//! window a random kill -9 rarely hits, under a write load by the application's role, and
//! a restarted daemon must end with the replica equal to the source and nothing left over
//! on the source. A branch cut killed (in the daemon's pipeline, or in `branch create`)
//! ends complete after a restart or a retry, or is deleted and made again, never half-made.

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tributary::crash::CrashPoint;

use crate::daemon::{lock_replica_table, wait_converged, Daemon};
use crate::harness::Cluster;

/// A source with an application owner writing two tables and a replication role reading
/// them, a store, and a daemon that will die at `point`.
fn installation(point: Option<CrashPoint>) -> (Cluster, Cluster, Daemon) {
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
    daemon.crash_at(point);
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
    let (source, store, mut daemon) = installation(Some(point));
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

/// The branch `name` exists complete: its content the source's (quiet since the replica
/// converged), its own record at the copy's position, its sequences the source's, listed
/// ready and alone.
#[track_caller]
fn assert_branch_complete(source: &Cluster, store: &Cluster, name: &str) {
    assert_eq!(
        crate::daemon::content(store, name, &["public"]),
        crate::daemon::content(source, "shop", &["public"]),
        "the branch holds the replica, which holds the source"
    );
    assert_eq!(
        store.psql(name, "SELECT name || ' ' || lsn FROM tributary.branch"),
        format!(
            "{name} {}",
            store.psql(name, "SELECT lsn FROM tributary.applied")
        ),
        "tributary.branch records the copy's own position"
    );
    assert_eq!(
        store.psql(name, "SELECT last_value FROM orders_id_seq"),
        source.psql("shop", "SELECT last_value FROM orders_id_seq"),
        "sequences are set from the source"
    );
    assert_eq!(
        store.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")
        ),
        "1"
    );
}

/// `branch list`: each branch's name and state.
fn listed(daemon: &Daemon) -> Vec<(String, String)> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&daemon.cli_ok(&["branch", "list", "--format", "json"])).unwrap();
    list.iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_owned(),
                b["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A source whose replica has converged under a running daemon, quiet from then on.
async fn converged(point: Option<CrashPoint>) -> (Cluster, Cluster, Daemon) {
    let (source, store, mut daemon) = installation(point);
    daemon.create_connector(&source.url("repl", None, "shop"), "shop", "public");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    source.psql(
        "shop",
        "SET ROLE app; INSERT INTO orders (item) VALUES (1);",
    );
    wait_converged(
        &source,
        "shop",
        &store,
        "shop_replica",
        &["public"],
        &daemon,
    )
    .await;
    (source, store, daemon)
}

#[tokio::test]
async fn killed_during_a_branch_cut_by_the_pipeline() {
    let (source, store, mut daemon) = converged(Some(CrashPoint::DuringBranchCut)).await;
    let waiting = daemon.cli_spawn(&["branch", "create", "b1"]);
    let status = daemon.wait_exit();
    assert_eq!(
        status.signal(),
        Some(9),
        "the pipeline must die at the cut:\n{}",
        daemon.log_tail()
    );
    assert!(daemon
        .log_tail()
        .contains(CrashPoint::DuringBranchCut.name()));

    // The command waits for the copy; the restarted daemon cuts the branch again.
    daemon.crash_at(None);
    daemon.start();
    let out = tokio::task::spawn_blocking(move || waiting.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log_tail()
    );
    assert_branch_complete(&source, &store, "b1");
    assert_eq!(listed(&daemon), [("b1".to_owned(), "ready".to_owned())]);
}

#[tokio::test]
async fn killed_during_a_branch_cut_by_the_command() {
    let (source, store, mut daemon) = converged(Some(CrashPoint::DuringBranchCut)).await;
    // Without a daemon the command copies the replica itself.
    daemon.terminate();
    let killed = |daemon: &Daemon| {
        let out = daemon.cli(&["branch", "create", "b1", "--allow-stale"]);
        assert_eq!(
            out.status.signal(),
            Some(9),
            "the command must die at the cut:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains(CrashPoint::DuringBranchCut.name()));
    };
    killed(&daemon);
    assert_eq!(listed(&daemon), [("b1".to_owned(), "cutting".to_owned())]);
    daemon.crash_at(None);

    let out = daemon.cli(&["branch", "reset", "b1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("left unfinished by a command that ended"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleted: the partial copy goes with the record, and the name is free again.
    let out = daemon.cli_ok(&["branch", "delete", "b1"]);
    assert!(out.contains("✓ Deleted branch b1"), "{out}");
    assert_eq!(listed(&daemon), []);
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'b1'"
        ),
        "0"
    );

    // Or created again: the interrupted cut is cleaned up first.
    daemon.crash_at(Some(CrashPoint::DuringBranchCut));
    killed(&daemon);
    daemon.crash_at(None);
    let out = daemon.cli(&["branch", "create", "b1", "--allow-stale"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("earlier `branch create` or `reset` of b1 did not finish"),
        "says what it cleaned up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_branch_complete(&source, &store, "b1");
    assert_eq!(listed(&daemon), [("b1".to_owned(), "ready".to_owned())]);
}

/// Not a crash point: `branch create` killed while its request waits for the pipeline to
/// reach a commit boundary. The pipeline still cuts the branch, which nobody finishes: it gets no URL, and the next
/// `branch create` of the name drops it and makes it anew.
#[tokio::test]
async fn a_branch_create_killed_while_waiting_leaves_nothing_half_made() {
    let (source, store, daemon) = converged(None).await;
    // The applier blocks inside a source transaction: no commit boundary to cut at.
    let blocker = lock_replica_table(&store, "shop", "items").await;
    source.psql(
        "shop",
        "SET ROLE app; UPDATE items SET qty = qty + 1 WHERE id = 1;",
    );
    let mut waiting = daemon.cli_spawn(&["branch", "create", "b1"]);
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    // Claimed by the pipeline (`cutting`) before it reaches a boundary.
    while listed(&daemon) != [("b1".to_owned(), "cutting".to_owned())] {
        if let Some(status) = waiting.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(waiting.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("branch create ended ({status}) before it was killed: {err}");
        }
        if std::time::Instant::now() > deadline {
            waiting.kill().unwrap();
            let out = waiting.wait_with_output().unwrap();
            panic!(
                "the branch was never claimed: {:?}\n{}",
                listed(&daemon),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    drop(blocker);
    crate::support::eventually("the pipeline to cut the branch", || async {
        (listed(&daemon) == [("b1".to_owned(), "copied".to_owned())]).then_some(())
    })
    .await;
    let out = daemon.cli(&["branch", "url", "b1"]);
    assert_eq!(out.status.code(), Some(1), "a half-made branch has no URL");

    wait_converged(
        &source,
        "shop",
        &store,
        "shop_replica",
        &["public"],
        &daemon,
    )
    .await;
    let out = daemon.cli(&["branch", "create", "b1"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("earlier `branch create` or `reset` of b1 did not finish"));
    assert_branch_complete(&source, &store, "b1");
    assert_eq!(listed(&daemon), [("b1".to_owned(), "ready".to_owned())]);
}

/// `connector delete` killed after it dropped the slot, before the replica and the
/// bookkeeping rows: the connector stays listed (disabled), running delete again finishes
/// the job, and a connector of the same name can be created and streams afterwards.
#[tokio::test]
async fn delete_killed_after_the_slot_is_dropped_finishes_when_run_again() {
    let (source, store, mut daemon) = installation(None);
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
