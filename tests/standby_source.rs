//! A connector whose source is a physical standby (PostgreSQL 16+ decodes on standbys), to
//! keep the load off the primary: snapshot and stream come from the standby, and the
//! replica equals the primary's data, schema changes included (the capture installed on
//! the primary). Preflight names what the standby needs, and refuses before 16.

use std::time::Duration;

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;
use crate::support::repl_source;

const PASSWORD: &str = "Standby-Secret-7719";

async fn a_standby_is_a_source(major: u32) {
    let primary = repl_source(
        Some(major),
        PASSWORD,
        "CREATE TABLE app.items (id bigint PRIMARY KEY, label text NOT NULL);
         INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 200) g;",
    );
    primary.psql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('standby1');",
    );
    let standby = primary.start_standby();
    standby.psql(
        "postgres",
        "ALTER SYSTEM SET primary_slot_name = 'standby1';
         ALTER SYSTEM SET hot_standby_feedback = on;
         SELECT pg_reload_conf();",
    );
    let store = Cluster::builder().major(major).start();
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY_PG_BINDIR",
        &primary.bindir().display().to_string(),
    );
    let url = standby.url("repl", Some(PASSWORD), "postgres");
    // The schema change capture, installed on the primary by its superuser as the
    // documentation says; the standby has it through replication.
    let capture = daemon.cli_ok(&["connector", "source-sql", "--role", "repl"]);
    primary.psql("postgres", &capture);

    // The primary writes now and then, as a live one does: a standby creates a logical
    // slot only once the primary logs its running transactions.
    let writer = {
        let client = primary.connect("postgres").await;
        tokio::spawn(async move {
            for i in 0..600_i64 {
                let _ = client
                    .execute(
                        "UPDATE app.items SET label = 'write ' || $1::text WHERE id = 1 + $1 % 200",
                        &[&i],
                    )
                    .await;
                let _ = client
                    .execute("SELECT pg_log_standby_snapshot()", &[])
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let preflight = daemon.cli_ok(&["connector", "preflight", "postgresql", &url]);
    assert!(
        preflight.contains("no: a standby, which decodes from PostgreSQL 16 on")
            && preflight.contains("the slot lives on this standby"),
        "{preflight}"
    );
    daemon.create_connector(&url, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    writer.abort();
    primary.psql(
        "postgres",
        "INSERT INTO app.items VALUES (1000, 'after the snapshot');
         DELETE FROM app.items WHERE id = 5;",
    );
    wait_replica(&primary, &store, "shop", &["app"], &daemon).await;
    // A schema change on the primary reaches the replica through the standby's slot.
    primary.psql(
        "postgres",
        "ALTER TABLE app.items ADD COLUMN note text NOT NULL DEFAULT 'n';
         INSERT INTO app.items VALUES (1001, 'with a note', 'noted');",
    );
    wait_replica(&primary, &store, "shop", &["app"], &daemon).await;
    assert_eq!(
        primary.psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'"
        ),
        "0",
        "nothing decodes on the primary"
    );
    assert_eq!(
        standby.psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical' AND active"
        ),
        "1"
    );
}

// 16 decodes on standbys as well, but this machine's PostgreSQL 16 has no wal2json build.
#[tokio::test]
async fn pg17_a_standby_is_a_source() {
    a_standby_is_a_source(17).await;
}

#[tokio::test]
async fn pg18_a_standby_is_a_source() {
    a_standby_is_a_source(18).await;
}

/// A standby without what decoding needs: preflight refuses with the reason and what to do.
#[tokio::test]
async fn a_standby_that_cannot_decode_is_refused_by_preflight_with_the_reason() {
    // (Before 16: `preflight::a_physical_standby_before_16_is_refused_as_a_source`.)
    let primary = Cluster::builder().major(17).start();
    let standby = primary.start_standby();
    let store = Cluster::builder().major(17).start();
    let daemon = Daemon::new(&store);
    let out = daemon.cli(&[
        "connector",
        "preflight",
        "postgresql",
        &standby.superuser_url("postgres"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("a standby without hot_standby_feedback = on and primary_slot_name"),
        "{text}"
    );
}
