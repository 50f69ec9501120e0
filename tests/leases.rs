//! Several daemons on one bookkeeping: each connector runs in exactly one of them (its
//! lease's holder), a killed daemon's connectors are taken over, rolling restarts lose and
//! duplicate nothing, and the lease history never shows two holders at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::{overlapping_leases, wait_converged, Daemon};
use crate::harness::Cluster;
use crate::support::*;

/// Short leases, so that takeovers happen within the test's patience.
const LEASE_TTL_SECS: &str = "3";

pub(crate) fn source_cluster() -> Cluster {
    Cluster::builder()
        .setting("wal_sender_timeout", "10s")
        .start()
}

/// One database per connector (`d1`, …), each with a keyed table and one without a key
/// (replica identity FULL): a change applied twice shows there as an extra row.
pub(crate) fn seed(source: &Cluster, connectors: usize) {
    for i in 1..=connectors {
        source.create_database(&format!("d{i}"));
        source.psql(
            &format!("d{i}"),
            "CREATE SCHEMA app;
             CREATE TABLE app.accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO app.accounts SELECT g, 0 FROM generate_series(1, 100) g;
             CREATE TABLE app.ledger (n bigint, note text);
             ALTER TABLE app.ledger REPLICA IDENTITY FULL;",
        );
    }
}

pub(crate) fn create_connectors(daemon: &Daemon, source: &Cluster, connectors: usize) {
    for i in 1..=connectors {
        daemon.create_connector(
            &source.superuser_url(&format!("d{i}")),
            &format!("c{i}"),
            "app",
        );
    }
}

pub(crate) fn daemons(store: &Cluster, count: usize) -> Vec<Daemon> {
    let mut first = Daemon::new(store);
    first.set("TRIBUTARY__SUPERVISOR__LEASE_TTL_SECS", LEASE_TTL_SECS);
    let mut all = vec![first];
    while all.len() < count {
        let sibling = all[0].sibling();
        all.push(sibling);
    }
    all
}

/// A write load on every database until `stop`: each transaction moves balance between
/// two accounts and appends to the ledger. Returns the transactions committed.
fn write_load(
    source: &Cluster,
    connectors: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let urls: Vec<String> = (1..=connectors)
        .map(|i| source.superuser_url(&format!("d{i}")))
        .collect();
    let committed = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        let mut clients = Vec::new();
        for url in &urls {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            clients.push(client);
        }
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let client = &clients[n as usize % clients.len()];
            let (from, to) = (n % 100 + 1, (n * 7) % 100 + 1);
            client
                .batch_execute(&format!(
                    "BEGIN;
                     UPDATE app.accounts SET balance = balance - 1 WHERE id = {from};
                     UPDATE app.accounts SET balance = balance + 1 WHERE id = {to};
                     INSERT INTO app.ledger VALUES ({n}, 'move');
                     COMMIT;"
                ))
                .await
                .unwrap();
            committed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        committed.load(Ordering::Relaxed)
    })
}

/// `status --format json`: connector name → owner (`host:pid`), for those owned.
pub(crate) fn owners(daemon: &Daemon) -> Vec<(String, Option<String>, String)> {
    // Exit 1 while a connector has no live daemon, which is what these tests bring about.
    let (_, status) = daemon.status();
    status
        .iter()
        .map(|c| {
            (
                c["connector"].as_str().unwrap().to_owned(),
                c["owner"].as_str().map(str::to_owned),
                c["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn owned_by(daemon: &Daemon, owners: &[(String, Option<String>, String)]) -> usize {
    let suffix = format!(":{}", daemon.pid());
    owners
        .iter()
        .filter(|(_, owner, _)| owner.as_deref().is_some_and(|o| o.ends_with(&suffix)))
        .count()
}

/// Waits until every connector streams and each running daemon owns its fair share.
pub(crate) async fn wait_spread(running: &[&Daemon], connectors: usize) {
    let share = connectors.div_ceil(running.len());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let owners = owners(running[0]);
        let all_streaming = owners.len() == connectors
            && owners
                .iter()
                .all(|(_, owner, state)| owner.is_some() && state == "streaming");
        let fair = running
            .iter()
            .all(|d| (1..=share).contains(&owned_by(d, &owners)));
        if all_streaming && fair {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = running
                .iter()
                .map(|d| format!("--- daemon {} ---\n{}", d.pid(), lease_log(d)))
                .collect();
            panic!(
                "the connectors were never spread over the daemons: {owners:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The daemon's log lines about leases and pipeline starts and stops.
fn lease_log(daemon: &Daemon) -> String {
    let log = std::fs::read_to_string(daemon.log_path()).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("supervisor")
                || l.contains("lease")
                || l.contains("WARN")
                || l.contains("ERROR")
        })
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The lease history of every connector: consecutive holders never overlap, and the
/// replica's fencing token is the current lease's.
fn assert_one_holder_at_a_time(store: &Cluster, connectors: usize) {
    assert_eq!(
        overlapping_leases(store),
        0,
        "two leases of one connector overlap:\n{}",
        store.psql(
            "postgres",
            "SELECT connector_id, token, owner, acquired_at, ended_at
               FROM tributary.lease_history ORDER BY connector_id, token"
        )
    );
    for i in 1..=connectors {
        let current = store.psql(
            "postgres",
            &format!(
                "SELECT l.token FROM tributary.leases l
                   JOIN tributary.connectors c ON c.id = l.connector_id WHERE c.name = 'c{i}'"
            ),
        );
        let claimed = store.psql(
            &format!("c{i}_replica"),
            "SELECT token FROM tributary.lease",
        );
        assert_eq!(claimed, current, "connector c{i}: the replica's token");
    }
}

async fn assert_converged(source: &Cluster, store: &Cluster, connectors: usize, log: &Daemon) {
    for i in 1..=connectors {
        wait_converged(
            source,
            &format!("d{i}"),
            store,
            &format!("c{i}_replica"),
            &["app"],
            log,
        )
        .await;
    }
    // Nothing applied twice: the keyless ledgers hold exactly the source's rows.
    for i in 1..=connectors {
        let count = "SELECT count(*), count(DISTINCT n) FROM app.ledger";
        assert_eq!(
            store.psql(&format!("c{i}_replica"), count),
            source.psql(&format!("d{i}"), count)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_share_connectors_and_take_over_from_a_killed_one() {
    const CONNECTORS: usize = 4;
    let source = source_cluster();
    let store = Cluster::start();
    seed(&source, CONNECTORS);
    let mut daemons = daemons(&store, 2);
    create_connectors(&daemons[0], &source, CONNECTORS);
    for daemon in &mut daemons {
        daemon.start();
    }
    wait_spread(&[&daemons[0], &daemons[1]], CONNECTORS).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(&source, CONNECTORS, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // kill -9 of the first daemon under the load: the second takes its connectors over
    // once their leases expire.
    let victim = daemons[0].pid();
    let before = owners(&daemons[1]);
    let taken: Vec<String> = before
        .iter()
        .filter(|(_, owner, _)| {
            owner
                .as_deref()
                .is_some_and(|o| o.ends_with(&format!(":{victim}")))
        })
        .map(|(name, _, _)| name.clone())
        .collect();
    assert!(!taken.is_empty(), "{before:?}");
    let killed_at = Instant::now();
    daemons[0].kill9();
    let survivor = format!(":{}", daemons[1].pid());
    eventually("the survivor to run every connector", || async {
        let owners = owners(&daemons[1]);
        owners
            .iter()
            .all(|(_, owner, state)| {
                owner.as_deref().is_some_and(|o| o.ends_with(&survivor)) && state == "streaming"
            })
            .then_some(())
    })
    .await;
    let takeover = killed_at.elapsed();
    eprintln!(
        "takeover of {} connectors after kill -9: {:.1} s (lease TTL {LEASE_TTL_SECS} s, poll 1 s)",
        taken.len(),
        takeover.as_secs_f64()
    );

    // The killed daemon comes back: it gets its share back, handed over by the survivor.
    daemons[0].start();
    wait_spread(&[&daemons[0], &daemons[1]], CONNECTORS).await;

    // A paused daemon (SIGSTOP: a long GC-like stall, a frozen VM) keeps its sessions
    // open; the other takes its connectors over when the leases expire, ending the
    // paused one's replication sessions and transactions. Resumed, the paused daemon
    // finds its leases gone and stops its pipelines without committing anything.
    let paused = format!(":{}", daemons[1].pid());
    let paused_at = Instant::now();
    daemons[1].signal("STOP");
    let other = format!(":{}", daemons[0].pid());
    eventually("the other daemon to run every connector", || async {
        owners(&daemons[0])
            .iter()
            .all(|(_, owner, state)| {
                owner.as_deref().is_some_and(|o| o.ends_with(&other)) && state == "streaming"
            })
            .then_some(())
    })
    .await;
    eprintln!(
        "takeover from a paused daemon: {:.1} s (lease TTL {LEASE_TTL_SECS} s, poll 1 s)",
        paused_at.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    daemons[1].signal("CONT");
    wait_spread(&[&daemons[0], &daemons[1]], CONNECTORS).await;
    let resumed = std::fs::read_to_string(daemons[1].log_path()).unwrap();
    assert!(
        resumed.contains("could not renew the connector leases in time")
            || resumed.contains("lost its lease")
            || resumed.contains("expired before it was renewed"),
        "the resumed daemon {paused} did not notice it lost its leases:\n{}",
        daemons[1].log_tail()
    );

    stop.store(true, Ordering::Relaxed);
    let committed = load.await.unwrap();
    assert!(committed > 100, "the load ran: {committed} transactions");
    assert_converged(&source, &store, CONNECTORS, &daemons[1]).await;
    assert_one_holder_at_a_time(&store, CONNECTORS);
    let handed_over = std::fs::read_to_string(daemons[1].log_path()).unwrap();
    assert!(
        handed_over.contains("handing the connector over"),
        "{}",
        daemons[1].log_tail()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_three_daemons_loses_and_duplicates_nothing() {
    const CONNECTORS: usize = 3;
    let source = source_cluster();
    let store = Cluster::start();
    seed(&source, CONNECTORS);
    let mut daemons = daemons(&store, 3);
    create_connectors(&daemons[0], &source, CONNECTORS);
    for daemon in &mut daemons {
        daemon.start();
    }
    wait_spread(&[&daemons[0], &daemons[1], &daemons[2]], CONNECTORS).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(&source, CONNECTORS, stop.clone());
    // As a Deployment's rolling update does: one daemon at a time is stopped (SIGTERM)
    // and its replacement started; the others keep running.
    for i in 0..daemons.len() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = daemons[i].terminate();
        assert!(status.success(), "{}", daemons[i].log_tail());
        daemons[i].start();
        let running: Vec<&Daemon> = daemons.iter().collect();
        wait_spread(&running, CONNECTORS).await;
    }
    stop.store(true, Ordering::Relaxed);
    let committed = load.await.unwrap();
    assert!(committed > 100, "the load ran: {committed} transactions");
    assert_converged(&source, &store, CONNECTORS, &daemons[0]).await;
    assert_one_holder_at_a_time(&store, CONNECTORS);
    // A graceful stop releases its leases: each is ended by its holder, not by expiry.
    let releases = store.psql(
        "postgres",
        "SELECT count(*) FROM tributary.lease_history WHERE ended_at IS NOT NULL",
    );
    assert!(releases.parse::<u32>().unwrap() >= 3, "{releases}");
    for daemon in &daemons {
        assert!(
            !std::fs::read_to_string(daemon.log_path())
                .unwrap()
                .contains("could not renew"),
            "{}",
            daemon.log_tail()
        );
    }
}
