//! `tributary branch …` against real servers: branches cut mid-stream are consistent
//! (no torn transaction), isolated, have working sequences; names are checked and the
//! replica and control databases protected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::daemon::{wait_converged, Daemon};
use crate::harness::Cluster;

const ACCOUNTS: i64 = 100;
const OPENING_BALANCE: i64 = 1_000;

/// A source `bank`: accounts whose total never changes, the transfers between them, and
/// a table with a serial key.
fn bank(cluster: &Cluster) {
    cluster.create_database("bank");
    cluster.psql(
        "bank",
        &format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE transfers (id bigserial PRIMARY KEY, src int NOT NULL,
                                     dst int NOT NULL, amount bigint NOT NULL);
             CREATE TABLE events (id serial PRIMARY KEY, note text);
             INSERT INTO accounts SELECT g, {OPENING_BALANCE} FROM generate_series(1, {ACCOUNTS}) g;
             INSERT INTO events (note) SELECT 'before' FROM generate_series(1, 50);"
        ),
    );
}

fn create_connector(daemon: &Daemon, source: &Cluster) {
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("bank"),
        "--name",
        "bank",
    ]);
}

/// Moves money between accounts, one transaction per transfer on one session (so
/// transfer ids follow commit order), until `stop`. Returns the number of transfers.
async fn transfer_until(mut client: tokio_postgres::Client, stop: Arc<AtomicBool>) -> u64 {
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = done as i64;
        let (src, dst, amount) = (n % ACCOUNTS + 1, (n * 7 + 3) % ACCOUNTS + 1, n % 13 + 1);
        let tx = client.transaction().await.unwrap();
        tx.execute(
            "UPDATE accounts SET balance = balance - $2 WHERE id = $1",
            &[&(src as i32), &amount],
        )
        .await
        .unwrap();
        tx.execute(
            "UPDATE accounts SET balance = balance + $2 WHERE id = $1",
            &[&(dst as i32), &amount],
        )
        .await
        .unwrap();
        tx.execute(
            "INSERT INTO transfers (src, dst, amount) VALUES ($1, $2, $3)",
            &[&(src as i32), &(dst as i32), &amount],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        done += 1;
    }
    done
}

/// The branch holds exactly the transfers 1..k of the source's commit order, and every
/// balance is the opening balance moved by exactly those transfers.
#[track_caller]
fn assert_consistent(store: &Cluster, db: &str) -> i64 {
    assert_eq!(
        store.psql(db, "SELECT sum(balance) FROM accounts"),
        (ACCOUNTS * OPENING_BALANCE).to_string(),
        "the total of branch {db}"
    );
    let prefix = store.psql(
        db,
        "SELECT count(*) = coalesce(max(id), 0) AND count(*) = count(DISTINCT id) FROM transfers",
    );
    assert_eq!(prefix, "t", "branch {db} holds a gap in the transfers");
    let balanced = store.psql(
        db,
        &format!(
            "SELECT bool_and(a.balance = {OPENING_BALANCE} - coalesce(o.s, 0) + coalesce(i.s, 0))
               FROM accounts a
               LEFT JOIN (SELECT src, sum(amount) s FROM transfers GROUP BY src) o ON o.src = a.id
               LEFT JOIN (SELECT dst, sum(amount) s FROM transfers GROUP BY dst) i ON i.dst = a.id"
        ),
    );
    assert_eq!(balanced, "t", "branch {db}: a transaction is torn");
    store
        .psql(db, "SELECT count(*) FROM transfers")
        .parse()
        .unwrap()
}

// Multi-threaded: the workload must go on while the test blocks on `branch create`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_cut_mid_stream_are_consistent_isolated_and_have_sequences() {
    let source = Cluster::start();
    let store = Cluster::start();
    bank(&source);
    source.psql(
        "bank",
        "INSERT INTO events (note) SELECT 'after' FROM generate_series(1, 50)",
    );
    let mut daemon = Daemon::new(&store);
    create_connector(&daemon, &source);
    daemon.start();
    daemon.wait_for_state("bank", "streaming").await;
    source.psql(
        "bank",
        "INSERT INTO events (note) SELECT 'streamed' FROM generate_series(1, 50)",
    );

    let stop = Arc::new(AtomicBool::new(false));
    let workload = tokio::spawn(transfer_until(source.connect("bank").await, stop.clone()));

    let mut seen = Vec::new();
    for i in 1..=3 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let name = format!("dev_{i}");
        let out = daemon.cli_ok(&["branch", "create", &name]);
        assert!(
            out.contains(&format!("✓ Branch {name} of connector bank at source LSN")),
            "{out}"
        );
        // The URL logs in as the branch's own role (trusted here: branch_roles.rs logs in
        // with the password).
        assert!(
            out.contains(&format!(
                "psql: psql 'postgresql://tributary_branch_{name}:"
            )) && out.contains(&format!("@127.0.0.1:{}/{name}?", store.port())),
            "{out}"
        );
        assert_eq!(
            store.psql(
                &name,
                "SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database()"
            ),
            format!("tributary_branch_{name}")
        );
        seen.push(assert_consistent(&store, &name));
        // The LSN recorded in the bookkeeping is the one recorded in the branch itself.
        let listed = daemon.cli_ok(&["branch", "list", "--format", "json"]);
        let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
        let entry = listed.iter().find(|b| b["name"] == name.as_str()).unwrap();
        assert_eq!(entry["connector"], "bank");
        assert_eq!(entry["database"], name.as_str());
        assert_eq!(entry["state"], "ready");
        assert_eq!(
            entry["lsn"].as_str().unwrap(),
            store.psql(&name, "SELECT lsn FROM tributary.branch")
        );
        assert_eq!(
            store.psql(
                &name,
                "SELECT size_bytes > 0 AND created_at <= now() FROM tributary.branch"
            ),
            "t"
        );
        assert!(entry["size_bytes"].as_i64().unwrap() > 0, "{entry}");
    }
    stop.store(true, Ordering::Relaxed);
    let transfers = workload.await.unwrap();
    // Cut by the running pipeline (at a commit boundary), not by the command.
    let log = std::fs::read_to_string(daemon.log_path()).unwrap();
    assert_eq!(log.matches("branch cut").count(), 3, "{log}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(
        seen[2] > 0 && (seen[2] as u64) < transfers,
        "{seen:?} of {transfers}"
    );

    // Isolation: writes to a branch reach neither the replica nor the source, and the
    // pipeline has gone on streaming through the cuts.
    store.psql(
        "dev_1",
        "UPDATE accounts SET balance = 0; DELETE FROM transfers",
    );
    wait_converged(
        &source,
        "bank",
        &store,
        "bank_replica",
        &["public"],
        &daemon,
    )
    .await;
    assert_eq!(
        source.psql("bank", "SELECT sum(balance) FROM accounts"),
        (ACCOUNTS * OPENING_BALANCE).to_string()
    );
    assert_eq!(assert_consistent(&store, "dev_2"), seen[1], "dev_2 moved");

    // Sequences: inserts with default ids on a branch do not collide with copied rows.
    store.psql(
        "dev_3",
        "INSERT INTO events (note) SELECT 'branch' FROM generate_series(1, 1000);
         INSERT INTO transfers (src, dst, amount) SELECT 1, 2, 0 FROM generate_series(1, 1000);",
    );
    assert_eq!(store.psql("dev_3", "SELECT count(*) FROM events"), "1150");
    daemon.terminate();
}

fn run(daemon: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let output = daemon.cli(args);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn names_are_checked_and_branches_deleted_reset_and_kept() {
    let source = Cluster::start();
    let store = Cluster::start();
    bank(&source);
    source.psql("bank", "CREATE EXTENSION pgcrypto");
    let mut daemon = Daemon::new(&store);
    create_connector(&daemon, &source);
    daemon.cli_ok(&[
        "connector",
        "update",
        "bank",
        "--drop-extensions",
        "pgcrypto",
    ]);

    // Before the first snapshot there is nothing to branch from, stale or not.
    let (code, _, err) = run(&daemon, &["branch", "create", "early"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("connector bank is not streaming under a live daemon (no daemon runs it"),
        "{err}"
    );
    let (code, _, err) = run(&daemon, &["branch", "create", "early", "--allow-stale"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not ready to branch"), "{err}");

    daemon.start();
    daemon.wait_for_state("bank", "streaming").await;
    for (name, code, says) in [
        ("line\nbreak", 2, "invalid branch name"),
        (&"x".repeat(64), 2, "invalid branch name"),
        ("bank_replica", 2, "reserved"),
        ("postgres", 2, "reserved"),
        ("later_replica", 2, "reserved"),
        ("template1", 2, "reserved"),
    ] {
        let (got, _, err) = run(&daemon, &["branch", "create", name]);
        assert_eq!(got, Some(code), "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
    }
    store.create_database("taken");
    let (code, _, err) = run(&daemon, &["branch", "create", "taken"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("a database named taken exists"), "{err}");

    let out = daemon.cli_ok(&["branch", "create", "feature"]);
    assert!(out.contains("/feature?sslmode="), "{out}");
    assert_eq!(
        store.psql(
            "feature",
            "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'"
        ),
        "0",
        "drop-extensions leaves pgcrypto out of branches"
    );
    assert_eq!(
        store.psql(
            "bank_replica",
            "SELECT count(*) FROM pg_extension WHERE extname = 'pgcrypto'"
        ),
        "1"
    );
    let (code, _, err) = run(&daemon, &["branch", "create", "feature"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("branch feature exists"), "{err}");

    // Not a branch: never deleted or reset through these commands.
    for name in ["bank_replica", "postgres", "taken"] {
        let (code, _, err) = run(&daemon, &["branch", "delete", name, "--force"]);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(&format!("no branch named {name}")), "{err}");
    }
    assert_eq!(store.psql("bank_replica", "SELECT 1"), "1");

    // Reset: the branch follows the replica again; a connected client blocks it.
    source.psql("bank", "INSERT INTO events (note) VALUES ('after feature')");
    wait_converged(
        &source,
        "bank",
        &store,
        "bank_replica",
        &["public"],
        &daemon,
    )
    .await;
    let mut client = store.connect("feature").await;
    let (code, _, err) = run(&daemon, &["branch", "reset", "feature"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("1 client session is connected to branch feature"),
        "{err}"
    );
    let out = daemon.cli_ok(&["branch", "reset", "feature", "--force"]);
    assert!(out.contains("ended 1 client session"), "{out}");
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the session was ended"
    );
    assert_eq!(
        store.psql(
            "feature",
            "SELECT count(*) FROM events WHERE note = 'after feature'"
        ),
        "1"
    );
    client = store.connect("feature").await;
    let (code, _, _) = run(&daemon, &["branch", "delete", "feature"]);
    assert_eq!(code, Some(1));
    drop(client);
    daemon.cli_ok(&["branch", "create", "kept"]);

    // Without a daemon the command cuts the branch itself, from the replica as it is.
    daemon.terminate();
    let out = daemon.cli_ok(&["branch", "create", "offline", "--allow-stale"]);
    assert!(out.contains("✓ Branch offline"), "{out}");
    assert_eq!(
        store.psql("offline", "SELECT lsn FROM tributary.branch"),
        store.psql("bank_replica", "SELECT lsn FROM tributary.applied")
    );

    eventually_deleted(&daemon, "feature").await;
    let out = daemon.cli_ok(&["connector", "delete", "bank"]);
    assert!(out.contains("Kept 2 branches: kept, offline"), "{out}");
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&daemon.cli_ok(&["branch", "list", "--format", "json"])).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(store.psql("kept", "SELECT count(*) > 0 FROM accounts"), "t");
}

/// `branch delete` once the last client has gone (the server ends the session a moment
/// after the client closes it).
async fn eventually_deleted(daemon: &Daemon, name: &str) {
    crate::support::eventually("the branch to be deleted", || async {
        (run(daemon, &["branch", "delete", name]).0 == Some(0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_cut_left_half_done_is_cleaned_up_and_done_again() {
    let source = Cluster::start();
    let store = Cluster::start();
    bank(&source);
    let mut daemon = Daemon::new(&store);
    create_connector(&daemon, &source);
    daemon.start();
    daemon.wait_for_state("bank", "streaming").await;

    // As a pipeline that died in the middle of a copy leaves it: claimed, and a database
    // with part of the data.
    store.create_database("half");
    store.psql("half", "CREATE TABLE leftover (x int)");
    store.psql(
        "postgres",
        "INSERT INTO tributary.branches (name, connector_id, connector_name, state)
         SELECT 'half', id, name, 'cutting' FROM tributary.connectors;
         SELECT pg_notify('tributary_branches', id::text) FROM tributary.connectors;",
    );
    crate::support::eventually("the cut to be done again", || async {
        (store.psql(
            "postgres",
            "SELECT state FROM tributary.branches WHERE name = 'half'",
        ) == "copied")
            .then_some(())
    })
    .await;
    assert_eq!(
        store.psql(
            "half",
            "SELECT to_regclass('leftover') IS NULL AND to_regclass('accounts') IS NOT NULL"
        ),
        "t"
    );
    assert_eq!(
        store.psql("half", "SELECT sum(balance) FROM accounts"),
        (ACCOUNTS * OPENING_BALANCE).to_string()
    );
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_are_said_to_stay_behind_by_preflight_and_each_branch() {
    let source = Cluster::start();
    let store = Cluster::start();
    bank(&source);
    source.psql(
        "bank",
        "CREATE TABLE documents (id int PRIMARY KEY, body oid);
         INSERT INTO documents SELECT g, lo_from_bytea(0, convert_to('page ' || g, 'UTF8')) FROM generate_series(1, 3) g;",
    );
    let mut daemon = Daemon::new(&store);
    let preflight = daemon.cli(&[
        "connector",
        "preflight",
        "postgresql",
        &source.superuser_url("bank"),
    ]);
    let preflight = String::from_utf8_lossy(&preflight.stdout);
    assert!(
        preflight.contains("3 large objects in database bank, not replicated"),
        "{preflight}"
    );
    create_connector(&daemon, &source);
    daemon.start();
    daemon.wait_for_state("bank", "streaming").await;
    let out = daemon.cli_ok(&["branch", "create", "docs"]);
    assert!(
        out.contains("the source has 3 large objects, which are not replicated"),
        "{out}"
    );
    assert_eq!(
        store.psql(
            "docs",
            "SELECT source_large_objects_missing || ' ' || (SELECT count(*) FROM pg_largeobject_metadata)
               FROM tributary.branch"
        ),
        "3 0"
    );
}
