//! NaN, Infinity and -Infinity in numeric and float columns: wal2json before 2.6 sends them
//! as null. The replica never silently holds NULL for them: tables with such columns are
//! refused until the operator accepts it on the connector, a column added later is caught
//! at its table's next change, and an error they cause names them. With wal2json 2.6 or
//! newer they replicate exactly, with no decision to make: pinned on PostgreSQL 17 (wal2json
//! 2.6) and 18 (2.7), as values, keys and whole-row identities.

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

    // A streamed NaN in a NOT NULL column: that table is held out, the error names the
    // likely cause, and the connector streams its other tables.
    source.psql_conninfo(&owner, "INSERT INTO app.readings VALUES (3, 'NaN', 1)");
    let held = daemon
        .wait_for_table("shop", "app.readings", "failed")
        .await;
    let problem = held["problem"].to_string();
    assert!(problem.contains("column v probably holds NaN"), "{problem}");
    assert!(
        held["next_step"].to_string().contains("upgrade wal2json"),
        "{held}"
    );
    // The run that held it out ends and the next streams the others at once (it passes
    // through `validating` on the way: seen in a full-suite run).
    daemon.wait_for_state("shop", "streaming").await;

    // Taking the decision back and copying the table again: its next change is refused,
    // naming NaN and the way out.
    daemon.cli_ok(&["connector", "update", "shop", "--nan-as-null", "refuse"]);
    assert_eq!(daemon.connector("shop")["nan_as_null"], false);
    daemon.cli_ok(&["connector", "resync", "shop", "--table", "app.readings"]);
    daemon
        .wait_for_table("shop", "app.readings", "streaming")
        .await;
    source.psql_conninfo(&owner, "INSERT INTO app.readings VALUES (5, 1, 1)");
    let held = daemon
        .wait_for_table("shop", "app.readings", "failed")
        .await;
    let problem = held["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("sends as null") && problem.contains("v, n"),
        "{problem}"
    );
    assert!(
        held["next_step"]
            .to_string()
            .contains("--nan-as-null accept"),
        "{held}"
    );
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
    // That table alone is refused; the connector streams on.
    let held = daemon.wait_for_table("ops", "ops.jobs", "failed").await;
    let error = held["problem"].to_string();
    assert!(
        error.contains("ops.jobs") && error.contains("score") && error.contains("NaN"),
        "{error}"
    );
    assert_eq!(daemon.connector_state("ops").as_deref(), Some("streaming"));
}

/// NaN and the infinities as keys and under REPLICA IDENTITY FULL (numeric infinities exist
/// from PostgreSQL 14 on).
const SPECIAL_KEYS: &str = "
CREATE TABLE app.by_number (k numeric PRIMARY KEY, r real, d double precision, note text);
INSERT INTO app.by_number VALUES ('NaN', 'NaN', 'NaN', 'a'),
    ('Infinity', 'Infinity', 'Infinity', 'b'), ('-Infinity', '-Infinity', '-Infinity', 'c'),
    (1, 1, 1, 'd');
CREATE TABLE app.whole_rows (r real, d double precision, n numeric, note text);
ALTER TABLE app.whole_rows REPLICA IDENTITY FULL;
INSERT INTO app.whole_rows VALUES ('NaN', 'Infinity', '-Infinity', 'x'), (1, 'NaN', 2, 'y');
";

/// Every kind of change to and from NaN and the infinities: values, keys found by them,
/// keys changed to and from them, rows found by them under REPLICA IDENTITY FULL.
const SPECIAL_CHANGES: &str = "
INSERT INTO app.readings VALUES (3, '-Infinity', 'Infinity'), (4, 'NaN', '-Infinity');
UPDATE app.readings SET v = 'NaN', n = 'NaN' WHERE id = 2;
UPDATE app.readings SET v = 2.5, n = 3 WHERE id = 1;
UPDATE app.by_number SET note = 'changed by its NaN key' WHERE k = 'NaN';
UPDATE app.by_number SET k = 2 WHERE k = 'Infinity';
UPDATE app.by_number SET k = 'Infinity', r = '-Infinity' WHERE k = 1;
DELETE FROM app.by_number WHERE k = '-Infinity';
DELETE FROM app.by_number WHERE k = 'NaN';
INSERT INTO app.by_number VALUES ('NaN', 'Infinity', '-Infinity', 'again');
UPDATE app.whole_rows SET note = 'found by NaN and infinities' WHERE note = 'x';
DELETE FROM app.whole_rows WHERE note = 'y';
";

/// wal2json 2.6 (PostgreSQL 17) and 2.7 (18) send NaN, Infinity and -Infinity exactly
/// (`numeric-data-types-as-string`): `connector create` needs no `--nan-as-null` decision,
/// and the snapshot and every kind of streamed change keep them.
async fn exact_on(major: u32) {
    let source = Cluster::builder().major(major).start();
    let store = Cluster::builder().major(major).start();
    let wal2json = source.install().wal2json.clone().unwrap_or_default();
    assert!(
        ["2.6", "2.7"].iter().any(|v| wal2json.starts_with(v)),
        "wal2json {wal2json} on {major}"
    );
    source.psql("postgres", SCHEMA);
    let owner = source.url("app_owner", Some("owner pw"), "postgres");
    source.psql_conninfo(&owner, SPECIAL_KEYS);
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY_PG_BINDIR",
        &source.bindir().display().to_string(),
    );
    let url = source.url("repl", Some("repl pw"), "postgres");
    assert!(daemon.wal2json_sends_nan(&url, "app"));

    // No decision asked for, none recorded, nothing to warn about.
    let created = create(&daemon, &url, "shop", "app", &[]);
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(created.status.success(), "{created:?}");
    assert!(!stdout.contains("NaN"), "{stdout}");
    let listed = daemon.connector("shop");
    assert_eq!(listed["nan_as_null"], false);
    assert!(!listed["warnings"].to_string().contains("NaN"), "{listed}");

    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    source.psql_conninfo(&owner, SPECIAL_CHANGES);
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    // The checksums compare the rows' text; this says the special values are there.
    let rows = |table: &str, order: &str| {
        store.psql(
            "shop_replica",
            &format!("SELECT string_agg(t::text, ' ' ORDER BY {order}) FROM app.{table} t"),
        )
    };
    assert_eq!(
        rows("readings", "id"),
        "(1,2.5,3) (2,NaN,NaN) (3,-Infinity,Infinity) (4,NaN,-Infinity)"
    );
    assert_eq!(
        rows("by_number", "note"),
        "(NaN,Infinity,-Infinity,again) (2,Infinity,Infinity,b) (Infinity,-Infinity,1,d)"
    );
    assert_eq!(
        rows("whole_rows", "note"),
        "(NaN,Infinity,-Infinity,\"found by NaN and infinities\")"
    );
    assert_eq!(daemon.connector("shop")["state"], "streaming");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg17_replicates_nan_and_infinities_exactly() {
    exact_on(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_replicates_nan_and_infinities_exactly() {
    exact_on(18).await;
}
