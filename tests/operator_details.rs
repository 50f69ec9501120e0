//! What one operator ran into (issue 20): dashed connector names, server notices in the
//! log, preflight with replica identity decisions, configuration mistakes.

use crate::daemon::{wait_converged, Daemon};
use crate::harness::Cluster;

/// `prod-db` is a connector name: its slot and replica database carry it as `prod_db`, so
/// `prod_db` is then refused as a conflict. The daemon, logging at its default level,
/// logs no server notice ("… does not exist, skipping" from its own `DROP … IF EXISTS`).
#[tokio::test]
async fn dashed_connector_names_create_stream_and_branch() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.create_database("shop");
    source.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items VALUES (1, 'before');",
    );
    let mut daemon = Daemon::new(&store);
    // The default level of `log.level`.
    daemon.set("RUST_LOG", "info");
    let url = source.superuser_url("shop");
    let out = daemon.create_connector(&url, "prod-db", "public");
    assert!(out.contains("replica database: prod_db_replica"), "{out}");
    assert!(out.contains("_prod_db"), "the slot carries prod_db: {out}");

    let conflict = daemon.cli(&[
        "connector",
        "create",
        "postgresql",
        &url,
        "--name",
        "prod_db",
    ]);
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert_eq!(conflict.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "connector prod_db would share its replica database prod_db_replica with \
             connector prod-db"
        ),
        "{stderr}"
    );

    daemon.start();
    daemon.wait_for_state("prod-db", "streaming").await;
    source.psql("shop", "INSERT INTO items VALUES (2, 'streamed')");
    wait_converged(
        &source,
        "shop",
        &store,
        "prod_db_replica",
        &["public"],
        &daemon,
    )
    .await;
    let out = daemon.cli_ok(&["branch", "create", "feature", "--connector", "prod-db"]);
    assert!(out.contains("of connector prod-db"), "{out}");
    assert_eq!(store.psql("feature", "SELECT count(*) FROM items"), "2");

    let log = std::fs::read_to_string(daemon.log_path()).unwrap();
    assert!(
        log.contains("dropped the database"),
        "a DROP … IF EXISTS ran:\n{log}"
    );
    assert!(!log.contains("skipping"), "{log}");
}
