//! The version matrix: every PostgreSQL major the users run (13 to 18, at current minor
//! releases) as source and as branch store. The rest of the suite runs on one version (the
//! distribution's, or `TRIBUTARY_PG_MAJOR`); these tests run the cross-version subset on each
//! of the others and on mixed pairs, with the roles of a real installation: a superuser
//! installs, tributary connects as a REPLICATION + SELECT role, the application's owner runs
//! DDL and DML.
//!
//! wal2json exists for 13 (2.3), 15 (2.5), 17 (2.6) and 18 (2.7); 14 and 16 are branch
//! stores, and sources only for what needs no wal2json.
//!
//! `cargo test --test integration versions::pg17` runs one major's tests.

use tributary::bookkeeping::Bookkeeping;
use tributary::pg::ConnInfo;
use tributary::settings::SecretsSettings;
use tributary::types::ConnectorName;

use crate::daemon::{wait_replica, Daemon};
use crate::harness::{install, Cluster};
use crate::metrics::{get, value};
use crate::schema_changes::definitions;

const ROLES: &str = "
CREATE ROLE app_owner LOGIN PASSWORD 'owner pw';
CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';
GRANT CONNECT, CREATE ON DATABASE postgres TO repl, app_owner;
CREATE SCHEMA app AUTHORIZATION app_owner;
";

/// Run by the application's owner: tables of kinds a real schema has, readable by tributary.
const APP: &str = r#"
SET search_path = app;
CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL,
                    price numeric, ratio double precision, weight real,
                    name_len int GENERATED ALWAYS AS (length(name)) STORED);
CREATE TABLE events (id serial PRIMARY KEY, note text, at timestamptz DEFAULT now());
CREATE TABLE "Mixed Case" ("Key" int PRIMARY KEY, "Value" text);
CREATE TABLE readings (id int, day date, v real, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
CREATE TABLE readings_2025 PARTITION OF readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO items (name, price, ratio, weight)
     SELECT 'item ' || g, g * 1.5, g / 7.0, g FROM generate_series(1, 200) g;
INSERT INTO events (note) SELECT 'before ' || g FROM generate_series(1, 100) g;
INSERT INTO "Mixed Case" SELECT g, repeat('x', g) FROM generate_series(1, 20) g;
INSERT INTO readings SELECT g, DATE '2025-06-01' + g, g FROM generate_series(1, 300) g;
GRANT USAGE ON SCHEMA app TO repl;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA app TO repl;
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO repl;
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON SEQUENCES TO repl;
"#;

/// NaN and the infinities in numeric, real and double precision: exact with wal2json 2.6 or
/// newer (numeric infinities exist from PostgreSQL 14).
const SPECIAL_NUMBERS: &str = "
INSERT INTO app.items (name, price, ratio, weight) VALUES
    ('nan', 'NaN', 'NaN', 'NaN'),
    ('+inf', 'Infinity', 'Infinity', 'Infinity'),
    ('-inf', '-Infinity', '-Infinity', '-Infinity');
";

/// The same values as keys: copied, then changed and deleted by key while streaming.
const SPECIAL_KEYS: &str = "
CREATE TABLE app.by_number (k numeric PRIMARY KEY, f double precision NOT NULL, note text);
INSERT INTO app.by_number VALUES ('NaN', 'NaN', 'a'), ('Infinity', 'Infinity', 'b'),
    ('-Infinity', '-Infinity', 'c'), (1, 1, 'd'), (2, 2, 'e');
";
const SPECIAL_KEY_CHANGES: &str = "
UPDATE app.by_number SET note = 'changed' WHERE k = 'NaN';
UPDATE app.by_number SET k = 'NaN', f = 'Infinity' WHERE k = 1 AND NOT EXISTS
    (SELECT FROM app.by_number WHERE k = 'NaN');
DELETE FROM app.by_number WHERE k = 'NaN';
UPDATE app.by_number SET k = 'NaN', f = '-Infinity' WHERE k = 1;
UPDATE app.by_number SET k = 3 WHERE k = 'Infinity';
DELETE FROM app.by_number WHERE k = '-Infinity';
INSERT INTO app.by_number VALUES ('-Infinity', 'NaN', 'again');
";

/// The main path on `source_major` → `store_major`: preflight, snapshot, streaming across a
/// kill -9 of the daemon, DDL replay, a branch with working sequences, slot metrics. The
/// branch store runs with `store_settings`.
async fn round_trip(source_major: u32, store_major: u32, store_settings: &[(&str, &str)]) {
    let source = Cluster::builder().major(source_major).start();
    let store = store_settings
        .iter()
        .fold(Cluster::builder().major(store_major), |b, (name, value)| {
            b.setting(name, value)
        })
        .start();
    for (name, value) in store_settings {
        assert_eq!(&store.psql("postgres", &format!("SHOW {name}")), value);
    }
    let wal2json = source.install().wal2json.clone();
    let exact_nan = wal2json_at_least(wal2json.as_deref(), 2, 6);
    source.psql("postgres", ROLES);
    let owner_url = source.url("app_owner", Some("owner pw"), "postgres");
    source.psql_conninfo(&owner_url, APP);
    if exact_nan {
        source.psql_conninfo(&owner_url, SPECIAL_NUMBERS);
        source.psql_conninfo(&owner_url, SPECIAL_KEYS);
    }

    let mut daemon = Daemon::new(&store);
    // pg_dump and pg_restore at least as new as the source.
    daemon.set(
        "TRIBUTARY_PG_BINDIR",
        &source.bindir().display().to_string(),
    );
    let sql = daemon.cli_ok(&["connector", "source-sql", "--role", "repl"]);
    source.psql("postgres", &sql);

    // Preflight passes as the replication role, and says what wal2json does with NaN.
    let url = source.url("repl", Some("repl pw"), "postgres");
    let out = daemon.cli(&[
        "connector",
        "preflight",
        "postgresql",
        &url,
        "--schemas",
        "app",
        "--format",
        "json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("preflight output: {e}: {out:?}"));
    assert!(
        out.status.success(),
        "preflight failed on {source_major}: {report:#}"
    );
    assert_eq!(
        daemon.wal2json_sends_nan(&url, "app"),
        exact_nan,
        "{report:#}"
    );

    daemon.create_connector(&url, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;

    // Streaming, with the daemon killed mid-way: nothing lost, nothing twice.
    let dml = |round: u32| {
        format!(
            "SET search_path = app;
             INSERT INTO items (name, price, ratio, weight)
                  SELECT 'streamed ' || g, g, g / 3.0, g FROM generate_series(1, 100) g;
             UPDATE items SET price = price * 2 WHERE id % 10 = {round};
             DELETE FROM items WHERE id % 17 = {round};
             UPDATE \"Mixed Case\" SET \"Key\" = \"Key\" + 1000 WHERE \"Key\" = {round};
             INSERT INTO readings SELECT g, DATE '2026-02-01' + g, g / 2.0
                  FROM generate_series({round} * 100 + 1, {round} * 100 + 50) g;
             UPDATE readings SET day = day + 200 WHERE id = {round} AND day < DATE '2026-01-01';
             INSERT INTO events (note) SELECT 'streamed ' || g FROM generate_series(1, 50) g;"
        )
    };
    source.psql_conninfo(&owner_url, &dml(1));
    daemon.kill9();
    source.psql_conninfo(&owner_url, &dml(2));
    if exact_nan {
        source.psql_conninfo(&owner_url, SPECIAL_NUMBERS);
        source.psql_conninfo(&owner_url, SPECIAL_KEY_CHANGES);
    }
    daemon.start();
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;

    // DDL by the application's owner, replayed in place.
    source.psql_conninfo(
        &owner_url,
        "SET search_path = app;
         ALTER TABLE items ADD COLUMN note text DEFAULT 'new';
         CREATE TABLE later (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, tag text);
         INSERT INTO later (tag) SELECT 'tag ' || g FROM generate_series(1, 30) g;
         CREATE INDEX items_name ON items (name);
         UPDATE items SET note = 'changed' WHERE id < 20;",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    let (on_source, on_replica) = (
        definitions(&source, "postgres", &["app"]),
        definitions(&store, "shop_replica", &["app"]),
    );
    let only = |a: &str, b: &str| -> Vec<String> {
        let b: Vec<&str> = b.lines().collect();
        a.lines()
            .filter(|l| !b.contains(l))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        on_source == on_replica,
        "definitions differ on {source_major} → {store_major}:\nonly on the source: {:#?}\nonly on the replica: {:#?}",
        only(&on_source, &on_replica),
        only(&on_replica, &on_source)
    );

    // A branch, whose sequences and identities continue after the copied rows.
    let out = daemon.cli_ok(&["branch", "create", "dev"]);
    assert!(out.contains("✓ Branch dev"), "{out}");
    store.psql(
        "dev",
        "INSERT INTO app.items (name) SELECT 'branch' FROM generate_series(1, 500);
         INSERT INTO app.events (note) SELECT 'branch' FROM generate_series(1, 500);
         INSERT INTO app.later (tag) SELECT 'branch' FROM generate_series(1, 500);",
    );
    assert_eq!(
        store.psql("dev", "SELECT count(*) FROM app.later"),
        "530",
        "branch inserts"
    );

    // The slot as the metrics show it.
    let addr = daemon.metrics_addr().await;
    let body = crate::support::eventually("the slot to be sampled", || async {
        let (_, body) = get(addr, "/metrics");
        value(
            &body,
            r#"tributary_slot_wal_status{connector="shop",status="reserved"}"#,
        )
        .filter(|v| *v == 1.0)
        .map(|_| body)
    })
    .await;
    assert!(
        value(&body, r#"tributary_slot_lag_bytes{connector="shop"}"#).is_some(),
        "{body}"
    );
    assert_eq!(
        value(&body, r#"tributary_source_up{connector="shop"}"#),
        Some(1.0),
        "{body}"
    );
    daemon.terminate();
}

/// Whether wal2json `version` (`2.6`, or `installed` when unknown) is `major.minor` or newer.
pub fn wal2json_at_least(version: Option<&str>, major: u32, minor: u32) -> bool {
    let Some(version) = version else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// A source without wal2json: preflight's wal2json line fails saying how to install it, and
/// `create` is refused before anything is written.
async fn wal2json_missing(major: u32) {
    let source = Cluster::builder().major(major).start();
    let store = Cluster::start();
    let daemon = Daemon::new(&store);
    let out = daemon.cli(&[
        "connector",
        "preflight",
        "postgresql",
        &source.superuser_url("postgres"),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "wal2json")
        .unwrap_or_else(|| panic!("no wal2json line: {report:#}"))
        .clone();
    assert_eq!(check["status"], "fail", "{check:#}");
    let fix = check.to_string();
    assert!(
        fix.contains(&format!("postgresql-{major}-wal2json")),
        "the fix names the package for PostgreSQL {major}: {check:#}"
    );
    let out = daemon.cli(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("postgres"),
        "--name",
        "nope",
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM tributary.connectors WHERE name = 'nope'"
        ),
        "0"
    );
}

macro_rules! round_trips {
    ($($name:ident: $source:expr => $store:expr $(, $setting:ident = $value:ident)*;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            round_trip($source, $store, &[$((stringify!($setting), stringify!($value))),*]).await;
        }
    )*};
}

round_trips! {
    pg13_to_pg13: 13 => 13;
    // A branch store older than the source is refused (see below): 14 as a store of 13.
    pg13_to_pg14: 13 => 14;
    pg15_to_pg16: 15 => 16;
    pg17_to_pg17: 17 => 17;
    // Branches with PostgreSQL 18's clone file copy, here on a filesystem without reflinks
    // (the machine's /tmp): copy_file_range copies in the kernel, and the branch is whole.
    pg18_to_pg18: 18 => 18, file_copy_method = clone;
    pg13_to_pg18: 13 => 18;
}

/// A branch store older than the source cannot take the source's schema (pg_dump's output
/// is for its own and newer servers): `create` refuses before anything is written.
#[tokio::test]
async fn pg18_to_pg15_is_refused_up_front_with_the_reason() {
    let source = Cluster::builder().major(18).start();
    let store = Cluster::builder().major(15).start();
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY_PG_BINDIR",
        &source.bindir().display().to_string(),
    );
    let out = daemon.cli(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("postgres"),
        "--name",
        "newer",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PostgreSQL 15") && text.contains("PostgreSQL 18"),
        "names both versions: {text}"
    );
    assert!(
        text.contains("branch store of PostgreSQL 18 or newer"),
        "says what to do: {text}"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM tributary.connectors WHERE name = 'newer'"
        ),
        "0"
    );
}

/// The same pair at run time, for a connector whose source was upgraded after `create` (here
/// recorded without the CLI): the snapshot fails before it creates anything, for good (no
/// retry), with the reason; `retry-setup` refuses as `create` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg18_to_pg15_fails_at_run_time_before_anything_is_created() {
    let source = Cluster::builder().major(18).start();
    let store = Cluster::builder().major(15).start();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("tributary.key");
    let secrets = SecretsSettings {
        key_file: Some(key_file.clone()),
        key: None,
    };
    let store_info = ConnInfo::parse(&store.superuser_url("postgres")).unwrap();
    let bookkeeping = Bookkeeping::open(&store_info, &secrets, &key_file)
        .await
        .unwrap();
    bookkeeping
        .create_connector_with_decisions(
            &ConnectorName::new("newer".to_owned()).unwrap(),
            &source.superuser_url("postgres"),
            &["public".to_owned()],
            &[],
            true,
        )
        .await
        .unwrap();
    let mut daemon = Daemon::new(&store);
    daemon
        .set(
            "TRIBUTARY__SECRETS__KEY_FILE",
            &key_file.display().to_string(),
        )
        .set(
            "TRIBUTARY_PG_BINDIR",
            &source.bindir().display().to_string(),
        );
    daemon.start();
    daemon.wait_for_state("newer", "failed").await;
    let connector = daemon.connector("newer");
    let error = connector["last_error"].as_str().unwrap();
    assert!(
        error.contains("PostgreSQL 15")
            && error.contains("PostgreSQL 18")
            && error.contains("branch store of PostgreSQL 18 or newer"),
        "{connector}"
    );
    let next_step = connector["next_step"].as_str().unwrap();
    assert!(!next_step.contains("retries"), "not retried: {connector}");
    assert_eq!(
        source.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0",
        "no slot holds WAL for a snapshot that cannot be taken"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'newer_replica'"
        ),
        "0"
    );
    let (code, text) = output(&daemon.cli(&["connector", "retry-setup", "newer"]));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("branch store of PostgreSQL 18 or newer")
            && text.contains("Setup of newer not restarted."),
        "{text}"
    );
    daemon.terminate();
}

/// pg_restore 17 and newer set transaction_timeout, which a branch store before 17 lacks:
/// client programs of 18 for 13 → 15 fail the snapshot at once, naming the versions that
/// fit; with those (the 13 install's own, which are 16's) it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_restore_newer_than_16_is_refused_for_a_pg15_store_naming_the_programs_that_fit() {
    let source = Cluster::builder().major(13).start();
    let store = Cluster::builder().major(15).start();
    one_table(&source);
    let mut daemon = Daemon::new(&store);
    let newest = install(18).bindir.display().to_string();
    daemon.set("TRIBUTARY_PG_BINDIR", &newest);
    daemon.create_connector(&source.superuser_url("postgres"), "old", "public");
    daemon.start();
    daemon.wait_for_state("old", "failed").await;
    let connector = daemon.connector("old");
    let error = connector["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{newest}/pg_restore is from PostgreSQL 18")),
        "names the program: {connector}"
    );
    assert!(
        error.contains("branch store's PostgreSQL 15") && error.contains("transaction_timeout"),
        "says why: {connector}"
    );
    assert!(
        error.contains("client programs of PostgreSQL 13 to 16 (postgresql-client-15)")
            && error.contains("TRIBUTARY_PG_BINDIR"),
        "says what fits: {connector}"
    );
    assert!(
        !connector["next_step"].as_str().unwrap().contains("retries"),
        "not retried: {connector}"
    );
    assert_eq!(
        source.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );

    daemon.terminate();
    daemon.set(
        "TRIBUTARY_PG_BINDIR",
        &source.bindir().display().to_string(),
    );
    daemon.start();
    crate::support::eventually("the restart to take the snapshot again", || async {
        (daemon.connector_state("old").as_deref() != Some("failed")).then_some(())
    })
    .await;
    daemon.wait_for_state("old", "streaming").await;
    wait_replica(&source, &store, "old", &["public"], &daemon).await;
    daemon.terminate();
}

/// The branch store's role needs CREATEDB and the right to set session_replication_role
/// (every apply session does). `create` checks it up front, with the grant that gives it:
/// on PostgreSQL 14 there is none, only superusers may.
#[tokio::test]
async fn a_pg14_store_role_must_be_a_superuser_to_apply() {
    let source = Cluster::builder().major(13).start();
    let store = Cluster::builder().major(14).start();
    let daemon = store_role_daemon(&source, &store);
    let text = output(&daemon.cli(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("postgres"),
        "--name",
        "app",
    ]));
    assert!(text.0 == Some(1), "{text:?}");
    assert!(
        text.1.contains("session_replication_role")
            && text
                .1
                .contains("on PostgreSQL 14 only a superuser may set it")
            && text.1.contains("ALTER ROLE \"tributary_store\" SUPERUSER;")
            && text.1.contains("Connector app not created."),
        "{text:?}"
    );
    assert!(!text.1.contains("TO \"tributary_store\""), "{text:?}");
    assert_eq!(
        store.psql("control", "SELECT count(*) FROM tributary.connectors"),
        "0"
    );
}

/// From PostgreSQL 15 on, a grant suffices: `create` names it, and with it a role that is
/// no superuser runs the whole path: snapshot, streaming, a branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg15_store_role_needs_set_on_session_replication_role() {
    let source = Cluster::builder().major(15).start();
    let store = Cluster::builder().major(15).start();
    one_table(&source);
    let mut daemon = store_role_daemon(&source, &store);
    let url = source.superuser_url("postgres");
    let create = ["connector", "create", "postgresql", &url, "--name", "app"];
    let text = output(&daemon.cli(&create));
    assert!(text.0 == Some(1), "{text:?}");
    let grant = "GRANT SET ON PARAMETER session_replication_role TO \"tributary_store\";";
    assert!(text.1.contains(grant), "{text:?}");
    assert!(!text.1.contains("SUPERUSER"), "{text:?}");

    store.psql("postgres", grant);
    daemon.cli_ok(&create);
    daemon.start();
    daemon.wait_for_state("app", "streaming").await;
    source.psql("postgres", "UPDATE t SET v = 'changed' WHERE id <= 10");
    wait_replica(&source, &store, "app", &["public"], &daemon).await;
    let out = daemon.cli_ok(&["branch", "create", "dev"]);
    assert!(out.contains("✓ Branch dev"), "{out}");
    assert_eq!(
        store.psql("dev", "SELECT count(*) FROM t WHERE v = 'changed'"),
        "10"
    );
    daemon.terminate();
}

/// A daemon whose branch-store role `tributary_store` has CREATEDB and CREATEROLE (branches
/// get roles of their own) and owns the control database, and is no superuser; pg_dump and
/// pg_restore are the source's.
fn store_role_daemon(source: &Cluster, store: &Cluster) -> Daemon {
    store.psql(
        "postgres",
        "CREATE ROLE tributary_store LOGIN CREATEDB CREATEROLE PASSWORD 'store pw';
         CREATE DATABASE control OWNER tributary_store;",
    );
    let mut daemon = Daemon::new(store);
    daemon
        .set(
            "TRIBUTARY__STORE__URL",
            &store.url("tributary_store", Some("store pw"), "control"),
        )
        .set(
            "TRIBUTARY_PG_BINDIR",
            &source.bindir().display().to_string(),
        );
    daemon
}

/// Exit code, and standard output and error together.
fn output(out: &std::process::Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn pg14_source_without_wal2json_is_refused_with_the_package_to_install() {
    wal2json_missing(14).await;
}

#[tokio::test]
async fn pg16_source_without_wal2json_is_refused_with_the_package_to_install() {
    wal2json_missing(16).await;
}

#[test]
fn wal2json_versions_compare_by_number() {
    assert!(wal2json_at_least(Some("2.6"), 2, 6));
    assert!(wal2json_at_least(Some("2.10"), 2, 6));
    assert!(!wal2json_at_least(Some("2.5"), 2, 6));
    assert!(!wal2json_at_least(Some("installed"), 2, 6));
    assert!(!wal2json_at_least(None, 2, 6));
}

/// A table of 100 rows in the source's database `postgres`.
fn one_table(source: &Cluster) {
    source.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    );
}
