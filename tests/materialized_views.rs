//! Materialized views: populated on the replica after the snapshot (a snapshot can only
//! restore them empty), and every refresh on the source followed at its place in the WAL,
//! with and without schema change capture. `daemon::content` compares them like tables.

use crate::daemon::{content, wait_replica, Daemon};
use crate::harness::Cluster;

const SCHEMA: &str = "
CREATE ROLE app_owner LOGIN PASSWORD 'owner pw';
CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';
GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
CREATE SCHEMA app AUTHORIZATION app_owner;
SET ROLE app_owner;
CREATE TABLE app.sales (id int PRIMARY KEY, region text NOT NULL, amount numeric(10,2));
INSERT INTO app.sales SELECT g, 'r' || g % 5, g * 1.5 FROM generate_series(1, 200) g;
CREATE MATERIALIZED VIEW app.totals AS
    SELECT region, sum(amount) AS total, count(*) AS n FROM app.sales GROUP BY region;
CREATE UNIQUE INDEX totals_region ON app.totals (region);
CREATE MATERIALIZED VIEW app.\"Top Region\" AS
    SELECT region FROM app.totals ORDER BY total DESC LIMIT 1;
CREATE MATERIALIZED VIEW app.later AS SELECT count(*) FROM app.sales WITH NO DATA;
GRANT USAGE ON SCHEMA app TO repl;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;
RESET ROLE;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_are_followed_without_capture() {
    follow_without_capture(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_are_followed_without_capture_or_new_tables() {
    follow_without_capture(false).await;
}

async fn follow_without_capture(include_new_tables: bool) {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SCHEMA);
    let mut daemon = Daemon::new(&store);
    // No capture objects: the role is not a superuser and nobody installed them.
    let url = source.url("repl", Some("repl pw"), "postgres");
    daemon.create_connector(&url, "shop", "app");
    if !include_new_tables {
        daemon.cli_ok(&["connector", "update", "shop", "--include-new-tables", "off"]);
    }
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    // The snapshot populated what the source has populated, and only that.
    let replica = content(&store, "shop_replica", &["app"]);
    assert!(
        replica.contains(&"app.later unpopulated".to_owned()),
        "{replica:?}"
    );
    assert_eq!(replica, content(&source, "postgres", &["app"]));

    let owner = source.url("app_owner", Some("owner pw"), "postgres");
    // The refresh sees the sales before it, not the one after it in its transaction.
    source.psql_conninfo(
        &owner,
        "INSERT INTO app.sales SELECT g, 'r' || g % 7, g FROM generate_series(201, 260) g;
         BEGIN;
         REFRESH MATERIALIZED VIEW CONCURRENTLY app.totals;
         INSERT INTO app.sales VALUES (1000, 'late', 1e6);
         COMMIT;
         UPDATE app.sales SET amount = amount + 1 WHERE id < 10;",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    // A refresh that only removes rows: wal2json leaves its DELETEs out (a view has no
    // replica identity) with a warning, which is the refresh's only trace.
    source.psql_conninfo(
        &owner,
        "DELETE FROM app.sales WHERE region = 'late';
         REFRESH MATERIALIZED VIEW CONCURRENTLY app.totals;",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("streaming"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_are_followed_with_capture() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SCHEMA);
    let mut daemon = Daemon::new(&store);
    let sql = daemon.cli_ok(&["connector", "source-sql", "--role", "repl"]);
    source.psql("postgres", &sql);
    let url = source.url("repl", Some("repl pw"), "postgres");
    daemon.create_connector(&url, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;

    let owner = source.url("app_owner", Some("owner pw"), "postgres");
    source.psql_conninfo(
        &owner,
        "INSERT INTO app.sales SELECT g, 'r' || g % 3, g FROM generate_series(201, 230) g;
         REFRESH MATERIALIZED VIEW app.totals;
         REFRESH MATERIALIZED VIEW app.\"Top Region\";
         REFRESH MATERIALIZED VIEW app.later;
         DELETE FROM app.sales WHERE id > 220;
         REFRESH MATERIALIZED VIEW CONCURRENTLY app.totals;
         DELETE FROM app.sales WHERE id > 210;",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("streaming"));

    // A branch has them too.
    daemon.cli_ok(&["branch", "create", "monday"]);
    assert_eq!(
        content(&store, "monday", &["app"]),
        content(&source, "postgres", &["app"])
    );
}
