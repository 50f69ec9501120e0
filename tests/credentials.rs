//! New credentials for a connector (`connector update NAME --url`), and a connector whose
//! key is lost: the source's password changes, the connector fails naming the command that
//! fixes it, and the new URL resumes it from its slot (no new snapshot, every change
//! meanwhile exactly once); a URL of another cluster or database is refused; a connector
//! whose URL cannot be decrypted is deleted without its source, with the SQL to drop its
//! slot. No password is ever shown.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;

const OLD_PASSWORD: &str = "Old-Secret-4711";
const NEW_PASSWORD: &str = "New-Secret-0815";

/// A source whose role `repl` (REPLICATION, SELECT; no superuser) logs in with a password
/// that is checked (SCRAM), over SQL and replication connections.
fn source() -> Cluster {
    let source = Cluster::builder()
        .hba("host all repl 127.0.0.1/32 scram-sha-256")
        .hba("host replication repl 127.0.0.1/32 scram-sha-256")
        .start();
    source.psql(
        "postgres",
        &format!(
            "CREATE SCHEMA app;
             CREATE TABLE app.accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO app.accounts SELECT g, 0 FROM generate_series(1, 100) g;
             CREATE ROLE repl LOGIN REPLICATION PASSWORD '{OLD_PASSWORD}';
             GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
             GRANT USAGE ON SCHEMA app TO repl;
             GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;"
        ),
    );
    source
}

/// stdout and stderr, checked to carry neither password.
fn shown(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in [OLD_PASSWORD, NEW_PASSWORD, "Wrong-Secret-1234"] {
        assert!(!text.contains(secret), "a password is shown: {text}");
    }
    text
}

/// How many snapshots the connector started, the replica database's oid, and its slot.
fn setup_marks(store: &Cluster, source: &Cluster) -> String {
    let store_marks = store.psql(
        "postgres",
        "SELECT (SELECT count(*) FROM tributary.state_history WHERE to_state = 'snapshotting')
             || ' ' || (SELECT oid FROM pg_database WHERE datname = 'shop_replica')",
    );
    let slot = source.psql(
        "postgres",
        "SELECT string_agg(slot_name, ',')
           FROM pg_replication_slots",
    );
    format!("{store_marks} {slot}")
}

#[tokio::test]
async fn new_credentials_resume_the_connector_from_its_slot() {
    let source = source();
    let store = Cluster::start();
    let mut daemon = Daemon::new(&store);
    let old_url = source.url("repl", Some(OLD_PASSWORD), "postgres");
    daemon.create_connector(&old_url, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    let marks = setup_marks(&store, &source);
    assert!(marks.starts_with("1 "), "{marks}");

    // The password changes; the next connection of the pipeline is refused.
    source.psql(
        "postgres",
        &format!(
            "ALTER ROLE repl PASSWORD '{NEW_PASSWORD}';
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'repl';"
        ),
    );
    daemon.wait_for_state("shop", "failed").await;
    let failed = daemon.connector("shop");
    let next_step = failed["next_step"].as_str().unwrap_or_default();
    assert!(
        next_step.contains("tributary connector update shop --url"),
        "{failed}"
    );
    assert!(!next_step.contains("restart tributary"), "{failed}");
    // Written while the connector cannot connect.
    source.psql(
        "postgres",
        "UPDATE app.accounts SET balance = balance + 7 WHERE id <= 10;
         INSERT INTO app.accounts SELECT g, g FROM generate_series(101, 150) g;
         DELETE FROM app.accounts WHERE id = 50;",
    );

    // A wrong password, another cluster, another database: refused, nothing changed.
    let before = store.psql(
        "postgres",
        "SELECT source_display || ' ' || md5(source_url_ciphertext) FROM tributary.connectors",
    );
    let wrong = daemon.cli(&[
        "connector",
        "update",
        "shop",
        "--url",
        &source.url("repl", Some("Wrong-Secret-1234"), "postgres"),
    ]);
    assert_eq!(wrong.status.code(), Some(1), "{}", shown(&wrong));
    let text = shown(&wrong);
    assert!(
        text.contains("replication connection with the new URL does not work")
            && text.contains("nothing was changed"),
        "{text}"
    );
    let other = Cluster::start();
    let system = |cluster: &Cluster| {
        cluster.psql(
            "postgres",
            "SELECT system_identifier FROM pg_control_system()",
        )
    };
    let out = daemon.cli(&[
        "connector",
        "update",
        "shop",
        "--url",
        &other.superuser_url("postgres"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = shown(&out);
    for needle in [
        format!("system {}", system(&other)),
        format!("system {}", system(&source)),
        "nothing was changed".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle}: {text}");
    }
    source.create_database("other");
    source.psql("other", "GRANT CONNECT ON DATABASE other TO repl");
    let out = daemon.cli(&[
        "connector",
        "update",
        "shop",
        "--url",
        &source.url("repl", Some(NEW_PASSWORD), "other"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = shown(&out);
    assert!(
        text.contains("database \"other\"") && text.contains("database \"postgres\""),
        "{text}"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT source_display || ' ' || md5(source_url_ciphertext) FROM tributary.connectors",
        ),
        before
    );
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("failed"));

    // A password from PGPASSWORD would pass the check and not be stored: refused.
    let mut from_env = daemon.sibling();
    from_env.set("PGPASSWORD", NEW_PASSWORD);
    let out = from_env.cli(&[
        "connector",
        "update",
        "shop",
        "--url",
        &source.url("repl", None, "postgres"),
    ]);
    let text = shown(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("its password would come from PGPASSWORD") && !text.contains(NEW_PASSWORD),
        "{text}"
    );
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("failed"));

    // The new password: stored sealed, and the pipeline resumes where it was.
    let new_url = source.url("repl", Some(NEW_PASSWORD), "postgres");
    let out = daemon.cli(&["connector", "update", "shop", "--url", &new_url, "--wait"]);
    let text = shown(&out);
    assert!(out.status.success(), "{text}\n{}", daemon.log_tail());
    assert!(
        text.contains("same source") && text.contains("without a new snapshot"),
        "{text}"
    );
    daemon.wait_for_state("shop", "streaming").await;
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    assert_eq!(
        setup_marks(&store, &source),
        marks,
        "no new snapshot, same slot"
    );
    let stored = store.psql(
        "postgres",
        "SELECT source_display || ' ' || encode(source_url_ciphertext, 'escape')
           FROM tributary.connectors",
    );
    assert!(
        !stored.contains(NEW_PASSWORD) && stored.contains(":****@"),
        "{stored}"
    );
    let list = daemon.cli(&["connector", "list", "--format", "json"]);
    shown(&list);
    // And it goes on streaming with the new credentials.
    source.psql(
        "postgres",
        "INSERT INTO app.accounts SELECT g, 1 FROM generate_series(151, 160) g",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    // While it streams, too: the running pipeline starts again with the URL, from its slot.
    let pendings = "SELECT count(*) FROM tributary.state_history WHERE to_state = 'pending'";
    let before = store.psql("postgres", pendings);
    let out = daemon.cli(&["connector", "update", "shop", "--url", &new_url, "--wait"]);
    assert!(out.status.success(), "{}", shown(&out));
    assert_ne!(
        store.psql("postgres", pendings),
        before,
        "the pipeline restarted"
    );
    source.psql(
        "postgres",
        "UPDATE app.accounts SET balance = -1 WHERE id > 150",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    assert_eq!(
        setup_marks(&store, &source),
        marks,
        "no new snapshot, same slot"
    );
    let log = fs::read_to_string(daemon.log_path()).unwrap();
    for secret in [OLD_PASSWORD, NEW_PASSWORD] {
        assert!(!log.contains(secret), "the daemon logged a password");
    }
    daemon.terminate();
}

#[tokio::test]
async fn a_connector_whose_key_is_lost_is_deleted_without_its_source() {
    let source = source();
    let store = Cluster::start();
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(
        &source.url("repl", Some(OLD_PASSWORD), "postgres"),
        "shop",
        "app",
    );
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    // A branch, whose role's password is sealed with the key too.
    daemon.cli_ok(&["branch", "create", "kept"]);
    daemon.terminate();
    let slot = daemon.connector("shop")["slot_name"]
        .as_str()
        .unwrap()
        .to_owned();

    // The key is lost: another key is all there is.
    let dir = tempfile::tempdir().unwrap();
    let other_key = dir.path().join("other.key");
    fs::write(&other_key, format!("{}\n", "cd".repeat(32))).unwrap();
    fs::set_permissions(&other_key, fs::Permissions::from_mode(0o600)).unwrap();
    let mut lost = daemon.sibling();
    lost.set(
        "TRIBUTARY__SECRETS__KEY_FILE",
        &other_key.display().to_string(),
    );
    // Without --force: nothing deleted, and the way named.
    let out = lost.cli(&["connector", "delete", "shop"]);
    let text = shown(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("this is not the key"), "{text}");
    assert!(store.psql("postgres", "SELECT count(*) FROM tributary.connectors") == "1");

    let out = lost.cli(&["connector", "delete", "shop", "--force"]);
    let text = shown(&out);
    assert!(out.status.success(), "{text}");
    let drop_sql = format!("SELECT pg_drop_replication_slot('{slot}');");
    assert!(
        text.contains(&drop_sql) && text.contains("source was not touched"),
        "{text}"
    );
    let left = "SELECT (SELECT count(*) FROM tributary.connectors) || ' '
                 || (SELECT count(*) FROM pg_database WHERE datname = 'shop_replica')
                 || ' ' || coalesce((SELECT key_fingerprint FROM tributary.installation), 'none')";
    // The branch's sealed password keeps the key's fingerprint: a new key now would leave
    // `branch url kept` unable to open it.
    assert!(store.psql("postgres", left).starts_with("0 0 "));
    assert_ne!(store.psql("postgres", left), "0 0 none");
    let out = lost.cli(&["branch", "delete", "kept"]);
    assert!(out.status.success(), "{}", shown(&out));
    assert_eq!(store.psql("postgres", left), "0 0 none");
    // The source was not touched: the slot is there until the operator runs the SQL.
    let slots = "SELECT count(*) FROM pg_replication_slots";
    assert_eq!(source.psql("postgres", slots), "1");
    source.psql("postgres", &drop_sql);
    assert_eq!(source.psql("postgres", slots), "0");

    // With no sealed URL left, the key at hand seals the next connector's.
    lost.create_connector(
        &source.url("repl", Some(OLD_PASSWORD), "postgres"),
        "shop",
        "app",
    );
    lost.start();
    lost.wait_for_state("shop", "streaming").await;
    wait_replica(&source, &store, "shop", &["app"], &lost).await;
    lost.terminate();
}
