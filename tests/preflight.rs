//! `tributary connector preflight` against servers set up to fail one check each: the
//! expected ✗ line, its fix, exit code 1, no password in the output and no slot left
//! behind; and the grant script's round trip from failing to passing.

use std::net::TcpListener;
use std::process::{Command, Output};

use tempfile::TempDir;

use crate::daemon::Daemon;
use crate::harness::*;
use crate::support::has_output_plugin_libraries;

/// The password of every role these tests create: it must never appear in any output.
const PASSWORD: &str = "pf-s3cret-pw";

/// A finished `tributary connector preflight` run.
struct Run {
    code: Option<i32>,
    stdout: String,
}

impl Run {
    fn from(output: Output) -> Run {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        for secret in [PASSWORD, "not-the-pw-s3cr3t"] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "the password leaked:\n{stdout}\n{stderr}"
            );
        }
        Run {
            code: output.status.code(),
            stdout,
        }
    }

    /// Asserts that the check `name` has the status `mark`, with `value` in its line and
    /// `fix` on the line after it.
    #[track_caller]
    fn assert_line(&self, mark: char, name: &str, value: &str, fix: Option<&str>) {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(&format!("{mark} {name} ")))
            .unwrap_or_else(|| panic!("no `{mark} {name}` line in\n{}", self.stdout));
        assert!(lines[at].contains(value), "{:?} lacks {value:?}", lines[at]);
        if let Some(fix) = fix {
            let next = lines.get(at + 1).copied().unwrap_or_default();
            assert!(
                next.trim_start().starts_with("fix: "),
                "no fix after {:?}",
                lines[at]
            );
            assert!(next.contains(fix), "{next:?} lacks {fix:?}");
        }
    }

    /// The grant script printed after the checklist.
    #[track_caller]
    fn grant_script(&self) -> String {
        let (_, script) = self
            .stdout
            .split_once("then run preflight again.\n\n")
            .unwrap_or_else(|| panic!("no grant script in\n{}", self.stdout));
        script.to_owned()
    }

    #[track_caller]
    fn assert_failed(&self) {
        assert_eq!(self.code, Some(1), "{}", self.stdout);
        assert!(
            self.stdout.contains("✗ Preflight failed"),
            "{}",
            self.stdout
        );
    }
}

/// Runs preflight in an empty directory without a branch store, as an operator would
/// before configuring one.
fn preflight(url: &str, extra: &[&str]) -> Run {
    let dir = TempDir::new().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .current_dir(dir.path())
        .env_remove("TRIBUTARY__STORE__URL")
        .args(["connector", "preflight", "postgresql", url])
        .args(extra)
        .output()
        .unwrap();
    Run::from(output)
}

/// Preflight opens no slot but temporary ones, and those end with its sessions.
#[track_caller]
fn assert_no_slots(cluster: &Cluster) {
    assert_eq!(
        cluster.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
}

/// A pg_hba.conf line that makes `role` log in with its password over TCP.
fn scram(role: &str) -> String {
    format!("host all {role} 127.0.0.1/32 scram-sha-256")
}

#[test]
fn each_missing_privilege_or_key_fails_with_a_fix() {
    let cluster = Cluster::builder()
        .hba(&scram("norepl"))
        .hba(&scram("partial"))
        .start();
    cluster.create_database("shop");
    cluster.psql(
        "shop",
        &format!(
            "CREATE ROLE owner NOLOGIN;
             CREATE TABLE orders (id int PRIMARY KEY, total numeric);
             ALTER TABLE orders OWNER TO owner;
             CREATE TABLE items (id int PRIMARY KEY);
             CREATE ROLE norepl LOGIN PASSWORD '{PASSWORD}';
             CREATE ROLE partial LOGIN REPLICATION PASSWORD '{PASSWORD}';
             GRANT CREATE ON DATABASE shop TO norepl, partial;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO norepl;
             GRANT SELECT ON orders TO partial;"
        ),
    );

    // A role without REPLICATION: the probe needs it, so it is skipped.
    let run = preflight(&cluster.url("norepl", Some(PASSWORD), "shop"), &[]);
    run.assert_failed();
    run.assert_line(
        '✗',
        "replication privilege",
        "role norepl has neither REPLICATION nor SUPERUSER",
        Some("ALTER ROLE \"norepl\" REPLICATION;"),
    );
    run.assert_line(
        '-',
        "wal2json",
        "skipped: needs the REPLICATION privilege",
        None,
    );
    run.assert_line('✓', "schema public", "SELECT on its 2 tables", None);
    assert!(
        run.grant_script()
            .contains("\nALTER ROLE \"norepl\" REPLICATION;\n"),
        "{}",
        run.stdout
    );

    // A role that may read one table of two.
    let run = preflight(&cluster.url("partial", Some(PASSWORD), "shop"), &[]);
    run.assert_failed();
    run.assert_line(
        '✗',
        "schema public",
        "missing SELECT on table public.items",
        Some("GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"partial\";"),
    );
    run.assert_line('✓', "replication privilege", "REPLICATION", None);
    run.assert_line('✓', "wal2json", "created and dropped", None);
    let script = run.grant_script();
    assert!(
        script.contains(
            "\nALTER DEFAULT PRIVILEGES FOR ROLE \"owner\" IN SCHEMA \"public\" GRANT SELECT ON \
             TABLES TO \"partial\";\n"
        ),
        "{script}"
    );
    assert!(!script.contains("ALTER ROLE"), "{script}");

    // Tables without a usable replica identity, one line each.
    cluster.create_database("keys");
    cluster.psql(
        "keys",
        "CREATE TABLE keyless (a int, b text);
         CREATE TABLE coded (code text NOT NULL UNIQUE, note text);
         CREATE TABLE fine (id int PRIMARY KEY);",
    );
    let run = preflight(&cluster.superuser_url("keys"), &[]);
    run.assert_failed();
    run.assert_line(
        '✗',
        "replica identity public.keyless",
        "no primary key and no unique index on NOT NULL columns",
        Some("ALTER TABLE \"public\".\"keyless\" REPLICA IDENTITY FULL;"),
    );
    run.assert_line(
        '✗',
        "replica identity public.coded",
        "unique index coded_code_key could serve",
        Some("ALTER TABLE \"public\".\"coded\" REPLICA IDENTITY USING INDEX \"coded_code_key\";"),
    );
    // A superuser lacks no grant: replica identities are for the operator to decide.
    assert!(!run.stdout.contains("Grant script"), "{}", run.stdout);
    assert_no_slots(&cluster);
}

#[test]
fn the_grant_script_turns_a_failing_source_into_a_passing_one() {
    let cluster = Cluster::builder()
        .setting("wal_level", "replica")
        .hba(&scram("app"))
        .start();
    cluster.create_database("shop");
    cluster.psql(
        "shop",
        &format!(
            "CREATE ROLE owner NOLOGIN;
             CREATE ROLE app LOGIN PASSWORD '{PASSWORD}';
             CREATE SCHEMA \"Billing Dept\" AUTHORIZATION owner;
             CREATE TABLE orders (id serial PRIMARY KEY, total numeric);
             ALTER TABLE orders OWNER TO owner;
             CREATE TABLE notes (id int PRIMARY KEY, body text);
             CREATE TABLE \"Billing Dept\".invoices (id int PRIMARY KEY);
             ALTER TABLE \"Billing Dept\".invoices OWNER TO owner;"
        ),
    );
    let url = cluster.url("app", Some(PASSWORD), "shop");
    let schemas = ["--schemas", "public,Billing Dept"];

    let run = preflight(&url, &schemas);
    run.assert_failed();
    run.assert_line(
        '✗',
        "wal_level",
        "replica",
        Some("set wal_level = logical and restart the server"),
    );
    run.assert_line('✗', "replication privilege", "neither REPLICATION", None);
    run.assert_line(
        '✗',
        "schema public",
        "missing SELECT on tables public.notes, public.orders; SELECT on sequence \
         public.orders_id_seq",
        Some("GRANT SELECT ON ALL SEQUENCES IN SCHEMA \"public\" TO \"app\";"),
    );
    run.assert_line(
        '✗',
        "schema Billing Dept",
        "missing USAGE; SELECT on table Billing Dept.invoices",
        Some("GRANT USAGE ON SCHEMA \"Billing Dept\" TO \"app\";"),
    );
    run.assert_line('✗', "create on database", "missing on database shop", None);
    run.assert_line('-', "wal2json", "skipped: needs wal_level = logical", None);
    let script = run.grant_script();
    for line in [
        "GRANT CONNECT, CREATE ON DATABASE \"shop\" TO \"app\";",
        "ALTER DEFAULT PRIVILEGES FOR ROLE \"owner\" IN SCHEMA \"Billing Dept\" GRANT SELECT \
         ON TABLES TO \"app\";",
        "ALTER DEFAULT PRIVILEGES FOR ROLE \"postgres\" IN SCHEMA \"public\" GRANT SELECT ON \
         SEQUENCES TO \"app\";",
        "ALTER ROLE \"app\" REPLICATION;",
        "\\gexec",
    ] {
        assert!(
            script.lines().any(|l| l == line),
            "no {line:?} in\n{script}"
        );
    }

    // As the operator would: run it as a superuser, restart for wal_level, check again.
    cluster.psql("postgres", &script);
    cluster.restart();
    let run = preflight(&url, &[&schemas[..], &["--format", "json"][..]].concat());
    let report: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", run.stdout));
    assert_eq!(run.code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["grant_script"], serde_json::Value::Null);
    let checks = report["checks"].as_array().unwrap();
    let status = |name: &str| {
        let check = checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {report:#}"));
        (
            check["status"].as_str().unwrap(),
            check["value"].as_str().unwrap(),
        )
    };
    assert_eq!(status("wal_level"), ("pass", "logical"));
    assert_eq!(status("replication privilege").0, "pass");
    assert_eq!(status("schema Billing Dept").0, "pass");
    assert_eq!(status("wal2json").0, "pass");
    // Not a superuser, so no event triggers: a warning, not a failure.
    assert_eq!(status("event triggers").0, "warn");
    let (duplicate, why) = status("duplicate source");
    assert_eq!(duplicate, "skip");
    assert!(why.contains("no branch store configured"), "{why}");
    for check in checks {
        assert!(check["status"] != "fail", "{check}");
        assert!(check.get("fix").is_some(), "{check}");
    }

    // Running the script again changes nothing and is harmless.
    cluster.psql("postgres", &script);
    assert_no_slots(&cluster);
}

#[test]
fn all_slots_in_use_fails_and_skips_the_probe() {
    let cluster = Cluster::builder()
        .setting("max_replication_slots", 2)
        .start();
    cluster.psql(
        "postgres",
        "SELECT pg_create_logical_replication_slot('busy_1', 'wal2json');
         SELECT pg_create_logical_replication_slot('busy_2', 'wal2json');",
    );
    let run = preflight(&cluster.superuser_url("postgres"), &[]);
    run.assert_failed();
    run.assert_line(
        '✗',
        "replication slots",
        "2/2 used, none free",
        Some("SELECT pg_drop_replication_slot('busy_1');"),
    );
    run.assert_line(
        '-',
        "wal2json",
        "skipped: no replication slot is free",
        None,
    );
    let script = run.grant_script();
    assert!(
        script.contains("ALTER SYSTEM SET max_replication_slots = 10"),
        "{script}"
    );
    assert_eq!(
        cluster.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "2"
    );
}

#[test]
fn a_wrong_password_fails_authentication_after_tls() {
    let cluster = Cluster::builder().password_auth().tls().start();
    let url = format!(
        "{}?sslmode=require",
        cluster.url(SCRAM_USER, Some("not-the-pw-s3cr3t"), "postgres")
    );
    let run = preflight(&url, &[]);
    run.assert_failed();
    run.assert_line('✓', "tcp reachable", &cluster.port().to_string(), None);
    run.assert_line(
        '✓',
        "tls",
        "TLSv1.3, certificate not verified (sslmode=require)",
        None,
    );
    run.assert_line(
        '✗',
        "authentication",
        "password authentication failed for user \"scram_user\"",
        Some("check the user name and password in the URL"),
    );
    run.assert_line('-', "wal_level", "skipped: not logged in", None);
    assert!(!run.stdout.contains("Grant script"), "{}", run.stdout);
}

#[test]
fn an_unreachable_port_fails_tcp_and_skips_the_rest() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let run = preflight(
        &format!("postgresql://app:{PASSWORD}@127.0.0.1:{port}/shop"),
        &["--schemas", "public,billing"],
    );
    run.assert_failed();
    run.assert_line(
        '✗',
        "tcp reachable",
        &format!("could not connect to 127.0.0.1:{port}"),
        Some("check the host and port in the URL"),
    );
    for name in [
        "tls",
        "authentication",
        "schema billing",
        "duplicate source",
    ] {
        run.assert_line('-', name, "skipped: the server is not reachable", None);
    }
    assert!(
        run.stdout.contains("1 required check failed"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_second_connector_on_the_same_database_is_a_duplicate() {
    let cluster = Cluster::start();
    cluster.create_database("shop");
    cluster.psql("shop", "CREATE TABLE items (id int PRIMARY KEY)");
    // The branch store is the same cluster's postgres database.
    let daemon = Daemon::new(&cluster);
    let url = cluster.superuser_url("shop");
    daemon.cli_ok(&["connector", "create", "postgresql", &url, "--name", "shop"]);

    let run = Run::from(daemon.cli(&["connector", "preflight", "postgresql", &url]));
    run.assert_failed();
    run.assert_line(
        '✗',
        "duplicate source",
        "connector shop already replicates database shop",
        Some("tributary connector delete shop"),
    );
    // Another database of the same cluster is not a duplicate.
    cluster.create_database("other");
    let run = Run::from(daemon.cli(&[
        "connector",
        "preflight",
        "postgresql",
        &cluster.superuser_url("other"),
    ]));
    run.assert_line(
        '✓',
        "duplicate source",
        "(1 connector on the branch store)",
        None,
    );
    assert_no_slots(&cluster);
}

#[test]
fn a_physical_standby_before_16_is_refused_as_a_source() {
    let primary = Cluster::start();
    let standby = primary.start_standby();
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    let run = preflight(&standby.superuser_url("postgres"), &[]);
    run.assert_failed();
    run.assert_line(
        '✗',
        "primary or standby",
        "no: this server is a standby, and PostgreSQL 15 decodes only on a primary (16 and \
         newer decode on standbys too)",
        Some("point the URL at the primary"),
    );
    assert_no_slots(&primary);
}

#[test]
fn output_plugin_libraries_without_wal2json_is_named_and_the_script_adds_it_to_the_list() {
    let cluster = Cluster::builder()
        .refuse_wal2json()
        .hba(&scram("app"))
        .start();
    if !has_output_plugin_libraries(&cluster) {
        return;
    }
    cluster.create_database("shop");
    cluster.psql(
        "shop",
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, price numeric);
             CREATE ROLE app LOGIN REPLICATION PASSWORD '{PASSWORD}';
             GRANT CREATE ON DATABASE shop TO app;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO app;"
        ),
    );

    // The superuser reads the default list: the exact statement, no word of REPLICATION.
    let run = preflight(&cluster.superuser_url("shop"), &[]);
    run.assert_failed();
    run.assert_line(
        '✗',
        "wal2json",
        "refused: output_plugin_libraries is 'pgoutput, test_decoding', without wal2json \
         (ERROR 42501: library \"wal2json\" may not be used as an output plugin)",
        Some(
            "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
             'wal2json'; SELECT pg_reload_conf();",
        ),
    );
    run.assert_line(
        '-',
        "numeric-data-types-as-string",
        "skipped: the source refuses wal2json",
        None,
    );
    assert!(
        run.stdout.contains("1 required check failed"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("REPLICATION attribute"),
        "{}",
        run.stdout
    );
    let script = run.grant_script();
    assert!(
        script.contains(
            "\n-- As preflight read it: ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', \
             'test_decoding', 'wal2json';\n"
        ),
        "{script}"
    );

    // A list with more entries, one of them needing quotes; the replication role may not
    // read it.
    cluster.psql(
        "postgres",
        "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'decoder_raw', \
         'test_decoding', 'My Plugin';
         SELECT pg_reload_conf();",
    );
    let show = || cluster.psql("postgres", "SHOW output_plugin_libraries");
    let before = r#"pgoutput, decoder_raw, test_decoding, "My Plugin""#;
    eventually_equal(show, before);
    let url = cluster.url("app", Some(PASSWORD), "shop");
    let run = preflight(&url, &[]);
    run.assert_failed();
    run.assert_line(
        '✗',
        "wal2json",
        "refused by the source's output_plugin_libraries, which does not list wal2json \
         (ERROR 42501: library \"wal2json\" may not be used as an output plugin)",
        Some(
            "This role may not read the list (that needs superuser or pg_read_all_settings): \
             the grant script below computes the statement from the server's list",
        ),
    );
    assert!(
        !run.stdout.contains("REPLICATION attribute"),
        "{}",
        run.stdout
    );
    let script = run.grant_script();
    assert!(!script.contains("As preflight read it"), "{script}");

    // As the operator would: run it as a superuser and check again; no restart.
    cluster.psql("postgres", &script);
    let after = format!("{before}, wal2json");
    eventually_equal(show, &after);
    let run = preflight(&url, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    run.assert_line('✓', "wal2json", "created and dropped", None);
    // Running it again adds nothing.
    cluster.psql("postgres", &script);
    eventually_equal(show, &after);
    assert_no_slots(&cluster);
}

/// Waits briefly for `read` to say `expected`: a reload reaches the sessions that are
/// started after it at once, but is applied by the postmaster asynchronously.
#[track_caller]
fn eventually_equal(read: impl Fn() -> String, expected: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = read();
        if got == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{got:?} is not {expected:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A logical walsender streaming from the source (another tool's, or tributary's own) is
/// not a standby: the failover line does not warn about standbys that do not exist.
#[test]
fn logical_walsenders_are_not_taken_for_standbys() {
    let cluster = Cluster::start();
    let url = cluster.superuser_url("postgres");
    let mut receiver = Command::new(cluster.bindir().join("pg_recvlogical"))
        .args([
            "--create-slot",
            "--start",
            "--if-not-exists",
            "-S",
            "other_tool",
        ])
        .args(["-P", "test_decoding", "-f", "/dev/null", "-d", &url])
        .spawn()
        .expect("pg_recvlogical");
    eventually_equal(
        || {
            cluster.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s \
                 ON s.active_pid = r.pid WHERE s.slot_name = 'other_tool'",
            )
        },
        "1",
    );
    let run = preflight(&url, &[]);
    let _ = receiver.kill();
    let _ = receiver.wait();
    run.assert_line('✓', "failover", "no standby streams from this server", None);
}
