//! A source that fails over (PostgreSQL 17 and 18). The connector's URL lists the primary
//! and its physical standby (`target_session_attrs=read-write`); preflight's grant script,
//! run as printed, makes the standby synchronize the connector's failover slot and the
//! primary wait for it (`synchronized_standby_slots`).
//! Under a write load the primary is killed with SIGKILL and the standby promoted: the
//! connector finds the new primary, follows its timeline from the synchronized slot, and
//! the replica equals the new primary without a new snapshot. Without slot
//! synchronization, the same failover stops the connector with the reason and the next
//! step, and no new slot is made.

use std::time::{Duration, Instant};

use crate::daemon::{wait_replica, Daemon};
use crate::harness::Cluster;
use crate::support::repl_source;

const PASSWORD: &str = "Failover-Secret-5821";
/// The physical slot the standby streams through.
const STANDBY_SLOT: &str = "standby1";

/// A primary of `major` with `app.accounts` and the role `repl` (REPLICATION, SELECT; it
/// may read the standbys' `primary_conninfo` for preflight).
fn primary(major: u32) -> Cluster {
    let primary = repl_source(
        Some(major),
        PASSWORD,
        "CREATE TABLE app.accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO app.accounts SELECT g, 0 FROM generate_series(1, 100) g;",
    );
    primary.psql("postgres", "GRANT pg_read_all_settings TO repl;");
    primary
}

/// A physical standby of `primary` streaming through [`STANDBY_SLOT`], with a database in
/// its `primary_conninfo`, but neither slot synchronization nor feedback: what the grant
/// script of preflight adds is left to it.
fn standby(primary: &Cluster) -> Cluster {
    primary.psql(
        "postgres",
        &format!("SELECT pg_create_physical_replication_slot('{STANDBY_SLOT}');"),
    );
    let standby = primary.start_standby();
    let conninfo = standby.psql("postgres", "SHOW primary_conninfo");
    standby.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET primary_conninfo = '{} dbname=postgres';
             ALTER SYSTEM SET primary_slot_name = '{STANDBY_SLOT}';
             SELECT pg_reload_conf();",
            conninfo.replace('\'', "''")
        ),
    );
    standby
}

/// The failover line of preflight on `url`, and the grant script it printed.
fn preflight_failover(daemon: &Daemon, url: &str) -> (String, String) {
    let out = daemon.cli_ok(&["connector", "preflight", "postgresql", url]);
    let line = out
        .lines()
        .find(|l| l.contains(" failover "))
        .unwrap_or_else(|| panic!("no failover check:\n{out}"))
        .to_owned();
    let script = out
        .split_once("then run preflight again.\n\n")
        .map(|(_, script)| script.to_owned())
        .unwrap_or_default();
    (line, script)
}

/// The two-host URL, the standby last.
fn url(primary: &Cluster, standby: &Cluster) -> String {
    format!(
        "postgresql://repl:{PASSWORD}@127.0.0.1:{},127.0.0.1:{}/postgres\
         ?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    )
}

fn store_and_daemon(source: &Cluster, major: u32) -> (Cluster, Daemon) {
    let store = Cluster::builder().major(major).start();
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY_PG_BINDIR",
        &source.bindir().display().to_string(),
    );
    (store, daemon)
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const SNAPSHOTS: &str =
    "SELECT count(*) FROM tributary.state_history WHERE to_state = 'snapshotting'";

async fn the_connector_follows_a_promoted_standby_without_a_new_snapshot(major: u32) {
    let primary = primary(major);
    let standby = standby(&primary);
    let (store, mut daemon) = store_and_daemon(&primary, major);
    let url = url(&primary, &standby);

    // Preflight says a failover would lose the slot; its grant script, run by a superuser
    // as printed (on the primary, then on the standby through \connect), sets up slot
    // synchronization, and preflight then says the slot would be kept.
    let (line, script) = preflight_failover(&daemon, &url);
    assert!(line.contains("a failover may lose the slot"), "{line}");
    primary.psql("postgres", &script);
    let kept = format!("kept: standby 127.0.0.1:{}", standby.port());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (line, _) = preflight_failover(&daemon, &url);
        if line.contains(&kept) {
            break;
        }
        assert!(Instant::now() < deadline, "after the grant script: {line}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    daemon.create_connector(&url, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    wait_replica(&primary, &store, "shop", &["app"], &daemon).await;
    let slot = store.psql(
        "postgres",
        "SELECT slot_name FROM tributary.connectors WHERE name = 'shop'",
    );
    assert_eq!(
        primary.psql(
            "postgres",
            &format!("SELECT failover FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        ),
        "t",
        "the slot is made a failover slot"
    );
    let synced =
        format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND synced");
    wait_until(
        "the slot is synchronized to the standby",
        Duration::from_secs(60),
        || standby.psql("postgres", &synced) == "1",
    )
    .await;

    // A write load on the primary, until it dies.
    let writer = {
        let client = primary.connect("postgres").await;
        tokio::spawn(async move {
            let mut id = 1000_i64;
            loop {
                let written = client
                    .execute("INSERT INTO app.accounts VALUES ($1, $1)", &[&id])
                    .await;
                if written.is_err() {
                    return id - 1000;
                }
                let _ = client
                    .execute(
                        "UPDATE app.accounts SET balance = balance + 1 WHERE id = $1",
                        &[&(id % 100 + 1)],
                    )
                    .await;
                id += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    primary.kill9();
    let died = Instant::now();
    let written = writer.await.unwrap();
    assert!(
        written > 10,
        "the load wrote {written} rows before the kill"
    );
    standby.promote();
    let promoted = died.elapsed();
    standby.psql(
        "postgres",
        "INSERT INTO app.accounts VALUES (-1, 0);
         UPDATE app.accounts SET balance = balance - 1 WHERE id <= 50;",
    );
    let replica = "shop_replica";
    wait_until(
        "the first change from the new primary",
        Duration::from_secs(120),
        || store.psql(replica, "SELECT count(*) FROM app.accounts WHERE id = -1") == "1",
    )
    .await;
    let first_change = died.elapsed();
    eprintln!(
        "failover on PostgreSQL {major}: {written} rows written before the kill; promoted \
         {} ms after the primary's death; first change from the new primary applied {} ms \
         after it",
        promoted.as_millis(),
        first_change.as_millis()
    );

    wait_replica(&standby, &store, "shop", &["app"], &daemon).await;
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("streaming"));
    assert_eq!(store.psql("postgres", SNAPSHOTS), "1", "no new snapshot");
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT timeline FROM tributary.connectors WHERE name = 'shop'"
        ),
        "2"
    );
    // Streaming from the synchronized slot, the only slot of the connector.
    assert_eq!(
        standby.psql(
            "postgres",
            "SELECT string_agg(slot_name, ',') FROM pg_replication_slots
              WHERE slot_type = 'logical' AND active"
        ),
        slot
    );
    let status = daemon.cli_ok(&["status"]);
    assert!(
        status.contains("source on timeline 2 since")
            && status.contains(&format!("on 127.0.0.1:{}", standby.port())),
        "{status}"
    );
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    assert!(
        log.contains("the source moved from timeline 1 to 2"),
        "the timeline change is logged"
    );
}

#[tokio::test]
async fn pg17_the_connector_follows_a_promoted_standby_without_a_new_snapshot() {
    the_connector_follows_a_promoted_standby_without_a_new_snapshot(17).await;
}

#[tokio::test]
async fn pg18_the_connector_follows_a_promoted_standby_without_a_new_snapshot() {
    the_connector_follows_a_promoted_standby_without_a_new_snapshot(18).await;
}

/// A standby without slot synchronization: preflight says a failover would lose the
/// slot, and after one the connector fails naming why, with no slot made on the new
/// primary.
#[tokio::test]
async fn without_slot_synchronization_a_failover_stops_the_connector_with_the_reason() {
    let major = 17;
    let primary = primary(major);
    let standby = standby(&primary);
    let (store, mut daemon) = store_and_daemon(&primary, major);
    let url = url(&primary, &standby);
    let preflight = daemon.cli_ok(&["connector", "preflight", "postgresql", &url]);
    assert!(
        preflight.contains("a failover may lose the slot")
            && preflight.contains("lacks sync_replication_slots = on, hot_standby_feedback = on")
            && preflight.contains("synchronized_standby_slots names no"),
        "{preflight}"
    );
    assert!(
        preflight.contains("ALTER SYSTEM SET synchronized_standby_slots = 'standby1';")
            && preflight.contains("ALTER SYSTEM SET sync_replication_slots = on;"),
        "the grant script sets what is missing:\n{preflight}"
    );

    daemon.create_connector(&url, "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    wait_replica(&primary, &store, "shop", &["app"], &daemon).await;
    // Everything on the standby before it is promoted: the replica is not ahead of it.
    let caught_up = format!(
        "SELECT pg_last_wal_replay_lsn() >= '{}'",
        primary.psql("postgres", "SELECT pg_current_wal_lsn()")
    );
    wait_until("the standby caught up", Duration::from_secs(30), || {
        standby.psql("postgres", &caught_up) == "t"
    })
    .await;
    primary.kill9();
    standby.promote();
    daemon.wait_for_state("shop", "failed").await;
    let failed = daemon.connector("shop");
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("is missing on the source")
            && error.contains("moved from timeline 1 to 2")
            && error.contains("sync_replication_slots = on"),
        "{failed}"
    );
    let next = failed["next_step"].as_str().unwrap_or_default();
    assert!(next.contains("retry-setup shop"), "{failed}");
    assert_eq!(
        standby.psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'"
        ),
        "0",
        "no new slot"
    );
    assert_eq!(store.psql("postgres", SNAPSHOTS), "1", "no new snapshot");
}
