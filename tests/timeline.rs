//! A source that moves to a new timeline is detected and explained, not silently followed:
//! a standby promoted after the replica had applied changes its history never received is
//! refused with the next step (a new snapshot), and that snapshot records the new timeline;
//! a PostgreSQL 17 standby holding the connector's failover slot, promoted with everything
//! the replica applied and given to the connector as its new URL, is followed from that
//! slot without a new snapshot (`failover.rs` has the multi-host URL and a kill -9).

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;
use crate::support::repl_source;

const PASSWORD: &str = "Repl-Secret-2231";

/// A source of `major` whose role `repl` (REPLICATION, SELECT) owns nothing.
fn source(major: Option<u32>) -> Cluster {
    repl_source(
        major,
        PASSWORD,
        "CREATE TABLE app.accounts (id int PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO app.accounts SELECT g, 0 FROM generate_series(1, 100) g;",
    )
}

const RECORDED: &str = "SELECT timeline FROM tributary.connectors WHERE name = 'shop'";

#[tokio::test]
async fn a_source_promoted_behind_the_replica_is_refused_with_the_next_step() {
    let source = source(None);
    // A standby that stops receiving before the connector exists: its history ends
    // before anything the replica will apply.
    let standby = source.start_standby();
    standby.stop();

    let store = Cluster::start();
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(
        &source.url("repl", Some(PASSWORD), "postgres"),
        "shop",
        "app",
    );
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    source.psql(
        "postgres",
        "INSERT INTO app.accounts SELECT g, g FROM generate_series(101, 150) g;",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    assert_eq!(store.psql("postgres", RECORDED), "1");

    // The primary is lost; the standby is promoted (same system, timeline 2) and the
    // connector pointed at it, as a failover would.
    source.stop();
    standby.start_again();
    standby.promote();
    assert_eq!(
        standby.psql(
            "postgres",
            "SELECT timeline_id FROM pg_control_checkpoint()"
        ),
        "2"
    );
    let promoted = standby.url("repl", Some(PASSWORD), "postgres");
    daemon.cli_ok(&["connector", "update", "shop", "--url", &promoted]);

    daemon.wait_for_state("shop", "failed").await;
    let failed = daemon.connector("shop");
    let error = failed["last_error"].as_str().unwrap_or_default();
    let next_step = failed["next_step"].as_str().unwrap_or_default();
    assert!(
        error.contains("moved from timeline 1 to timeline 2")
            && error.contains("its history left timeline 1 at"),
        "{failed}"
    );
    assert!(
        next_step.contains("tributary connector retry-setup shop --resnapshot"),
        "{failed}"
    );
    assert_eq!(store.psql("postgres", RECORDED), "1", "not followed");

    // The next step: a new snapshot from the promoted source, on its timeline.
    daemon.cli_ok(&["connector", "retry-setup", "shop", "--resnapshot"]);
    daemon.wait_for_state("shop", "streaming").await;
    wait_replica(&standby, &store, "shop", &["app"], &daemon).await;
    assert_eq!(store.psql("postgres", RECORDED), "2");
}

#[tokio::test]
async fn a_standby_promoted_with_the_failover_slot_is_followed_without_a_new_snapshot() {
    let source = source(Some(17));
    source.psql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('standby');",
    );
    // The standby synchronizes failover slots (it needs a database in its conninfo); the
    // primary sends logical changes only once the standby has them. (Set after the base
    // backup, which would copy it: the promoted standby has no slot of that name.)
    let standby = source.start_standby();
    source.psql(
        "postgres",
        "ALTER SYSTEM SET synchronized_standby_slots = 'standby';
         SELECT pg_reload_conf();",
    );
    let conninfo = standby.psql("postgres", "SHOW primary_conninfo");
    standby.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET primary_conninfo = '{} dbname=postgres';
             ALTER SYSTEM SET primary_slot_name = 'standby';
             ALTER SYSTEM SET hot_standby_feedback = on;
             ALTER SYSTEM SET sync_replication_slots = on;
             SELECT pg_reload_conf();",
            conninfo.replace('\'', "''")
        ),
    );

    let store = Cluster::builder().major(17).start();
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY_PG_BINDIR",
        &source.bindir().display().to_string(),
    );
    daemon.create_connector(
        &source.url("repl", Some(PASSWORD), "postgres"),
        "shop",
        "app",
    );
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    // tributary creates its slot as a failover slot (PostgreSQL 17).
    let slot = store.psql(
        "postgres",
        "SELECT slot_name FROM tributary.connectors WHERE name = 'shop'",
    );
    assert_eq!(
        source.psql(
            "postgres",
            &format!("SELECT failover FROM pg_replication_slots WHERE slot_name = '{slot}'")
        ),
        "t"
    );
    source.psql(
        "postgres",
        "INSERT INTO app.accounts SELECT g, g FROM generate_series(101, 150) g;",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    let synced = format!(
        "SELECT count(*) FROM pg_replication_slots
          WHERE slot_name = '{slot}' AND synced AND NOT temporary"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while standby.psql("postgres", &synced) != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never synchronized"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(store.psql("postgres", RECORDED), "1");

    source.stop();
    standby.promote();
    let promoted = standby.url("repl", Some(PASSWORD), "postgres");
    daemon.cli_ok(&["connector", "update", "shop", "--url", &promoted]);
    standby.psql(
        "postgres",
        "UPDATE app.accounts SET balance = balance + 1 WHERE id <= 120;",
    );
    wait_replica(&standby, &store, "shop", &["app"], &daemon).await;
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("streaming"));
    assert_eq!(store.psql("postgres", RECORDED), "2");
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM tributary.state_history WHERE to_state = 'snapshotting'"
        ),
        "1",
        "no new snapshot"
    );
}
