//! No silent difference: a change the source does not send (wal2json drops UPDATEs and
//! DELETEs of a table without a usable replica identity with only a WARNING; unlogged
//! tables are not in the WAL at all) stops the connector with the table, the cause and
//! the fix. The application's owner role (no superuser) runs the DDL and DML; tributary's
//! source role has REPLICATION and SELECT only.

use crate::daemon::Daemon;
use crate::harness::Cluster;

/// The application's role `app` owns schema `app` of database `db` (created unless it is
/// `postgres`: one connector per source database); `repl` may replicate and read. Their
/// URLs.
fn app_database(source: &Cluster, db: &str) -> (String, String) {
    if source.psql(
        "postgres",
        "SELECT count(*) FROM pg_roles WHERE rolname = 'app'",
    ) == "0"
    {
        source.psql(
            "postgres",
            "CREATE ROLE app LOGIN PASSWORD 'app pw';
             CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';",
        );
    }
    if db != "postgres" {
        source.create_database(db);
    }
    source.psql(
        db,
        &format!(
            "GRANT CONNECT, CREATE ON DATABASE {db} TO repl;
             CREATE SCHEMA app AUTHORIZATION app;
             GRANT USAGE ON SCHEMA app TO repl;
             ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA app GRANT SELECT ON TABLES TO repl;"
        ),
    );
    (
        source.url("app", Some("app pw"), db),
        source.url("repl", Some("repl pw"), db),
    )
}

/// The connector's `connector list` entry once it has failed: its error and next step.
async fn failure(daemon: &Daemon, connector: &str) -> (String, String) {
    daemon.wait_for_state(connector, "failed").await;
    let c = daemon.connector(connector);
    let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
    (text("last_error"), text("next_step"))
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} not in: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_losing_its_identity_is_held_out_and_one_made_unlogged_stops_its_connector() {
    let source = Cluster::start();
    let store = Cluster::start();
    let mut urls = std::collections::HashMap::new();
    for (db, setup) in [
        (
            "coded",
            "CREATE TABLE app.coded (id int NOT NULL, code text NOT NULL);
             CREATE UNIQUE INDEX coded_code ON app.coded (code);
             ALTER TABLE app.coded REPLICA IDENTITY USING INDEX coded_code;
             INSERT INTO app.coded SELECT g, 'c' || g FROM generate_series(1, 10) g;",
        ),
        (
            "later",
            "CREATE TABLE app.later (id int PRIMARY KEY, v int);
             INSERT INTO app.later SELECT g, g FROM generate_series(1, 10) g;",
        ),
        (
            "deferred",
            "CREATE TABLE app.deferred (id int PRIMARY KEY DEFERRABLE, v int);
             INSERT INTO app.deferred SELECT g, g FROM generate_series(1, 10) g;",
        ),
        (
            "hot",
            "CREATE TABLE app.hot (id int PRIMARY KEY, v int);
             INSERT INTO app.hot SELECT g, g FROM generate_series(1, 10) g;",
        ),
    ] {
        let (app, repl) = app_database(&source, db);
        source.psql_conninfo(&app, setup);
        urls.insert(db, (app, repl));
    }
    let mut daemon = Daemon::new(&store);

    // A DEFERRABLE primary key is no replica identity: preflight says so, and `connector
    // create` takes a decision about the table as about a keyless one.
    let repl = &urls["deferred"].1;
    let preflight = daemon.cli(&[
        "connector",
        "preflight",
        "postgresql",
        repl,
        "--schemas",
        "app",
    ]);
    let out = String::from_utf8_lossy(&preflight.stdout);
    assert!(!preflight.status.success(), "{out}");
    assert_contains(
        &out,
        &["replica identity app.deferred", "primary key is DEFERRABLE"],
    );
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        repl,
        "--name",
        "deferred",
        "--schemas",
        "app",
        "--accept-replica-identity-defaults",
    ]);
    let excluded = daemon.connector("deferred")["excluded_tables"].to_string();
    assert_contains(&excluded, &["app.deferred", "exclude"]);

    for name in ["coded", "later", "hot"] {
        daemon.create_connector(&urls[name].1, name, "app");
    }
    daemon.start();
    for name in ["coded", "later", "hot"] {
        daemon.wait_for_state(name, "streaming").await;
    }

    // The identity index dropped: the UPDATE after it is not in the stream.
    source.psql_conninfo(
        &urls["coded"].0,
        "DROP INDEX app.coded_code; UPDATE app.coded SET code = 'changed' WHERE id = 1;",
    );
    // The primary key re-created DEFERRABLE: the DELETE after it is not in the stream.
    source.psql_conninfo(
        &urls["later"].0,
        "ALTER TABLE app.later DROP CONSTRAINT later_pkey, ADD PRIMARY KEY (id) DEFERRABLE;
         DELETE FROM app.later WHERE id = 2;",
    );
    // Made unlogged (schema changes are not captured here: the catalog poll sees it).
    source.psql_conninfo(
        &urls["hot"].0,
        "ALTER TABLE app.hot SET UNLOGGED; INSERT INTO app.hot VALUES (100, 100);",
    );

    // The table whose change was lost is held out; its connector streams on.
    let held = |name: &'static str, table: &'static str| {
        let daemon = &daemon;
        async move {
            let row = daemon.wait_for_table(name, table, "failed").await;
            let text = |key: &str| row[key].as_str().unwrap_or_default().to_owned();
            (text("problem"), text("next_step"))
        }
    };
    let (error, next) = held("coded", "app.coded").await;
    assert_contains(
        &error,
        &[
            "an UPDATE of app.coded",
            "no tuple identifier for UPDATE",
            "REPLICA IDENTITY USING INDEX was dropped",
        ],
    );
    assert_contains(
        &next,
        &[
            "ALTER TABLE \"app\".\"coded\" REPLICA IDENTITY FULL;",
            "resync coded --table app.coded",
        ],
    );
    let (error, next) = held("later", "app.later").await;
    assert_contains(
        &error,
        &["a DELETE of app.later", "primary key is DEFERRABLE"],
    );
    assert_contains(&next, &["resync later --table app.later"]);
    for name in ["coded", "later"] {
        assert_eq!(daemon.connector_state(name).as_deref(), Some("streaming"));
    }
    let (error, next) = failure(&daemon, "hot").await;
    assert_contains(&error, &["app.hot was made UNLOGGED"]);
    assert_contains(&next, &["SET LOGGED", "retry-setup hot"]);

    // Nothing of the transactions with a dropped change was applied.
    assert_eq!(
        store.psql("coded_replica", "SELECT code FROM app.coded WHERE id = 1"),
        "c1"
    );
    assert_eq!(
        store.psql("later_replica", "SELECT count(*) FROM app.later"),
        "10"
    );
    // Each is a state everywhere the operator looks.
    let status = daemon.cli_fails(&["status", "--format", "json"]);
    assert_contains(&status, &["\"failed\"", "1 table held out"]);
    let addr = daemon.metrics_addr().await;
    crate::support::eventually("the failed state in the metrics", || async {
        let (_, metrics) = crate::metrics::get(addr, "/metrics");
        (metrics.contains("tributary_pipeline_state{connector=\"hot\",state=\"failed\"} 1")
            && metrics.contains("tributary_tables{connector=\"coded\",state=\"failed\"} 1"))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlogged_tables_are_listed_and_made_unlogged_mid_stream_stop_the_connector() {
    let source = Cluster::start();
    let store = Cluster::start();
    let (app, repl) = app_database(&source, "postgres");
    source.psql_conninfo(
        &app,
        "CREATE TABLE app.orders (id int PRIMARY KEY, total int);
         INSERT INTO app.orders SELECT g, g FROM generate_series(1, 10) g;
         CREATE UNLOGGED TABLE app.scratch (id int PRIMARY KEY);
         INSERT INTO app.scratch SELECT generate_series(1, 5);",
    );
    let mut daemon = Daemon::new(&store);
    // Schema changes captured, installed once by a superuser.
    let sql = daemon.cli_ok(&["connector", "source-sql", "--role", "repl"]);
    source.psql("postgres", &sql);
    let preflight = daemon.cli_ok(&[
        "connector",
        "preflight",
        "postgresql",
        &repl,
        "--schemas",
        "app",
    ]);
    assert_contains(
        &preflight,
        &["unlogged tables", "1 not replicated", "app.scratch"],
    );
    daemon.create_connector(&repl, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    // The snapshot keeps its definition, without rows, and says so.
    assert_eq!(
        store.psql("shop_replica", "SELECT count(*) FROM app.scratch"),
        "0"
    );
    let listed = daemon.connector("shop")["excluded_tables"].to_string();
    assert_contains(&listed, &["app.scratch", "unlogged"]);

    source.psql_conninfo(
        &app,
        "ALTER TABLE app.orders SET UNLOGGED; INSERT INTO app.orders VALUES (11, 11);",
    );
    let (error, next) = failure(&daemon, "shop").await;
    assert_contains(
        &error,
        &["table app.orders was made UNLOGGED on the source"],
    );
    assert_contains(&next, &["SET LOGGED", "retry-setup shop"]);
}
