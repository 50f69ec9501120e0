//! `tributary connector create` against real servers: refused when preflight fails,
//! replica identity decisions (missing, from a file, the defaults) validated precisely,
//! and excluded tables neither snapshotted nor streamed.

use std::path::PathBuf;
use std::process::Output;

use crate::daemon::{content, Daemon};
use crate::harness::Cluster;
use crate::support::{eventually, has_output_plugin_libraries};

/// A finished CLI run: exit code and both streams.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    #[track_caller]
    fn assert_stderr(&self, text: &str) {
        assert!(
            self.stderr.contains(text),
            "{text:?} not in:\n{}",
            self.stderr
        );
    }
}

/// A source database `shop` with a keyed table and a keyless one, both with rows.
fn shop(cluster: &Cluster) {
    cluster.create_database("shop");
    cluster.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         CREATE TABLE keyless (a int, b text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g;
         INSERT INTO keyless SELECT g, 'row ' || g FROM generate_series(1, 20) g;",
    );
}

fn create(daemon: &Daemon, url: &str, extra: &[&str]) -> Run {
    let mut args = vec!["connector", "create", "postgresql", url, "--name", "shop"];
    args.extend_from_slice(extra);
    Run::from(daemon.cli(&args))
}

/// A decisions file in `dir` with `text`.
fn decisions_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[track_caller]
fn assert_no_connectors(daemon: &Daemon) {
    assert!(daemon.connectors().is_empty(), "{:?}", daemon.connectors());
}

#[test]
fn create_is_refused_when_preflight_fails() {
    let cluster = Cluster::builder().setting("wal_level", "replica").start();
    shop(&cluster);
    let daemon = Daemon::new(&cluster);
    let run = create(
        &daemon,
        &cluster.superuser_url("shop"),
        &["--accept-replica-identity-defaults"],
    );
    run.assert_code(1);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("✗ wal_level") && l.contains("replica")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("set wal_level = logical"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Connector shop not created"),
        "{}",
        run.stdout
    );
    // Only the failures are shown, and a keyless table is not one of them here.
    assert!(!run.stdout.contains("✓"), "{}", run.stdout);
    assert!(!run.stdout.contains("keyless"), "{}", run.stdout);
    assert_no_connectors(&daemon);
}

#[test]
fn keyless_tables_without_a_decision_or_a_terminal_exit_2() {
    let cluster = Cluster::start();
    shop(&cluster);
    let daemon = Daemon::new(&cluster);
    // `Command::output` gives the child no terminal on stdin.
    let run = create(&daemon, &cluster.superuser_url("shop"), &[]);
    run.assert_code(2);
    run.assert_stderr("1 table without a usable replica identity needs a decision");
    run.assert_stderr("\n  public.keyless\n");
    run.assert_stderr("--replica-identity-decisions FILE");
    run.assert_stderr("--accept-replica-identity-defaults");
    assert!(!run.stderr.contains("public.items"), "{}", run.stderr);
    assert_no_connectors(&daemon);
}

#[test]
fn decisions_files_are_validated_precisely() {
    let cluster = Cluster::start();
    shop(&cluster);
    let daemon = Daemon::new(&cluster);
    let url = cluster.superuser_url("shop");
    let dir = tempfile::tempdir().unwrap();
    let run_with = |name: &str, text: &str| {
        let path = decisions_file(&dir, name, text);
        let run = create(
            &daemon,
            &url,
            &["--replica-identity-decisions", path.to_str().unwrap()],
        );
        run.assert_code(2);
        run
    };

    let run = run_with("malformed.json", "{\n  \"public.keyless\": exclude\n}");
    run.assert_stderr("malformed JSON at line 2, column 21: expected value");
    let run = run_with("list.json", "[\"public.keyless\"]");
    run.assert_stderr("not a decisions object at line 1");
    let run = run_with("value.json", r#"{"public.keyless": "drop"}"#);
    run.assert_stderr(
        "\"public.keyless\": bad value \"drop\"; allowed: \"exclude\", \"add_pk\", \
         \"replica_identity_full\"",
    );
    let run = run_with(
        "unknown.json",
        r#"{"public.keyless": "exclude", "public.nope": "exclude", "items": "exclude"}"#,
    );
    run.assert_stderr("unknown table \"public.nope\": no such table in schema public");
    run.assert_stderr("unknown table \"items\"");
    let run = run_with(
        "keyed.json",
        r#"{"public.keyless": "exclude", "public.items": "add_pk"}"#,
    );
    run.assert_stderr("\"public.items\" has a usable replica identity and needs no decision");
    let run = run_with("empty.json", "{}");
    run.assert_stderr("undecided table without a usable replica identity: public.keyless");

    let missing = Run::from(daemon.cli(&[
        "connector",
        "create",
        "postgresql",
        &url,
        "--replica-identity-decisions",
        "/nonexistent/decisions.json",
    ]));
    missing.assert_code(2);
    missing.assert_stderr("cannot read the replica identity decisions file");
    assert_no_connectors(&daemon);
}

/// Content of `db`'s public tables, without the ones named in `without`.
fn public_content(cluster: &Cluster, db: &str, without: &[&str]) -> Vec<String> {
    content(cluster, db, &["public"])
        .into_iter()
        .filter(|line| {
            !without
                .iter()
                .any(|t| line.starts_with(&format!("public.{t} ")))
        })
        .collect()
}

async fn wait_equal(source: &Cluster, store: &Cluster, without: &[&str], daemon: &Daemon) {
    let expected = public_content(source, "shop", without);
    eventually("the replica to equal the source", || async {
        (public_content(store, "shop_replica", &[]) == expected).then_some(())
    })
    .await;
    let _ = daemon;
}

#[tokio::test]
async fn default_decisions_exclude_keyless_tables_from_snapshot_and_stream() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = Daemon::new(&store);
    let run = create(
        &daemon,
        &source.superuser_url("shop"),
        &["--accept-replica-identity-defaults"],
    );
    run.assert_code(0);
    assert!(
        run.stdout.contains("✓ Created connector shop (id "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("excluded (exclude):\n    public.keyless\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Next: "), "{}", run.stdout);

    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    wait_equal(&source, &store, &["keyless"], &daemon).await;
    source.psql(
        "shop",
        "INSERT INTO keyless VALUES (99, 'late');
         UPDATE keyless SET b = 'changed';
         INSERT INTO items VALUES (51, 'late');
         UPDATE items SET name = 'renamed' WHERE id <= 5;
         DELETE FROM items WHERE id = 6;",
    );
    wait_equal(&source, &store, &["keyless"], &daemon).await;
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT to_regclass('public.keyless') IS NULL"
        ),
        "t"
    );
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("streaming"));
    let listed = daemon.connectors();
    assert_eq!(
        listed[0]["excluded_tables"],
        serde_json::json!([{"table": "public.keyless", "decision": "exclude"}]),
        "{listed:?}"
    );
    let text = daemon.cli_ok(&["connector", "list"]);
    assert!(
        text.contains("warning: 1 table not replicated: public.keyless (exclude)"),
        "{text}"
    );
    daemon.terminate();
}

#[tokio::test]
async fn decided_tables_follow_their_decision() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    source.psql(
        "shop",
        "CREATE TABLE logs (at int, line text);
         CREATE TABLE later (a int);
         INSERT INTO logs SELECT g, 'line ' || g FROM generate_series(1, 30) g;
         INSERT INTO later VALUES (1);",
    );
    let mut daemon = Daemon::new(&store);
    let dir = tempfile::tempdir().unwrap();
    let path = decisions_file(
        &dir,
        "decisions.json",
        r#"{"public.keyless": "exclude", "public.logs": "replica_identity_full",
            "public.later": "add_pk"}"#,
    );
    let run = create(
        &daemon,
        &source.superuser_url("shop"),
        &["--replica-identity-decisions", path.to_str().unwrap()],
    );
    run.assert_code(0);
    let alter = "ALTER TABLE \"public\".\"logs\" REPLICA IDENTITY FULL;";
    assert!(run.stdout.contains(alter), "{}", run.stdout);
    assert!(run.stdout.contains("    public.later\n"), "{}", run.stdout);

    // The operator runs the statement before the snapshot; the key is not added yet.
    source.psql("shop", alter);
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    source.psql(
        "shop",
        "UPDATE logs SET line = 'updated' WHERE at <= 10;
         DELETE FROM logs WHERE at > 25;
         INSERT INTO later VALUES (2);
         INSERT INTO keyless VALUES (100, 'x');",
    );
    wait_equal(&source, &store, &["keyless", "later"], &daemon).await;
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT to_regclass('public.keyless') IS NULL AND to_regclass('public.later') IS NULL"
        ),
        "t"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT string_agg(table_name || ' ' || decision, ', ' ORDER BY table_name) \
             FROM tributary.connector_tables"
        ),
        "items include, keyless exclude, later add_pk, logs include"
    );
    daemon.terminate();
}

#[test]
fn on_a_terminal_each_keyless_table_is_asked_about() {
    let cluster = Cluster::start();
    shop(&cluster);
    cluster.psql("shop", "CREATE TABLE logs (at int, line text)");
    let daemon = Daemon::new(&cluster);
    let url = cluster.superuser_url("shop");
    // keyless: a typo, then add_pk; logs: replica_identity_full.
    let out = daemon.cli_on_terminal(
        &["connector", "create", "postgresql", &url, "--name", "shop"],
        "drop\na\nf\n",
    );
    let shown = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("2 tables without a usable replica identity"),
        "{shown}"
    );
    assert!(shown.contains("public.keyless [E/a/f]: "), "{shown}");
    assert!(
        shown.contains("\"drop\" is not a choice: e, a or f"),
        "{shown}"
    );
    assert!(shown.contains("public.logs [E/a/f]: "), "{shown}");
    assert!(
        shown.contains("ALTER TABLE \"public\".\"logs\" REPLICA IDENTITY FULL;"),
        "{shown}"
    );
    assert_eq!(
        cluster.psql(
            "postgres",
            "SELECT string_agg(table_name || ' ' || decision, ', ' ORDER BY table_name) \
             FROM tributary.table_decisions"
        ),
        "keyless add_pk, logs replica_identity_full"
    );

    // Input that ends before every table is decided creates nothing.
    cluster.create_database("other");
    cluster.psql("other", "CREATE TABLE keyless (a int)");
    let out = daemon.cli_on_terminal(
        &[
            "connector",
            "create",
            "postgresql",
            &cluster.superuser_url("other"),
        ],
        "",
    );
    let shown = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("no decision for public.keyless (end of input). Nothing was created."),
        "{shown}"
    );
    assert_eq!(daemon.connectors().len(), 1);
}

#[tokio::test]
async fn foreign_keys_into_tables_not_replicated_are_left_out_with_a_warning() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.create_database("shop");
    source.psql(
        "shop",
        "CREATE SCHEMA other;
         CREATE TABLE other.regions (id int PRIMARY KEY);
         CREATE TABLE codes (code text UNIQUE, label text);
         CREATE TABLE orders (id int PRIMARY KEY,
                              code text REFERENCES codes (code),
                              region int REFERENCES other.regions (id));
         COMMENT ON CONSTRAINT orders_code_fkey ON orders IS 'the order''s code';
         INSERT INTO other.regions VALUES (1);
         INSERT INTO codes VALUES ('a', 'A');
         INSERT INTO orders VALUES (1, 'a', 1), (2, NULL, NULL);",
    );
    let mut daemon = Daemon::new(&store);
    let url = source.superuser_url("shop");
    let preflight = Run::from(daemon.cli(&["connector", "preflight", "postgresql", &url]));
    preflight.assert_code(1); // public.codes has no replica identity
    assert!(
        preflight.stdout.contains(
            "1 references tables outside the selected schemas: \
             public.orders.orders_region_fkey → other.regions"
        ),
        "{}",
        preflight.stdout
    );
    let run = create(&daemon, &url, &["--accept-replica-identity-defaults"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains(
            "warning: foreign keys into tables that are not replicated are left out of the \
             replica and its branches: public.orders.orders_code_fkey → public.codes"
        ),
        "{}",
        run.stdout
    );

    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    source.psql("shop", "INSERT INTO orders VALUES (3, 'a', 1)");
    wait_equal(&source, &store, &["codes"], &daemon).await;
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT string_agg(conname, ' ' ORDER BY conname) FROM pg_constraint \
             WHERE conrelid = 'public.orders'::regclass AND contype <> 'n'"
        ),
        "orders_pkey"
    );
    daemon.terminate();
}

#[test]
fn a_database_in_the_way_of_the_replica_is_never_replaced() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    store.create_database("shop_replica");
    let daemon = Daemon::new(&store);
    let run = create(
        &daemon,
        &source.superuser_url("shop"),
        &["--accept-replica-identity-defaults"],
    );
    run.assert_code(1);
    run.assert_stderr("a database named shop_replica exists on the branch store already");
    assert_no_connectors(&daemon);
}

#[test]
fn create_is_refused_where_the_source_refuses_wal2json() {
    let cluster = Cluster::builder().refuse_wal2json().start();
    if !has_output_plugin_libraries(&cluster) {
        return;
    }
    shop(&cluster);
    let daemon = Daemon::new(&cluster);
    let run = create(
        &daemon,
        &cluster.superuser_url("shop"),
        &["--accept-replica-identity-defaults"],
    );
    run.assert_code(1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("✗ wal2json"))
        .unwrap_or_else(|| panic!("no wal2json line in\n{}", run.stdout));
    assert!(
        lines[at].contains(
            "refused: output_plugin_libraries is 'pgoutput, test_decoding', without wal2json"
        ),
        "{}",
        run.stdout
    );
    assert!(
        lines[at + 1]
            .contains("fix: as a superuser on the source, add wal2json to output_plugin_libraries")
            && lines[at + 1].contains(
                "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
             'wal2json'; SELECT pg_reload_conf();"
            ),
        "{}",
        run.stdout
    );
    // The grant script has the statement that computes the list on the server.
    assert!(
        run.stdout
            .contains("\n\\gexec\nSELECT pg_catalog.pg_reload_conf();\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Connector shop not created"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("REPLICATION attribute"),
        "{}",
        run.stdout
    );
    assert_no_connectors(&daemon);
    assert_eq!(
        cluster.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_refused_wal2json_fails_until_it_is_allowed() {
    let source = Cluster::start();
    if !has_output_plugin_libraries(&source) {
        return;
    }
    shop(&source);
    let store = Cluster::start();
    let mut daemon = Daemon::new(&store);
    let url = source.superuser_url("shop");
    create(&daemon, &url, &["--accept-replica-identity-defaults"]).assert_code(0);

    // Refused between create and the snapshot: the slot cannot be created.
    let set = |list: &str| {
        source.psql(
            "postgres",
            &format!("ALTER SYSTEM SET output_plugin_libraries = {list}; SELECT pg_reload_conf();"),
        )
    };
    set("'pgoutput', 'test_decoding'");
    daemon.start();
    daemon.wait_for_state("shop", "failed").await;
    let connector = daemon.connector("shop");
    let error = connector["last_error"].as_str().unwrap();
    let next_step = connector["next_step"].as_str().unwrap();
    assert!(
        error.contains("refuses wal2json as an output plugin at CREATE_REPLICATION_SLOT"),
        "{connector}"
    );
    assert!(
        next_step.contains(
            "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
             'wal2json'; SELECT pg_reload_conf(); Then run `tributary connector retry-setup \
             shop`, which starts the snapshot again."
        ),
        "{connector}"
    );

    set("'pgoutput', 'test_decoding', 'wal2json'");
    daemon.cli_ok(&["connector", "retry-setup", "shop", "--wait"]);
    source.psql("shop", "INSERT INTO items VALUES (51, 'after')");
    wait_equal(&source, &store, &["keyless"], &daemon).await;
    daemon.terminate();
}
