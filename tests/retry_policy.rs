//! Retry or stop, as the daemon decides it for real failures: a condition that passes by
//! itself (a source out of connection slots, SQLSTATE 53300) is retried until it passes,
//! whichever connection meets it; one only the operator can clear (a source URL the
//! bookkeeping's key cannot open) stops the connector in `failed` at once, with the next
//! step naming the key. A failed pg_dump or pg_restore is judged by asking the server.

use std::time::Duration;

use tributary::pg;
use tributary::pipeline::snapshot::tool_failure_passes;
use tributary::source::{ConnInfo, SnapshotAction};

use crate::daemon::{wait_converged, Daemon};
use crate::harness::Cluster;
use crate::support::{eventually, replication_client, slot};

const SCHEMA: &str = "
CREATE ROLE app_owner LOGIN PASSWORD 'owner pw';
CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl pw';
CREATE DATABASE shop OWNER app_owner;
GRANT CONNECT, CREATE ON DATABASE shop TO repl;
";

const TABLES: &str = "
SET ROLE app_owner;
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20) g;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO repl;
RESET ROLE;
";

/// `shop` owned by `app_owner`, readable by the replication role `repl`.
fn shop(source: &Cluster) {
    source.psql("postgres", SCHEMA);
    source.psql("shop", TABLES);
}

/// The server's words for 53300 to a non-superuser (the suite's servers speak English).
const SLOTS_TAKEN: &str = "remaining connection slots are reserved";

fn log(daemon: &Daemon) -> String {
    std::fs::read_to_string(daemon.log_path()).unwrap_or_default()
}

#[tokio::test]
async fn a_source_url_the_key_cannot_open_fails_the_connector_naming_the_key() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(
        &source.url("repl", Some("repl pw"), "shop"),
        "shop",
        "public",
    );
    // One bit of the sealed URL changes (after its 12-byte nonce): the key still fits the
    // bookkeeping's fingerprint, but this row no longer opens with it.
    store.psql(
        "postgres",
        "UPDATE tributary.connectors SET source_url_ciphertext = \
         set_byte(source_url_ciphertext, 12, get_byte(source_url_ciphertext, 12) # 1)",
    );
    daemon.start();
    daemon.wait_for_state("shop", "failed").await;
    let connector = daemon.connector("shop");
    let error = connector["last_error"].as_str().unwrap();
    let next_step = connector["next_step"].as_str().unwrap();
    assert!(
        error.contains("cannot decrypt the source URL of connector shop"),
        "{connector}"
    );
    assert!(
        next_step.contains("key") && !next_step.contains("retries by itself"),
        "{connector}"
    );
    // Stopped for good: not tried again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("failed"));
    assert!(
        !log(&daemon).contains("will retry"),
        "{}",
        daemon.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_out_of_connection_slots_at_start_is_retried_until_it_has_one() {
    // Few slots, so that an application can take all that a non-superuser may use.
    let source = Cluster::builder().setting("max_connections", 12).start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(
        &source.url("repl", Some("repl pw"), "shop"),
        "shop",
        "public",
    );
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    daemon.terminate();

    // The application takes every slot left to non-superusers. Replication connections
    // have slots of their own (max_wal_senders): the restarted pipeline's walsender
    // connects, and its SQL session to the source is refused with 53300.
    let mut held = Vec::new();
    let refused = loop {
        match source
            .try_connect_as("app_owner", Some("owner pw"), "shop")
            .await
        {
            Ok(client) => held.push(client),
            Err(e) => break e,
        }
        assert!(held.len() < 20, "max_connections was not applied");
    };
    assert_eq!(refused.code().map(|c| c.code()), Some("53300"), "{refused}");
    source.psql("shop", "INSERT INTO items VALUES (100, 'while full')");
    daemon.start();
    // Retried, never given up on, while the slots stay taken (each new attempt clears the
    // recorded error until it fails again).
    let retrying = || async {
        let connector = daemon.connector("shop");
        assert_ne!(connector["state"], "failed", "{connector}");
        let error = connector["last_error"].as_str().unwrap_or_default();
        let next_step = connector["next_step"].as_str().unwrap_or_default();
        (error.contains(SLOTS_TAKEN) && next_step.contains("retries by itself")).then_some(())
    };
    eventually("the pipeline to meet the full source", retrying).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eventually("the pipeline to meet it again", retrying).await;
    assert!(
        log(&daemon)
            .lines()
            .filter(|l| l.contains("will retry") && l.contains(SLOTS_TAKEN))
            .count()
            > 1,
        "{}",
        daemon.log_tail()
    );

    drop(held);
    daemon.wait_for_state("shop", "streaming").await;
    wait_converged(
        &source,
        "shop",
        &store,
        "shop_replica",
        &["public"],
        &daemon,
    )
    .await;
}

/// A pg_dump or pg_restore that failed is judged by what the server says, in SQLSTATEs,
/// never by the program's (localized) error output: a session held beside the program, a
/// new session, and the exported snapshot.
#[tokio::test]
async fn a_failed_dump_or_restore_is_judged_by_asking_the_server() {
    let source = Cluster::builder().setting("max_connections", 12).start();
    shop(&source);
    let url = source.url("repl", Some("repl pw"), "shop");
    let info = ConnInfo::parse(&url).unwrap();
    let watch = pg::connect(&info).await.unwrap();
    let mut repl = replication_client(&url).await;
    let live = repl
        .create_slot(&slot("judged"), true, SnapshotAction::Export)
        .await
        .unwrap()
        .snapshot_name
        .unwrap();

    // All is well: the program failed on its own work, and would again.
    assert!(!tool_failure_passes(&watch, &info, None).await);
    assert!(!tool_failure_passes(&watch, &info, Some(&live)).await);
    // The snapshot is gone (its replication connection moved on): a new slot brings one.
    assert!(tool_failure_passes(&watch, &info, Some("00000003-0000001B-1")).await);
    drop(repl);
    eventually("the exporting connection to end", || async {
        tool_failure_passes(&watch, &info, Some(&live))
            .await
            .then_some(())
    })
    .await;

    // The source is out of slots for non-superusers: a new session meets it as the
    // program's connection did.
    let mut held = Vec::new();
    while let Ok(client) = source
        .try_connect_as("app_owner", Some("owner pw"), "shop")
        .await
    {
        held.push(client);
        assert!(held.len() < 20, "max_connections was not applied");
    }
    assert!(tool_failure_passes(&watch, &info, None).await);
    drop(held);
    eventually("a slot to be free again", || async {
        (!tool_failure_passes(&watch, &info, None).await).then_some(())
    })
    .await;

    // Whatever ended the program's session ended the held one too (a restart, a
    // shutdown, an operator's pg_terminate_backend of every session of the role).
    source.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'repl'",
    );
    assert!(tool_failure_passes(&watch, &info, None).await);
}
