//! Which daemon exports what, and when: a connector's state and slot series appear as the
//! pipeline enters the state (not a sampling interval later), only the daemon holding the
//! connector's lease exports them (so that two daemons do not alert twice), and every
//! daemon exports the process metrics.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::daemon::Daemon;
use crate::harness::Cluster;
use crate::leases::{create_connectors, daemons, owners, seed, source_cluster, wait_spread};
use crate::metrics::{get, value};
use crate::support::eventually;

#[tokio::test]
async fn state_and_slot_are_exported_as_soon_as_streaming_begins() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.create_database("shop");
    source.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, 100);",
    );
    let mut daemon = Daemon::new(&store);
    // The sampler looks once an hour: whatever shows below was recorded by the pipeline.
    daemon.set("TRIBUTARY__METRICS__SLOT_INTERVAL_SECS", "3600");
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("shop"),
        "--name",
        "shop",
    ]);
    daemon.start();
    daemon.cli_ok(&["connector", "wait", "shop", "--timeout", "120"]);
    let addr = daemon.metrics_addr().await;
    let (_, body) = get(addr, "/metrics");
    let at =
        |series: &str| value(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"));
    for (state, expected) in [
        ("pending", 0.0),
        ("validating", 0.0),
        ("snapshotting", 0.0),
        ("streaming", 1.0),
        ("failed", 0.0),
    ] {
        let series = format!(r#"tributary_pipeline_state{{connector="shop",state="{state}"}}"#);
        assert_eq!(at(&series), expected, "{series}");
    }
    assert!(at(r#"tributary_slot_lag_bytes{connector="shop"}"#) >= 0.0);
    assert!(at(r#"tributary_slot_retained_wal_bytes{connector="shop"}"#) > 0.0);
    assert_eq!(
        at(r#"tributary_slot_wal_status{connector="shop",status="reserved"}"#),
        1.0
    );
    assert_eq!(at(r#"tributary_source_up{connector="shop"}"#), 1.0);

    // The process collector's series, as every Prometheus client names them.
    // Whole seconds (the crate's counter is an integer): a young daemon may show 0.
    assert!(at("process_cpu_seconds_total") >= 0.0);
    assert!(at("process_resident_memory_bytes") > 1e6);
    assert!(at("process_virtual_memory_bytes") > 1e6);
    assert!(at("process_open_fds") > 0.0);
    assert!(at("process_max_fds") > 0.0);
    assert!(at("process_threads") > 1.0);
    let started = at("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 600.0..=now).contains(&started),
        "started {started}, now {now}"
    );

    // Deleted (disabled first, then stopped): the daemon lets go of the lease, and with it
    // of the connector's gauges; its counters and histograms stay (they count what this
    // process did).
    daemon.cli_ok(&["connector", "delete", "shop"]);
    let gauges = [
        "tributary_pipeline_state{",
        "tributary_slot_",
        "tributary_source_up{",
        "tributary_apply_lag_seconds{",
        "tributary_snapshot_tables_remaining{",
    ];
    eventually("the deleted connector's gauges to go", || async {
        let (_, body) = get(addr, "/metrics");
        let left: Vec<&str> = body
            .lines()
            .filter(|l| gauges.iter().any(|g| l.starts_with(g)))
            .collect();
        left.is_empty().then_some(())
    })
    .await;
    daemon.terminate();
}

/// The connectors whose state series the daemon at `addr` exports, and those whose slot
/// series it exports.
fn exported(addr: SocketAddr) -> (BTreeSet<String>, BTreeSet<String>) {
    let (_, body) = get(addr, "/metrics");
    let connectors = |metric: &str| -> BTreeSet<String> {
        body.lines()
            .filter_map(|l| l.strip_prefix(metric)?.strip_prefix(r#"{connector=""#))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    };
    (
        connectors("tributary_pipeline_state"),
        connectors("tributary_slot_lag_bytes"),
    )
}

/// Each connector's state and slot series come from its lease holder among `running`, and
/// from no other daemon.
async fn assert_exported_by_holders(running: &[&Daemon], connectors: usize) {
    let mut addrs = Vec::new();
    for daemon in running {
        addrs.push(daemon.metrics_addr().await);
    }
    let all: BTreeSet<String> = (1..=connectors).map(|i| format!("c{i}")).collect();
    let check = || {
        let owners = owners(running[0]);
        running
            .iter()
            .zip(&addrs)
            .map(|(daemon, addr)| {
                let suffix = format!(":{}", daemon.pid());
                let held: BTreeSet<String> = owners
                    .iter()
                    .filter(|(_, owner, _)| owner.as_deref().is_some_and(|o| o.ends_with(&suffix)))
                    .map(|(name, _, _)| name.clone())
                    .collect();
                let (states, slots) = exported(*addr);
                (held, states, slots)
            })
            .collect::<Vec<_>>()
    };
    let matches = |seen: &[(BTreeSet<String>, BTreeSet<String>, BTreeSet<String>)]| {
        let union: BTreeSet<String> = seen.iter().flat_map(|(held, _, _)| held.clone()).collect();
        union == all
            && seen
                .iter()
                .all(|(held, states, slots)| held == states && held == slots)
    };
    eventually(
        "each connector's series in its lease holder only",
        || async { matches(&check()).then_some(()) },
    )
    .await;
    // Still so after a few of the sampler's rounds (every second): it samples for the
    // holder only.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = check();
    assert!(matches(&seen), "held, states, slots by daemon: {seen:?}");
    // Each streaming connector's state series exactly once in the union of the daemons'.
    for connector in &all {
        let series =
            format!(r#"tributary_pipeline_state{{connector="{connector}",state="streaming"}}"#);
        let values: Vec<f64> = addrs
            .iter()
            .filter_map(|addr| value(&get(*addr, "/metrics").1, &series))
            .collect();
        assert_eq!(values, [1.0], "{series}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_connector_is_exported_by_its_lease_holder_only() {
    const CONNECTORS: usize = 2;
    let source = source_cluster();
    let store = Cluster::start();
    seed(&source, CONNECTORS);
    let mut daemons = daemons(&store, 2);
    create_connectors(&daemons[0], &source, CONNECTORS);

    // Alone, the first daemon holds and exports both connectors.
    daemons[0].start();
    wait_spread(&[&daemons[0]], CONNECTORS).await;
    assert_exported_by_holders(&[&daemons[0]], CONNECTORS).await;

    // A second daemon: the first hands it one connector, and the series move with it.
    daemons[1].start();
    wait_spread(&[&daemons[0], &daemons[1]], CONNECTORS).await;
    assert_exported_by_holders(&[&daemons[0], &daemons[1]], CONNECTORS).await;

    // The first is killed: the second takes its connector over, and exports both.
    daemons[0].kill9();
    wait_spread(&[&daemons[1]], CONNECTORS).await;
    assert_exported_by_holders(&[&daemons[1]], CONNECTORS).await;
    daemons[1].terminate();
}

/// `tributary_connector_unowned{connector}` at `addr`: `None` when absent.
fn unowned(addr: SocketAddr, connector: &str) -> Option<f64> {
    let series = format!(r#"tributary_connector_unowned{{connector="{connector}"}}"#);
    value(&get(addr, "/metrics").1, &series)
}

/// Waits until every daemon at `addrs` says `expected` about `shop`.
async fn wait_unowned(addrs: &[SocketAddr], expected: Option<f64>) {
    let what = format!("every daemon to export unowned {expected:?} for shop");
    eventually(&what, || async {
        addrs
            .iter()
            .all(|addr| unowned(*addr, "shop") == expected)
            .then_some(())
    })
    .await;
}

/// A connector no live daemon holds, while a daemon runs: its holder was killed, and the
/// survivor, which looks for connectors to take once an hour
/// (`supervisor.poll_interval_secs`; a killed daemon sends no notification), leaves it. The
/// holder-only series went with the holder; every daemon's `tributary_connector_unowned`
/// says so, until a new daemon takes the connector. A deleted connector has no such series.
#[tokio::test(flavor = "multi_thread")]
async fn every_daemon_says_when_no_live_daemon_holds_a_connector() {
    let source = source_cluster();
    let store = Cluster::start();
    seed(&source, 1);
    let mut holder = daemons(&store, 1).remove(0);
    let mut survivor = holder.sibling();
    survivor.set("TRIBUTARY__SUPERVISOR__POLL_INTERVAL_SECS", "3600");
    let mut newcomer = holder.sibling();
    holder.create_connector(&source.superuser_url("d1"), "shop", "app");
    holder.start();
    holder.cli_ok(&["connector", "wait", "shop", "--timeout", "120"]);
    survivor.start();
    let (holder_addr, survivor_addr) = (holder.metrics_addr().await, survivor.metrics_addr().await);

    // Held: both daemons say 0, the one that holds nothing too.
    wait_unowned(&[holder_addr, survivor_addr], Some(0.0)).await;
    assert_eq!(exported(survivor_addr).0, BTreeSet::new());

    // The holder is killed: the survivor says 1, and keeps saying it.
    holder.kill9();
    wait_unowned(&[survivor_addr], Some(1.0)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(unowned(survivor_addr, "shop"), Some(1.0));
    let (healthy, status) = survivor.status();
    assert!(!healthy && status[0]["live"] == false, "{status:?}");

    // A new daemon takes it at its start: 0 from both.
    newcomer.start();
    let newcomer_addr = newcomer.metrics_addr().await;
    newcomer.cli_ok(&["connector", "wait", "shop", "--timeout", "120"]);
    wait_unowned(&[survivor_addr, newcomer_addr], Some(0.0)).await;

    // Deleted: no daemon exports the series any more.
    newcomer.cli_ok(&["connector", "delete", "shop"]);
    wait_unowned(&[survivor_addr, newcomer_addr], None).await;
    newcomer.terminate();
    survivor.terminate();
}
