//! The connector lifecycle after `create`, against real servers: `retry-setup` (after a
//! key was added, after the slot was lost, while setup runs), `update`, `switch`, and
//! `delete` leaving no slot behind.

use std::process::Output;

use crate::daemon::{content, wait_converged, Daemon};
use crate::harness::Cluster;
use crate::support::{eventually, wal_removed_as_told};

/// A source database `shop`: a keyed table and a keyless one, both with rows.
fn shop(cluster: &Cluster) {
    cluster.create_database("shop");
    cluster.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         CREATE TABLE keyless (a int, b text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g;
         INSERT INTO keyless SELECT g, 'row ' || g FROM generate_series(1, 20) g;",
    );
}

/// `connector create` for `shop`, excluding the keyless table.
fn create(daemon: &Daemon, source: &Cluster, name: &str, db: &str) {
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url(db),
        "--name",
        name,
        "--accept-replica-identity-defaults",
    ]);
}

/// `create`, then a daemon that snapshots `shop` and streams it.
async fn stream_shop(daemon: &mut Daemon, source: &Cluster) {
    create(daemon, source, "shop", "shop");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
}

fn text(output: &Output) -> (Option<i32>, String, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn exists(cluster: &Cluster, db: &str, table: &str) -> bool {
    cluster.psql(db, &format!("SELECT to_regclass('{table}') IS NOT NULL")) == "t"
}

fn slots(source: &Cluster) -> String {
    source.psql(
        "postgres",
        "SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') FROM pg_replication_slots",
    )
}

/// Waits until the replica equals the source in `schemas`, but for `public.keyless`
/// (excluded).
async fn wait_equal(source: &Cluster, store: &Cluster, schemas: &[&str]) {
    let expected: Vec<String> = content(source, "shop", schemas)
        .into_iter()
        .filter(|l| !l.starts_with("public.keyless "))
        .collect();
    eventually("the replica to equal the source", || async {
        (content(store, "shop_replica", schemas) == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn retry_setup_after_adding_a_key_replicates_the_table() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = Daemon::new(&store);
    let dir = tempfile::tempdir().unwrap();
    let decisions = dir.path().join("decisions.json");
    std::fs::write(&decisions, r#"{"public.keyless": "add_pk"}"#).unwrap();
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("shop"),
        "--replica-identity-decisions",
        decisions.to_str().unwrap(),
    ]);
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    assert!(!exists(&store, "shop_replica", "public.keyless"));
    let slot = slots(&source);

    // Nothing has changed: nothing to do.
    let healthy = daemon.cli_ok(&["connector", "retry-setup", "shop"]);
    assert!(healthy.contains("is healthy"), "{healthy}");

    source.psql("shop", "ALTER TABLE keyless ADD PRIMARY KEY (a)");
    let out = daemon.cli_ok(&["connector", "retry-setup", "shop", "--wait"]);
    // Only that table is copied: the replica and its other tables are kept.
    assert!(
        out.contains("the replica is kept")
            && out.contains("1 table to replicate that the snapshot left out: public.keyless"),
        "{out}"
    );
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT string_agg(table_name || ':' || copies, ',' ORDER BY table_name) \
               FROM tributary.table_sync WHERE table_name IN ('items', 'keyless')"
        ),
        "items:1,keyless:1"
    );
    assert!(out.contains("is streaming"), "{out}");
    // The same connector, under the same slot name, now with the table.
    assert_eq!(slots(&source), slot);
    assert_eq!(
        daemon.connectors()[0]["excluded_tables"],
        serde_json::json!([])
    );
    source.psql(
        "shop",
        "UPDATE keyless SET b = 'changed' WHERE a <= 5; DELETE FROM keyless WHERE a = 20;
         INSERT INTO items VALUES (51, 'late');",
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
    daemon.terminate();
}

#[tokio::test]
async fn a_missing_slot_fails_the_connector_until_retry_setup_takes_a_new_snapshot() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = Daemon::new(&store);
    stream_shop(&mut daemon, &source).await;
    daemon.terminate();

    // The slot goes away while the daemon is down, and the source moves on.
    let slot = slots(&source);
    source.psql(
        "shop",
        &format!("SELECT pg_drop_replication_slot('{slot}')"),
    );
    source.psql("shop", "INSERT INTO items VALUES (100, 'while down')");
    daemon.start();
    daemon.wait_for_state("shop", "failed").await;
    let listed = daemon.connectors();
    let next = listed[0]["next_step"].as_str().unwrap_or_default();
    assert!(
        next.contains("tributary connector retry-setup shop"),
        "{listed:?}"
    );
    assert_eq!(listed[0]["ready"], serde_json::json!(false));

    // Asked while no daemon runs: recorded, and --wait says that nothing will happen yet.
    daemon.terminate();
    let (code, out, err) = text(&daemon.cli(&["connector", "retry-setup", "shop", "--wait"]));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!("replication slot {slot} is missing on the source")),
        "{out}"
    );
    assert!(err.contains("no daemon runs on this bookkeeping"), "{err}");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    assert_eq!(slots(&source), slot);
    source.psql("shop", "UPDATE items SET name = 'after' WHERE id <= 3");
    wait_equal(&source, &store, &["public"]).await;
    assert_eq!(daemon.connectors()[0]["ready"], serde_json::json!(true));
    daemon.terminate();
}

#[tokio::test]
async fn retry_setup_joins_a_setup_in_progress_and_refuses_new_decisions() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = Daemon::new(&store);
    create(&daemon, &source, "shop", "shop");

    // pg_dump waits for this lock: the snapshot stays in progress while it is held.
    let mut holder = source.connect("shop").await;
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    daemon.start();
    daemon.wait_for_state("shop", "snapshotting").await;

    let (code, out, _) = text(&daemon.cli(&["connector", "retry-setup", "shop"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("already in progress (snapshotting"), "{out}");
    let (code, _, err) = text(&daemon.cli(&[
        "connector",
        "retry-setup",
        "shop",
        "--accept-replica-identity-defaults",
    ]));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot change while it runs. Wait for it to finish"),
        "{err}"
    );

    lock.rollback().await.unwrap();
    daemon.wait_for_state("shop", "streaming").await;
    // The connector's slot and no other: the joined setup started nothing of its own.
    let slot = slots(&source);
    assert!(
        slot.starts_with("tributary_") && !slot.contains(','),
        "{slot}"
    );
    daemon.terminate();
}

#[tokio::test]
async fn update_switch_and_delete() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    source.create_database("other");
    source.psql("other", "CREATE TABLE t (id int PRIMARY KEY)");
    let mut daemon = Daemon::new(&store);
    create(&daemon, &source, "shop", "shop");
    create(&daemon, &source, "other", "other");

    // The first connector created is the active one; switch moves the mark.
    let active = |daemon: &Daemon| -> Vec<String> {
        daemon
            .connectors()
            .iter()
            .filter(|c| c["active"] == serde_json::json!(true))
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(active(&daemon), ["shop"]);
    let out = daemon.cli_ok(&["connector", "switch", "other"]);
    assert!(out.contains("Switched from shop to other"), "{out}");
    assert_eq!(active(&daemon), ["other"]);
    let (code, _, err) = text(&daemon.cli(&["connector", "switch", "nope"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("no connector named nope"), "{err}");

    daemon.cli_ok(&[
        "connector",
        "update",
        "shop",
        "--drop-extensions",
        "pgmq, vault,pgmq",
    ]);
    let shop_view = |daemon: &Daemon| daemon.connector("shop");
    assert_eq!(
        shop_view(&daemon)["drop_extensions"],
        serde_json::json!(["pgmq", "vault"])
    );
    daemon.cli_ok(&["connector", "update", "shop", "--drop-extensions", ""]);
    assert_eq!(shop_view(&daemon)["drop_extensions"], serde_json::json!([]));
    let (code, _, err) = text(&daemon.cli(&["connector", "update", "shop"]));
    assert_eq!(code, Some(2));
    assert!(err.contains("nothing to update"), "{err}");

    // With new tables off, a table created later is ignored and streaming goes on.
    daemon.cli_ok(&["connector", "update", "shop", "--include-new-tables", "off"]);
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    source.psql(
        "shop",
        "CREATE TABLE later (id int PRIMARY KEY); INSERT INTO later VALUES (1);
         INSERT INTO items VALUES (60, 'after the new table');",
    );
    eventually("the row after the new table", || async {
        (store.psql("shop_replica", "SELECT count(*) FROM items WHERE id = 60") == "1")
            .then_some(())
    })
    .await;
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("streaming"));

    // Delete while the daemon streams: the slot is released, dropped and checked gone.
    daemon.wait_for_state("other", "streaming").await;
    let before = slots(&source);
    assert_eq!(before.split(',').count(), 2, "{before}");
    let out = daemon.cli_ok(&["connector", "delete", "shop"]);
    assert!(out.contains("dropped on the source (checked)"), "{out}");
    let after = slots(&source);
    assert_eq!(after.split(',').count(), 1, "{after}");
    assert!(after.contains("other"), "{after}");
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'shop_replica'"
        ),
        "0"
    );
    assert_eq!(daemon.connectors().len(), 1);
    assert_eq!(
        daemon.connector_state("other").as_deref(),
        Some("streaming")
    );
    daemon.terminate();

    // An unreachable source: nothing is deleted without --force.
    source.stop();
    let (code, _, err) = text(&daemon.cli(&["connector", "delete", "other"]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Nothing was deleted"), "{err}");
    assert_eq!(daemon.connectors().len(), 1);
    assert_eq!(daemon.connectors()[0]["enabled"], serde_json::json!(true));
    let (code, out, err) = text(&daemon.cli(&["connector", "delete", "other", "--force"]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("pg_drop_replication_slot"), "{out}");
    assert!(daemon.connectors().is_empty());
}

#[tokio::test]
async fn update_schemas_copies_only_the_new_schema_then_streams_it() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    source.psql(
        "shop",
        "CREATE SCHEMA billing;
         CREATE TABLE billing.invoices (id int PRIMARY KEY, total numeric);
         INSERT INTO billing.invoices SELECT g, g * 1.5 FROM generate_series(1, 30) g;
         CREATE TABLE billing.lines (id int PRIMARY KEY, item int REFERENCES public.items (id));
         INSERT INTO billing.lines SELECT g, g FROM generate_series(1, 5) g;",
    );
    let mut daemon = Daemon::new(&store);
    stream_shop(&mut daemon, &source).await;
    assert!(!exists(&store, "shop_replica", "billing.invoices"));
    let copies = || {
        store.psql(
            "shop_replica",
            "SELECT string_agg(schema_name || '.' || table_name || ' ' || copied_lsn || ' ' \
                    || copies, ', ' ORDER BY schema_name, table_name) FROM tributary.table_sync",
        )
    };
    let public_before = copies();
    let slot = daemon.connectors()[0]["slot_name"].clone();

    // wal2json before 2.6 would send a NaN in billing.invoices.total as null: the new
    // schema needs that decision, and nothing changes without it.
    let args = ["connector", "update", "shop", "--schemas", "public,billing"];
    let url = source.superuser_url("shop");
    let (refused, nan_line) = if daemon.wal2json_sends_nan(&url, "billing") {
        (None, vec![])
    } else {
        (Some(daemon.cli(&args)), vec!["--nan-as-null", "accept"])
    };
    if let Some(refused) = refused {
        let (code, _, err) = text(&refused);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("NaN") && err.contains("billing.invoices.total"),
            "{err}"
        );
        assert_eq!(
            daemon.connectors()[0]["schemas"],
            serde_json::json!(["public"])
        );
    }
    let out = daemon.cli_ok(&[&args[..], &nan_line, &["--wait"]].concat());
    assert!(
        out.contains("the schemas change from public to public, billing"),
        "{out}"
    );
    assert!(out.contains("the replica is kept"), "{out}");
    // The replica was kept: the public tables were not copied again, the slot is the same,
    // and the new schema's tables were copied once, with their foreign key into public.
    assert_eq!(daemon.connectors()[0]["slot_name"], slot);
    let after = copies();
    assert!(after.starts_with("billing.invoices "), "{after}");
    assert!(after.contains("billing.lines "), "{after}");
    assert!(
        after.ends_with(&public_before),
        "{after}\nbefore: {public_before}"
    );
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT count(*) FROM pg_constraint WHERE conname = 'lines_item_fkey'"
        ),
        "1"
    );
    assert_eq!(
        daemon.connectors()[0]["schemas"],
        serde_json::json!(["public", "billing"])
    );
    source.psql(
        "shop",
        "INSERT INTO billing.invoices VALUES (31, 99.99);
         UPDATE billing.invoices SET total = 0 WHERE id <= 3;
         INSERT INTO items VALUES (70, 'after');",
    );
    wait_equal(&source, &store, &["public", "billing"]).await;
    daemon.terminate();
}

#[tokio::test]
async fn a_slot_the_source_invalidated_is_listed_as_lost_and_retry_setup_rebuilds() {
    let source = Cluster::builder()
        .setting("max_slot_wal_keep_size", "1MB")
        .setting("max_wal_size", "32MB")
        .setting("min_wal_size", "32MB")
        .start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = Daemon::new(&store);
    stream_shop(&mut daemon, &source).await;
    daemon.terminate();

    // Past max_slot_wal_keep_size while the daemon is down: the checkpoint removes the WAL
    // the slot still needs.
    for _ in 0..4 {
        source.psql(
            "shop",
            "INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(1000, 20000) g
               ON CONFLICT (id) DO UPDATE SET name = excluded.name || '!';
             SELECT pg_switch_wal();",
        );
    }
    source.psql("shop", "CHECKPOINT");
    assert_eq!(
        source.psql("postgres", "SELECT wal_status FROM pg_replication_slots"),
        "lost"
    );
    // From 17 on the source says why.
    let how = wal_removed_as_told(source.major());
    let listed = daemon.cli_ok(&["connector", "list"]);
    assert!(
        listed.contains(&format!(
            "warning: slot was invalidated by the source ({how}): run `tributary connector \
             retry-setup shop` for a new snapshot; then raise max_slot_wal_keep_size"
        )),
        "{listed}"
    );
    assert_eq!(
        daemon.connectors()[0]["slot"]["wal_status"],
        serde_json::json!("lost")
    );

    daemon.start();
    daemon.wait_for_state("shop", "failed").await;
    let out = daemon.cli_ok(&["connector", "retry-setup", "shop", "--wait"]);
    assert!(
        out.contains(&format!("was invalidated by the source ({how})")),
        "{out}"
    );
    assert_eq!(
        source.psql("postgres", "SELECT wal_status FROM pg_replication_slots"),
        "reserved"
    );
    wait_equal(&source, &store, &["public"]).await;
    daemon.terminate();
}

#[tokio::test]
async fn an_excluded_table_stays_excluded_after_it_gets_a_key_until_the_decision_changes() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = Daemon::new(&store);
    stream_shop(&mut daemon, &source).await;

    source.psql("shop", "ALTER TABLE keyless ADD PRIMARY KEY (a)");
    let out = daemon.cli_ok(&["connector", "retry-setup", "shop"]);
    assert!(
        out.contains(
            "excluded by decision although they have a usable replica identity: public.keyless"
        ) && out.contains("is healthy"),
        "{out}"
    );
    assert!(!exists(&store, "shop_replica", "public.keyless"));

    // A decisions file without it: the table is replicated from a new snapshot.
    let dir = tempfile::tempdir().unwrap();
    let decisions = dir.path().join("decisions.json");
    std::fs::write(&decisions, "{}").unwrap();
    let out = daemon.cli_ok(&[
        "connector",
        "retry-setup",
        "shop",
        "--replica-identity-decisions",
        decisions.to_str().unwrap(),
        "--wait",
    ]);
    assert!(out.contains("public.keyless"), "{out}");
    wait_converged(
        &source,
        "shop",
        &store,
        "shop_replica",
        &["public"],
        &daemon,
    )
    .await;
    daemon.terminate();
}
