//! NaN, Infinity and -Infinity in numeric and float columns: wal2json before 2.6 sends them
//! as null. The replica never silently holds NULL for them: tables with such columns are
//! refused until the operator accepts it on the connector, a column added later is caught
//! at its table's next change, and an error they cause names them. With wal2json 2.6 or
//! newer they replicate exactly.

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;

const SCHEMA: &str = "
CREATE ROLE app_owner LOGIN PASSWORD 'owner pw';
CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';
GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
CREATE SCHEMA app AUTHORIZATION app_owner;
SET ROLE app_owner;
CREATE TABLE app.readings (id int PRIMARY KEY, v float8 NOT NULL, n numeric);
-- numeric has no infinities before PostgreSQL 14; float8 has.
INSERT INTO app.readings VALUES (1, 'Infinity', 'NaN'), (2, 1.5, 2);
CREATE TABLE app.plain (id int PRIMARY KEY, t text);
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO repl;
GRANT USAGE ON SCHEMA app TO repl;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;
RESET ROLE;
";

fn create(
    daemon: &Daemon,
    url: &str,
    name: &str,
    schemas: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "connector",
        "create",
        "postgresql",
        url,
        "--name",
        name,
        "--schemas",
        schemas,
    ];
    args.extend_from_slice(extra);
    daemon.cli(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_never_silently_becomes_null() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SCHEMA);
    let mut daemon = Daemon::new(&store);
    let url = source.url("repl", Some("repl pw"), "postgres");
    let owner = source.url("app_owner", Some("owner pw"), "postgres");

    let refused = create(&daemon, &url, "shop", "app", &[]);
    if refused.status.success() {
        // wal2json 2.6 or newer: NaN and the infinities replicate exactly.
        daemon.start();
        daemon.wait_for_state("shop", "streaming").await;
        source.psql_conninfo(
            &owner,
            "INSERT INTO app.readings VALUES (3, '-Infinity', 'NaN')",
        );
        wait_replica(&source, &store, "shop", &["app"], &daemon).await;
        return;
    }
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    for expected in [
        "NaN",
        "app.readings.v",
        "app.readings.n",
        "--nan-as-null accept",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected} missing from: {stderr}"
        );
    }

    // Accepted: the snapshot copies NaN exactly, and the decision shows in the list.
    let created = create(&daemon, &url, "shop", "app", &["--nan-as-null", "accept"]);
    assert!(created.status.success(), "{created:?}");
    let listed = daemon.connector("shop");
    assert_eq!(listed["nan_as_null"], true);
    assert!(listed["warnings"].to_string().contains("NaN"), "{listed}");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;

    // A streamed NaN in a NOT NULL column: the error names the likely cause.
    source.psql_conninfo(&owner, "INSERT INTO app.readings VALUES (3, 'NaN', 1)");
    daemon.wait_for_state("shop", "failed").await;
    let error = daemon.connector("shop")["last_error"].to_string();
    assert!(error.contains("column v probably holds NaN"), "{error}");

    // Taking the decision back refuses the table, naming NaN and the way out.
    daemon.cli_ok(&["connector", "update", "shop", "--nan-as-null", "refuse"]);
    assert_eq!(daemon.connector("shop")["nan_as_null"], false);
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let c = daemon.connector("shop");
        let error = c["last_error"].as_str().unwrap_or_default().to_owned();
        if c["state"] == "failed" && error.contains("sends as null") {
            assert!(
                error.contains("v, n") && error.contains("--nan-as-null accept"),
                "{error}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{c}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float_column_added_later_is_refused_at_its_next_change() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", SCHEMA);
    let mut daemon = Daemon::new(&store);
    let url = source.url("repl", Some("repl pw"), "postgres");
    let owner = source.url("app_owner", Some("owner pw"), "postgres");
    // Schemas without such columns need no decision.
    source.psql(
        "postgres",
        "CREATE SCHEMA ops AUTHORIZATION app_owner; GRANT USAGE ON SCHEMA ops TO repl;
         SET ROLE app_owner; CREATE TABLE ops.jobs (id int PRIMARY KEY, name text);
         GRANT SELECT ON ops.jobs TO repl;",
    );
    let created = create(&daemon, &url, "ops", "ops", &[]);
    assert!(created.status.success(), "{created:?}");
    daemon.start();
    daemon.wait_for_state("ops", "streaming").await;
    source.psql_conninfo(
        &owner,
        "ALTER TABLE ops.jobs ADD COLUMN score real; INSERT INTO ops.jobs VALUES (1, 'a', 'NaN');",
    );
    if daemon.wal2json_sends_nan(&url, "ops") {
        wait_replica(&source, &store, "ops", &["ops"], &daemon).await;
        return;
    }
    daemon.wait_for_state("ops", "failed").await;
    let error = daemon.connector("ops")["last_error"].to_string();
    assert!(
        error.contains("ops.jobs") && error.contains("score") && error.contains("NaN"),
        "{error}"
    );
}
