//! `tributary store check` against real branch stores played by a role that is no
//! superuser: the SQL of the docs gives a role that passes and serves a connector end to
//! end; a role without CREATEDB fails with the fix, which the printed grant script applies;
//! `connector create` and `run` refuse a store that fails; on 14 only a superuser may apply.

use std::path::Path;
use std::process::Output;

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;

/// The file the docs show and tell operators to run.
const STORE_ROLE_SQL: &str = include_str!("../deploy/store-role.sql");

fn text(out: &Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `store check --format json` as JSON, with the exit code.
fn check_json(daemon: &Daemon) -> (Option<i32>, serde_json::Value) {
    let out = daemon.cli(&["store", "check", "--format", "json"]);
    let report =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", text(&out)));
    (out.status.code(), report)
}

/// The status of check `name` in a JSON report.
fn status<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))["status"]
        .as_str()
        .unwrap()
}

fn source() -> Cluster {
    let source = Cluster::start();
    source.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    );
    source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_role_of_the_docs_passes_and_serves_a_connector() {
    // The docs show the file as it is.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deploy = std::fs::read_to_string(root.join("deploy/README.md")).unwrap();
    assert!(
        deploy.contains(STORE_ROLE_SQL),
        "deploy/README.md shows another SQL"
    );
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let indented: String = STORE_ROLE_SQL.lines().map(|l| format!("  {l}\n")).collect();
    assert!(readme.contains(&indented), "README.md shows another SQL");

    let source = source();
    let store = Cluster::start();
    store.psql("postgres", STORE_ROLE_SQL);
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY__STORE__URL",
        &store.url("tributary_store", Some("change-me"), "tributary"),
    );
    let out = daemon.cli(&["store", "check"]);
    let (code, shown) = text(&out);
    assert_eq!(code, Some(0), "{shown}");
    assert!(!shown.contains("change-me"), "{shown}");
    for name in [
        "login",
        "CREATEDB",
        "session_replication_role",
        "CREATEROLE (branch roles)",
    ] {
        assert!(
            shown.lines().any(|l| l.contains('✓') && l.contains(name)),
            "{name}: {shown}"
        );
    }
    // A role that is no superuser does not see the data directory: said, not failed.
    assert!(shown.contains("- free disk"), "{shown}");

    daemon.create_connector(&source.superuser_url("postgres"), "app", "public");
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

#[tokio::test]
async fn a_store_role_without_createdb_fails_until_the_grant_script_runs() {
    let source = source();
    let store = Cluster::start();
    store.psql(
        "postgres",
        "CREATE ROLE tributary_store LOGIN CREATEROLE PASSWORD 'store pw';
         GRANT SET ON PARAMETER session_replication_role TO tributary_store;
         CREATE DATABASE control OWNER tributary_store;",
    );
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY__STORE__URL",
        &store.url("tributary_store", Some("store pw"), "control"),
    );
    let (code, shown) = text(&daemon.cli(&["store", "check"]));
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains("✗ CREATEDB")
            && shown.contains("fix: as a superuser: ALTER ROLE \"tributary_store\" CREATEDB;"),
        "{shown}"
    );
    let (code, report) = check_json(&daemon);
    assert_eq!(code, Some(1));
    assert_eq!(report["ok"], false);
    assert_eq!(status(&report, "CREATEDB"), "fail");
    assert_eq!(status(&report, "session_replication_role"), "pass");

    // `connector create` refuses it, and so does the daemon.
    let url = source.superuser_url("postgres");
    let (code, shown) =
        text(&daemon.cli(&["connector", "create", "postgresql", &url, "--name", "app"]));
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains("✗ CREATEDB") && shown.contains("Connector app not created."),
        "{shown}"
    );
    daemon.start();
    assert_eq!(daemon.wait_exit().code(), Some(1));
    let log = daemon.log_tail();
    assert!(
        log.contains("branch store: no: the role cannot create") && log.contains("CREATEDB;"),
        "{log}"
    );

    // The grant script, run as printed, fixes it.
    let script = report["grant_script"].as_str().unwrap().to_owned();
    assert!(
        script.contains("ALTER ROLE \"tributary_store\" CREATEDB;"),
        "{script}"
    );
    store.psql("control", &script);
    let (code, report) = check_json(&daemon);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(status(&report, "CREATEDB"), "pass");
    daemon.cli_ok(&["connector", "create", "postgresql", &url, "--name", "app"]);
}

/// On 14 there is no grant for session_replication_role: the check says only a superuser
/// may, and passes for one.
#[tokio::test]
async fn a_pg14_store_role_must_be_a_superuser() {
    if !Path::new("/opt/tributary-pg/14").exists() && !Path::new("/usr/lib/postgresql/14").exists()
    {
        eprintln!("skipped: no PostgreSQL 14 installed");
        return;
    }
    let store = Cluster::builder().major(14).start();
    store.psql(
        "postgres",
        "CREATE ROLE tributary_store LOGIN CREATEDB CREATEROLE PASSWORD 'store pw';
         CREATE DATABASE control OWNER tributary_store;",
    );
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY__STORE__URL",
        &store.url("tributary_store", Some("store pw"), "control"),
    );
    let (code, shown) = text(&daemon.cli(&["store", "check"]));
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains("✗ session_replication_role")
            && shown.contains("on PostgreSQL 14 only a superuser may set it"),
        "{shown}"
    );
    assert!(
        !shown.contains("GRANT SET ON PARAMETER session_replication_role TO"),
        "{shown}"
    );
    store.psql("postgres", "ALTER ROLE tributary_store SUPERUSER");
    let (code, report) = check_json(&daemon);
    assert_eq!(code, Some(0), "{report}");
    // A superuser sees the data directory, on this machine: its free space is known.
    assert_eq!(status(&report, "free disk"), "pass", "{report}");
    assert_eq!(status(&report, "branch copy"), "pass", "{report}");
}

/// On 18, `file_copy_method = clone` is judged by the data directory's filesystem, which a
/// superuser's check on this machine can see; elsewhere it is said to be unknown.
#[tokio::test]
async fn a_pg18_store_with_clone_is_judged_by_its_filesystem() {
    if !Path::new("/opt/tributary-pg/18").exists() && !Path::new("/usr/lib/postgresql/18").exists()
    {
        eprintln!("skipped: no PostgreSQL 18 installed");
        return;
    }
    let store = Cluster::builder()
        .major(18)
        .setting("file_copy_method", "clone")
        .start();
    let daemon = Daemon::new(&store);
    let (code, report) = check_json(&daemon);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(status(&report, "free disk"), "pass", "{report}");
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(store.data_dir())
        .output()
        .unwrap();
    let filesystem = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let copy = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "branch copy")
        .unwrap()
        .clone();
    if matches!(filesystem.as_str(), "xfs" | "btrfs") {
        assert_eq!(copy["status"], "pass", "{copy}");
    } else {
        assert_eq!(copy["status"], "warn", "{copy}");
        let value = copy["value"].as_str().unwrap();
        assert!(value.contains(&filesystem), "{filesystem}: {copy}");
        assert!(
            copy["fix"]
                .as_str()
                .unwrap()
                .contains("file_copy_method = copy"),
            "{copy}"
        );
    }
}
