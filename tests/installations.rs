//! Two installations (branch stores, each with its own bookkeeping) replicating one source
//! database, as staging beside production: each has a slot of its own, named with its
//! installation id; neither ends the other's stream or drops its slot; deleting one
//! leaves the other streaming, with its slot and the shared capture objects.

use crate::daemon::{wait_converged, wait_replica, Daemon};
use crate::harness::Cluster;

/// The source's schema `app`, and a role that may replicate it without being a superuser.
const SOURCE: &str = "
CREATE SCHEMA app;
CREATE TABLE app.accounts (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO app.accounts SELECT g, 0 FROM generate_series(1, 100) g;
CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';
GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
GRANT USAGE ON SCHEMA app TO repl;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;
";

/// The installation id of the bookkeeping on `store`.
fn installation(store: &Cluster) -> String {
    store.psql("postgres", "SELECT id FROM tributary.installation")
}

/// `slot_name active` of every slot on the source, by name.
fn slots(source: &Cluster) -> Vec<String> {
    source
        .psql(
            "postgres",
            "SELECT slot_name || ' ' || active FROM pg_replication_slots ORDER BY 1",
        )
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write(source: &Cluster, round: i64) {
    source.psql(
        "postgres",
        &format!(
            "UPDATE app.accounts SET balance = balance + {round} WHERE id % 7 = {};
             INSERT INTO app.accounts VALUES ({}, {round});",
            round % 7,
            1000 + round
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_on_one_source_keep_their_own_slots() {
    let source = Cluster::start();
    let (production_store, staging_store) = (Cluster::start(), Cluster::start());
    source.psql("postgres", SOURCE);
    let mut production = Daemon::new(&production_store);
    let mut staging = Daemon::new(&staging_store);
    // The capture objects, installed once by a superuser, serve both installations.
    let sql = production.cli_ok(&["connector", "source-sql", "--role", "repl"]);
    source.psql("postgres", &sql);
    let url = source.url("repl", Some("repl pw"), "postgres");

    production.create_connector(&url, "app", "app");
    production.start();
    production.wait_for_state("app", "streaming").await;
    let production_slot = format!("tributary_{}_1_app", installation(&production_store));
    assert_eq!(slots(&source), [format!("{production_slot} true")]);

    // Staging is told about production's slot, and goes ahead with one of its own.
    let created = staging.create_connector(&url, "app", "app");
    assert!(created.contains(&production_slot), "{created}");
    assert!(created.contains("retains WAL"), "{created}");
    assert!(!created.contains("repl pw"), "{created}");
    staging.start();
    staging.wait_for_state("app", "streaming").await;
    let staging_slot = format!("tributary_{}_1_app", installation(&staging_store));
    assert_ne!(staging_slot, production_slot);
    let mut both = vec![
        format!("{production_slot} true"),
        format!("{staging_slot} true"),
    ];
    both.sort();
    assert_eq!(slots(&source), both);

    for round in 1..=20 {
        write(&source, round);
    }
    for (store, daemon) in [(&production_store, &production), (&staging_store, &staging)] {
        wait_converged(&source, "postgres", store, "app_replica", &["app"], daemon).await;
    }

    let deleted = staging.cli_ok(&["connector", "delete", "app"]);
    assert!(deleted.contains(&staging_slot), "{deleted}");
    assert_eq!(slots(&source), [format!("{production_slot} true")]);
    assert_eq!(
        source.psql(
            "postgres",
            "SELECT to_regnamespace('tributary') IS NOT NULL"
        ),
        "t",
        "the capture objects production uses are kept"
    );

    for round in 21..=40 {
        write(&source, round);
    }
    wait_replica(&source, &production_store, "app", &["app"], &production).await;
    // Production never lost its slot or its stream: one snapshot, no failure.
    assert_eq!(
        production.connector_state("app").as_deref(),
        Some("streaming")
    );
    assert_eq!(
        production_store.psql(
            "postgres",
            "SELECT count(*) FILTER (WHERE to_state = 'snapshotting') || ' '
                    || count(*) FILTER (WHERE to_state = 'failed' OR error IS NOT NULL)
               FROM tributary.state_history"
        ),
        "1 0"
    );
    assert_eq!(slots(&source), [format!("{production_slot} true")]);
    staging.terminate();
    production.terminate();
}

/// A connector whose slot is named as before installation ids (`tributary_<id>_<name>`):
/// it keeps streaming from it without a new snapshot; once the slot is ahead of its
/// replica (moved by someone else: another installation's connector of the same name and
/// id), it is not used, and `delete` keeps it, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_slot_name_keeps_streaming_and_is_left_alone_once_someone_else_moved_it() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SOURCE);
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(&source.superuser_url("postgres"), "app", "app");
    daemon.start();
    daemon.wait_for_state("app", "streaming").await;
    daemon.terminate();
    // As an older version named it: same slot (a copy at the same position), legacy name.
    let slot = format!("tributary_{}_1_app", installation(&store));
    source.psql(
        "postgres",
        &format!(
            "SELECT pg_copy_logical_replication_slot('{slot}', 'tributary_1_app');
             SELECT pg_drop_replication_slot('{slot}');"
        ),
    );
    store.psql(
        "postgres",
        "UPDATE tributary.connectors SET slot_name = 'tributary_1_app'",
    );

    for round in 1..=10 {
        write(&source, round);
    }
    daemon.start();
    wait_replica(&source, &store, "app", &["app"], &daemon).await;
    assert_eq!(slots(&source), ["tributary_1_app true"]);
    let snapshots = "SELECT count(*) FROM tributary.state_history WHERE to_state = 'snapshotting'";
    assert_eq!(store.psql("postgres", snapshots), "1");

    // Someone else confirms changes the replica does not have.
    daemon.terminate();
    write(&source, 11);
    source.psql(
        "postgres",
        "SELECT pg_replication_slot_advance('tributary_1_app', pg_current_wal_lsn())",
    );
    daemon.start();
    daemon.wait_for_state("app", "failed").await;
    let failed = daemon.connector("app").to_string();
    assert!(failed.contains("not this installation's"), "{failed}");
    assert_eq!(slots(&source), ["tributary_1_app false"]);

    let deleted = daemon.cli_ok(&["connector", "delete", "app"]);
    assert!(
        deleted.contains("kept replication slot tributary_1_app"),
        "{deleted}"
    );
    assert_eq!(slots(&source), ["tributary_1_app false"]);
    daemon.terminate();
}
