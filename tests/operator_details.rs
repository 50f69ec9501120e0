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

fn tributary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
}

/// `connector preflight` in an empty directory (no branch store), with `extra` arguments:
/// exit code and stdout.
fn preflight(url: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = tributary()
        .current_dir(dir.path())
        .env_remove("TRIBUTARY__STORE__URL")
        .args(["connector", "preflight", "postgresql", url])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), format!("{stdout}{stderr}"))
}

/// A "preflight must pass" gate can pass for a source with a table one means to exclude:
/// preflight takes `connector create`'s decision flags and judges with them.
#[test]
fn preflight_passes_a_keyless_table_with_an_exclude_decision() {
    let cluster = Cluster::start();
    cluster.create_database("shop");
    cluster.psql(
        "shop",
        "CREATE TABLE keyed (id int PRIMARY KEY);
         CREATE TABLE keyless (a int, b text);",
    );
    let url = cluster.superuser_url("shop");
    let (code, out) = preflight(&url, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("✗ replica identity public.keyless"), "{out}");

    let (code, out) = preflight(&url, &["--accept-replica-identity-defaults"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("! replica identity public.keyless"), "{out}");
    assert!(out.contains("decided: exclude"), "{out}");
    assert!(
        out.contains("--schemas public --accept-replica-identity-defaults"),
        "the next command carries the flag: {out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("decisions.json");
    std::fs::write(&file, r#"{"public.keyless": "exclude"}"#).unwrap();
    let file = file.display().to_string();
    let (code, out) = preflight(
        &url,
        &["--replica-identity-decisions", &file, "--format", "json"],
    );
    assert_eq!(code, Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], true, "{out}");

    // A file that leaves the table undecided is refused, as `connector create` refuses it.
    std::fs::write(&file, "{}").unwrap();
    let (code, out) = preflight(&url, &["--replica-identity-decisions", &file]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("undecided table"), "{out}");
}

/// REPLICA IDENTITY NOTHING on a table with a primary key: the fix is REPLICA IDENTITY
/// DEFAULT, not a key to add.
#[test]
fn replica_identity_nothing_with_a_key_is_fixed_by_default() {
    let cluster = Cluster::start();
    cluster.psql(
        "postgres",
        "CREATE TABLE muted (id int PRIMARY KEY);
         ALTER TABLE muted REPLICA IDENTITY NOTHING;",
    );
    let (code, out) = preflight(&cluster.superuser_url("postgres"), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("fix: ALTER TABLE \"public\".\"muted\" REPLICA IDENTITY DEFAULT;"),
        "{out}"
    );
    assert!(!out.contains("add a primary key"), "{out}");
}

/// `tributary status` in an empty directory with the configuration file `toml` and the
/// environment `env`: exit code, stderr, and how long it took.
fn status_with(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String, std::time::Duration) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tributary.toml");
    std::fs::write(&config, toml).unwrap();
    let mut command = tributary();
    command
        .current_dir(dir.path())
        .env_remove("TRIBUTARY__STORE__URL")
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(&config)
        .arg("status");
    for (k, v) in env {
        command.env(k, v);
    }
    let started = std::time::Instant::now();
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr, started.elapsed())
}

/// Configuration mistakes are refused (exit 2) naming the key and what it may be, and
/// only a missing store.url asks for one.
#[test]
fn configuration_mistakes_name_the_key_and_the_choices() {
    const STORE: &str = "[store]\nurl = \"postgresql://u@127.0.0.1:1/db\"\n";
    for (toml, env, expected) in [
        (
            format!("{STORE}surprise = 1\n"),
            &[][..],
            "error: unknown key store.surprise: the keys of [store] are url",
        ),
        (
            STORE.to_owned(),
            &[("TRIBUTARY__LOG__LEVL", "debug")][..],
            "error: unknown key log.levl (set by TRIBUTARY__LOG__LEVL): the keys of [log] are \
             level, format",
        ),
        (
            format!("{STORE}[log]\nlevel = \"verbose\"\n"),
            &[][..],
            "log.level: \"verbose\" is not a level: use one of off, error, warn, info, debug, \
             trace",
        ),
        // RUST_LOG wins over log.level: the same check.
        (
            STORE.to_owned(),
            &[("RUST_LOG", "verbose")][..],
            "RUST_LOG: \"verbose\" is not a level: use one of off, error, warn, info, debug, \
             trace",
        ),
        (
            format!("{STORE}[log]\nformat = \"yaml\"\n"),
            &[][..],
            "log.format: must be \"text\" or \"json\"",
        ),
        (
            "[log]\nlevel = \"info\"\n".to_owned(),
            &[][..],
            "error: store.url is not set",
        ),
    ] {
        let (code, stderr, _) = status_with(&toml, env);
        assert_eq!(code, Some(2), "{toml:?} {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{toml:?} {env:?}: {stderr}");
        if !expected.contains("store.url") {
            assert!(!stderr.contains("store.url"), "{stderr}");
        }
    }
}

/// A branch store whose port is closed answers at once with its address and what to
/// check, not "pool timed out" after the connect timeout.
#[test]
fn a_closed_store_port_is_named_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!("[store]\nurl = \"postgresql://u@127.0.0.1:{port}/db\"\n");
    let (code, stderr, took) = status_with(&toml, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to the bookkeeping database at 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("check store.url (or TRIBUTARY__STORE__URL) and that PostgreSQL is running"),
        "{stderr}"
    );
    assert!(!stderr.contains("timed out"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
}

/// `status --watch` on a terminal redraws its own lines, leaving what was printed above
/// it (the quickstart's branch URL and psql command) on the screen.
#[test]
fn status_watch_on_a_terminal_redraws_in_place_without_clearing_the_screen() {
    let store = Cluster::start();
    let daemon = Daemon::new(&store);
    daemon.cli_ok(&["migrate"]);
    let dir = tempfile::tempdir().unwrap();
    let line = format!(
        "echo above; timeout -s INT 3.5 {} status --watch 1",
        env!("CARGO_BIN_EXE_tributary")
    );
    let out = std::process::Command::new("script")
        .current_dir(dir.path())
        .env("TRIBUTARY__STORE__URL", store.superuser_url("postgres"))
        .env("RUST_LOG", "warn")
        .args(["-q", "-c", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux script");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("above"), "{screen:?}");
    assert!(
        !screen.contains("\x1b[2J"),
        "the screen was cleared: {screen:?}"
    );
    let looks = screen.matches("(every 1 s; Ctrl-C to stop)").count();
    assert!(looks >= 2, "{screen:?}");
    // Each look after the first goes back over the last one's rows (2: time, no
    // connectors) and erases them.
    assert_eq!(
        screen.matches("\x1b[2F\x1b[J").count(),
        looks - 1,
        "{screen:?}"
    );
}
