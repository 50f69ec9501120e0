//! A source that moves to a new timeline is detected and explained, not silently followed:
//! a standby promoted after the replica had applied changes its history never received is
//! refused with the next step (a new snapshot), and that snapshot records the new timeline.
//! (Following a promoted standby whose history holds everything the replica applied needs
//! the connector's slot on it, a failover slot of PostgreSQL 17; `pipeline::timeline`'s
//! table test pins that decision.)

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;

const PASSWORD: &str = "Repl-Secret-2231";

#[tokio::test]
async fn a_source_promoted_behind_the_replica_is_refused_with_the_next_step() {
    let source = Cluster::builder()
        .hba("host all repl 127.0.0.1/32 scram-sha-256")
        .hba("host replication repl 127.0.0.1/32 scram-sha-256")
        .start();
    source.psql(
        "postgres",
        &format!(
            "CREATE SCHEMA app;
             CREATE TABLE app.accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO app.accounts SELECT g, 0 FROM generate_series(1, 100) g;
             CREATE ROLE repl LOGIN REPLICATION PASSWORD '{PASSWORD}';
             GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
             GRANT USAGE ON SCHEMA app TO repl;
             GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;"
        ),
    );
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
    let recorded = "SELECT timeline FROM tributary.connectors WHERE name = 'shop'";
    assert_eq!(store.psql("postgres", recorded), "1");

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
    assert_eq!(store.psql("postgres", recorded), "1", "not followed");

    // The next step: a new snapshot from the promoted source, on its timeline.
    daemon.cli_ok(&["connector", "retry-setup", "shop", "--resnapshot"]);
    daemon.wait_for_state("shop", "streaming").await;
    wait_replica(&standby, &store, "shop", &["app"], &daemon).await;
    assert_eq!(store.psql("postgres", recorded), "2");
}
