//! The daemon's `/metrics`, `/healthz` and `/readyz` against real servers: slot and
//! pipeline series labelled by connector, no secret in them, readiness following the
//! bookkeeping.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::daemon::{lock_replica_table, Daemon};
use crate::harness::{Cluster, SCRAM_PASSWORD, SCRAM_USER};
use crate::support::eventually;

/// `GET path` over HTTP/1.1: the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the series `name{labels}` (labels as Prometheus prints them).
pub fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_and_health_endpoints() {
    // With a limit, so that the slot has a safe WAL size to report.
    let source = Cluster::builder()
        .password_auth()
        .setting("max_slot_wal_keep_size", "1GB")
        .start();
    let store = Cluster::start();
    source.create_database("shop");
    source.psql(
        "shop",
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text);
             GRANT SELECT ON items TO {SCRAM_USER}; GRANT CREATE ON DATABASE shop TO {SCRAM_USER};
             INSERT INTO items SELECT g, 'item' FROM generate_series(1, 100) g;"
        ),
    );
    let mut daemon = Daemon::new(&store);
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        &source.url(SCRAM_USER, Some(SCRAM_PASSWORD), "shop"),
        "--name",
        "shop",
    ]);
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    let addr = daemon.metrics_addr().await;
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/readyz").0, 200);

    source.psql(
        "shop",
        "INSERT INTO items SELECT g, 'new' FROM generate_series(101, 130) g;
         UPDATE items SET name = 'changed' WHERE id <= 10;
         DELETE FROM items WHERE id = 100;",
    );
    let body = eventually("the changes to be counted and the slot sampled", || async {
        let (_, body) = get(addr, "/metrics");
        let inserts = value(
            &body,
            r#"tributary_changes_applied_total{connector="shop",op="insert"}"#,
        );
        // The sampler looks every second (TRIBUTARY__METRICS__SLOT_INTERVAL_SECS).
        let sampled = value(&body, r#"tributary_slot_lag_bytes{connector="shop"}"#).is_some()
            && value(
                &body,
                r#"tributary_pipeline_state{connector="shop",state="streaming"}"#,
            ) == Some(1.0);
        (inserts == Some(30.0) && sampled).then_some(body)
    })
    .await;
    let at =
        |series: &str| value(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"));
    assert_eq!(
        at(r#"tributary_changes_applied_total{connector="shop",op="update"}"#),
        10.0
    );
    assert_eq!(
        at(r#"tributary_changes_applied_total{connector="shop",op="delete"}"#),
        1.0
    );
    assert!(at(r#"tributary_transactions_applied_total{connector="shop"}"#) >= 1.0);
    assert_eq!(
        at(r#"tributary_snapshot_rows_total{connector="shop"}"#),
        100.0
    );
    assert_eq!(
        at(r#"tributary_snapshot_tables_remaining{connector="shop"}"#),
        0.0
    );
    assert_eq!(
        at(r#"tributary_slot_wal_status{connector="shop",status="reserved"}"#),
        1.0
    );
    assert_eq!(
        at(r#"tributary_slot_wal_status{connector="shop",status="lost"}"#),
        0.0
    );
    assert_eq!(
        at(r#"tributary_pipeline_state{connector="shop",state="streaming"}"#),
        1.0
    );
    assert_eq!(
        at(r#"tributary_pipeline_state{connector="shop",state="failed"}"#),
        0.0
    );
    assert_eq!(at(r#"tributary_source_up{connector="shop"}"#), 1.0);
    // A valid slot: no cause of invalidation is 1 (tests/faults.rs has the others).
    for cause in tributary::source::slot::Cause::ALL {
        let series = format!(
            r#"tributary_slot_invalidated{{cause="{}",connector="shop"}}"#,
            cause.as_str()
        );
        assert_eq!(at(&series), 0.0, "{series}");
    }
    assert!(at(r#"tributary_slot_retained_wal_bytes{connector="shop"}"#) >= 0.0);
    assert!(at(r#"tributary_apply_lag_seconds{connector="shop"}"#) >= 0.0);
    assert!(body.contains("tributary_build_info{version=\""), "{body}");
    assert!(
        !body.contains(SCRAM_PASSWORD) && !body.contains("postgresql://"),
        "{body}"
    );

    // Every metric DESIGN.md names is there.
    for name in [
        "tributary_slot_lag_bytes",
        "tributary_slot_retained_wal_bytes",
        "tributary_slot_wal_status",
        "tributary_slot_safe_wal_size_bytes",
        "tributary_apply_lag_seconds",
        "tributary_changes_applied_total",
        "tributary_snapshot_rows_total",
        "tributary_pipeline_state",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} missing in\n{body}"
        );
    }

    // A write burst while the branch store blocks the applier: the slot falls behind…
    let blocker = lock_replica_table(&store, "shop", "public.items").await;
    source.psql(
        "shop",
        "INSERT INTO items SELECT g, repeat('x', 500) FROM generate_series(1000, 20000) g",
    );
    let behind = eventually("the slot lag to rise", || async {
        let (_, body) = get(addr, "/metrics");
        value(&body, r#"tributary_slot_lag_bytes{connector="shop"}"#).filter(|lag| *lag > 1e6)
    })
    .await;
    assert!(behind > 1e6, "{behind}");
    // …and catches up once it can apply again.
    blocker.batch_execute("COMMIT").await.unwrap();
    eventually("the slot lag to return near 0", || async {
        let (_, body) = get(addr, "/metrics");
        value(&body, r#"tributary_slot_lag_bytes{connector="shop"}"#).filter(|lag| *lag < 64e3)
    })
    .await;
    // Retained WAL as the server counts it, within what a second of sampling can move.
    let server: f64 = source
        .psql(
            "postgres",
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM pg_replication_slots",
        )
        .parse()
        .unwrap();
    let (_, body) = get(addr, "/metrics");
    let sampled = value(
        &body,
        r#"tributary_slot_retained_wal_bytes{connector="shop"}"#,
    )
    .unwrap();
    assert!(
        (sampled - server).abs() < 1e6,
        "sampled {sampled}, server {server}"
    );

    // Caught up: nothing is waiting to be applied.
    let lag = eventually("the apply lag to fall to 0", || async {
        let (_, body) = get(addr, "/metrics");
        value(&body, r#"tributary_apply_lag_seconds{connector="shop"}"#).filter(|l| *l == 0.0)
    })
    .await;
    assert_eq!(lag, 0.0);

    // `tributary status` shows the same, the apply lag as the daemon recorded it.
    let status = eventually("status to show the recorded apply lag", || async {
        let out = daemon.cli_ok(&["status", "--format", "json"]);
        let status: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        status[0]["apply_lag_seconds"].is_number().then_some(status)
    })
    .await;
    let shop = &status[0];
    assert_eq!(shop["connector"], "shop");
    assert_eq!(shop["state"], "streaming");
    assert_eq!(shop["phase"], "streaming");
    assert_eq!(shop["wal_status"], "reserved");
    assert!(shop["slot_lag_bytes"].is_number(), "{shop}");
    assert!(shop["retained_wal_bytes"].is_number(), "{shop}");
    assert_eq!(
        shop["snapshot"],
        serde_json::json!({"tables_total": 1, "tables_copied": 1, "rows_copied": 100,
                           "bytes_copied": shop["snapshot"]["bytes_copied"]})
    );
    let text = daemon.cli_ok(&["status"]);
    assert!(
        text.contains("CONNECTOR") && text.contains("reserved"),
        "{text}"
    );
    assert!(!text.contains(SCRAM_PASSWORD), "{text}");
    // The password (spaces and `@ : / ? # & ' " \ %`) came through the URL and shows
    // nowhere: not in listings, not in the daemon's log.
    for args in [
        &["connector", "list"][..],
        &["connector", "list", "--format", "json"],
        &["status", "--format", "json"],
    ] {
        let out = daemon.cli_ok(args);
        assert!(!out.contains(SCRAM_PASSWORD), "{args:?}: {out}");
    }
    let log = std::fs::read_to_string(daemon.log_path()).unwrap();
    assert!(
        !log.contains(SCRAM_PASSWORD),
        "the daemon log has the password"
    );

    // The bookkeeping goes away: not ready, still alive, and no longer vouching that a
    // live daemon holds shop.
    let unowned = r#"tributary_connector_unowned{connector="shop"}"#;
    assert_eq!(value(&get(addr, "/metrics").1, unowned), Some(0.0));
    store.stop();
    assert_eq!(get(addr, "/readyz").0, 503);
    assert_eq!(get(addr, "/healthz").0, 200);
    eventually("unowned 1 while the bookkeeping is down", || async {
        (value(&get(addr, "/metrics").1, unowned) == Some(1.0)).then_some(())
    })
    .await;
    store.start_again();
    let last = std::sync::Mutex::new(String::new());
    let back = tokio::time::timeout(crate::support::PATIENCE, async {
        loop {
            let (code, body) = get(addr, "/readyz");
            if code == 200 {
                return;
            }
            *last.lock().unwrap() = body;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        back.is_ok(),
        "readiness did not come back: {}; status: {:?}",
        last.lock().unwrap(),
        daemon.status()
    );
    eventually("unowned 0 once the daemon holds shop again", || async {
        (value(&get(addr, "/metrics").1, unowned) == Some(0.0)).then_some(())
    })
    .await;
    daemon.terminate();
}

#[test]
fn a_taken_metrics_address_is_a_clear_error() {
    let store = Cluster::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY__METRICS__LISTEN",
        &taken.local_addr().unwrap().to_string(),
    );
    let output = daemon.cli(&["run"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot serve metrics on") && stderr.contains("TRIBUTARY__METRICS__LISTEN"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_fails_readiness_first_then_exits_0_within_the_grace_period() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.create_database("shop");
    source.psql("shop", "CREATE TABLE items (id int PRIMARY KEY)");
    let mut daemon = Daemon::new(&store);
    daemon.set("TRIBUTARY__PIPELINE__SHUTDOWN_GRACE_SECS", "3");
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("shop"),
        "--name",
        "shop",
    ]);
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    let addr = daemon.metrics_addr().await;
    assert_eq!(get(addr, "/readyz").0, 200);

    // A transaction the applier cannot finish, large enough to fill the reader's channel:
    // shutdown waits for it up to the grace, then abandons it.
    let blocker = lock_replica_table(&store, "shop", "public.items").await;
    source.psql("shop", "INSERT INTO items SELECT generate_series(1, 50000)");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let sent = std::time::Instant::now();
    daemon.send_sigterm();
    eventually("readiness to fail", || async {
        (get(addr, "/readyz").0 == 503).then_some(())
    })
    .await;
    assert_eq!(get(addr, "/healthz").0, 200, "alive while it stops");
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(3 + 5),
        "{:?}\n{}",
        sent.elapsed(),
        daemon.log_tail()
    );
    // Nothing was lost: after a restart the transaction is applied in full.
    blocker.batch_execute("ROLLBACK").await.unwrap();
    drop(blocker);
    daemon.start();
    crate::daemon::wait_converged(
        &source,
        "shop",
        &store,
        "shop_replica",
        &["public"],
        &daemon,
    )
    .await;
    daemon.terminate();
}
