//! A connector's health as the operator sees it, with a real daemon started, stopped
//! (SIGTERM), killed (SIGKILL), and holding a failed connector: no command shows a
//! connector better than it is; `status` says so by its exit code, `branch create` refuses
//! a stale branch unless `--allow-stale`, `/readyz` fails while the daemon holds a failed
//! connector or one retrying an error. Also `status --watch` ends when its reader goes.

use std::io::{BufRead as _, BufReader};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::harness::Cluster;
use crate::metrics::get;
use crate::support::eventually;

fn shop(source: &Cluster) {
    source.create_database("shop");
    source.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'item' FROM generate_series(1, 20) g;",
    );
}

/// A daemon streaming `shop`, healthy with an apply lag recorded.
async fn streaming(source: &Cluster, store: &Cluster) -> Daemon {
    let mut daemon = Daemon::new(store);
    daemon.cli_ok(&[
        "connector",
        "create",
        "postgresql",
        &source.superuser_url("shop"),
        "--name",
        "shop",
    ]);
    daemon.start();
    healthy(&daemon).await;
    daemon
}

/// Waits until `status` exits 0 with shop streaming under a live daemon and an apply lag
/// measured within the last two seconds (the sampler's interval is one): by this daemon,
/// not one before it, whose last `streaming` a restarted daemon shows until its pipeline
/// records `validating`.
async fn healthy(daemon: &Daemon) {
    let view = eventually("status to say shop is healthy", || async {
        let (ok, views) = daemon.status();
        let fresh = views[0]["apply_lag_age_seconds"]
            .as_f64()
            .is_some_and(|age| age < 2.0);
        (ok && views[0]["apply_lag_seconds"].is_number() && fresh).then(|| views[0].clone())
    })
    .await;
    assert_eq!(view["shown_state"], "streaming", "{view}");
    assert_eq!(view["live"], true, "{view}");
    assert_eq!(view["healthy"], true, "{view}");
    assert_eq!(view["reason"], Value::Null, "{view}");
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn database_exists(store: &Cluster, name: &str) -> bool {
    store.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    ) == "1"
}

#[tokio::test]
async fn a_daemon_stopped_or_killed_leaves_no_connector_looking_streaming() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = streaming(&source, &store).await;
    let listed = daemon.connector("shop");
    assert_eq!(
        (&listed["ready"], &listed["live"], &listed["healthy"]),
        (&json!(true), &json!(true), &json!(true)),
        "{listed}"
    );
    let out = daemon.cli(&["branch", "create", "fresh"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));

    // The reported case: after a clean SIGTERM the row still says streaming.
    daemon.terminate();
    let (ok, views) = daemon.status();
    let view = &views[0];
    assert!(!ok, "status exits 1: {view}");
    assert_eq!(view["state"], "streaming", "the recorded stage: {view}");
    assert_eq!(view["shown_state"], "streaming (no daemon)", "{view}");
    assert_eq!(
        (&view["live"], &view["owner"], &view["healthy"]),
        (&json!(false), &Value::Null, &json!(false)),
        "{view}"
    );
    assert_eq!(
        view["reason"], "no daemon runs it: nothing is applied",
        "{view}"
    );
    assert!(
        view["next_step"]
            .as_str()
            .unwrap()
            .starts_with("start the daemon (`tributary run`)"),
        "{view}"
    );
    // The lag is unknown, never a frozen 0.0; the replica's age grows.
    assert_eq!(view["apply_lag_seconds"], Value::Null, "{view}");
    let age = view["replica_age_seconds"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, later) = daemon.status();
    assert!(
        later[0]["replica_age_seconds"].as_f64().unwrap() >= age + 1.0,
        "{age} then {}",
        later[0]
    );
    assert_eq!(
        later[0]["replica_current_as_of"],
        view["replica_current_as_of"]
    );
    let out = daemon.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        stderr(&out).contains("connector shop is not healthy"),
        "{}",
        stderr(&out)
    );
    assert!(
        text.contains("streaming (no daemon)")
            && text.contains("unknown")
            && text.contains("replica holds the source at least as of")
            && !text.contains("0.0 s"),
        "{text}"
    );

    // `connector list` is a listing: exit 0, the same words, never ready.
    let list = daemon.cli_ok(&["connector", "list"]);
    assert!(
        list.starts_with("  CONNECTOR ")
            && list.contains("streaming (no daemon)")
            && list.contains("not healthy: no daemon runs it"),
        "{list}"
    );
    let listed = daemon.connector("shop");
    assert_eq!(
        (&listed["state"], &listed["ready"], &listed["live"]),
        (&json!("streaming"), &json!(false), &json!(false)),
        "{listed}"
    );

    // A branch now would be stale: refused, saying how stale, unless --allow-stale.
    let out = daemon.cli(&["branch", "create", "stale"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "connector shop is not streaming under a live daemon (no daemon runs it: nothing \
             is applied): a branch would hold the source at least as of "
        ) && err.contains(" s ago)")
            && err.contains("--allow-stale"),
        "{err}"
    );
    assert!(!database_exists(&store, "stale"));
    let out = daemon.cli(&["branch", "create", "stale", "--allow-stale"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: connector shop is not streaming under a live daemon"),
        "{}",
        stderr(&out)
    );
    assert!(database_exists(&store, "stale"));
    // Scripts read the staleness from the JSON too.
    let out = daemon.cli(&[
        "branch",
        "create",
        "stale2",
        "--allow-stale",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        created["stale"]
            .as_str()
            .is_some_and(|s| s.contains("not streaming under a live daemon")),
        "{created}"
    );

    // `connector wait` does not take the leftover row for streaming, and keeps its timeout
    // while it waits for a daemon.
    let started = Instant::now();
    let out = daemon.cli(&["connector", "wait", "shop", "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr(&out).contains("no daemon runs on this bookkeeping"),
        "{}",
        stderr(&out)
    );

    // retry-setup has nothing to set up, and does not call the connector healthy.
    let out = daemon.cli(&["connector", "retry-setup", "shop"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs nothing")
            && stderr(&out).contains("but it is not healthy: no daemon runs it")
            && !String::from_utf8_lossy(&out.stdout).contains("is healthy"),
        "{}",
        stderr(&out)
    );

    // Killed: its lease has not expired, but its bookkeeping session is gone.
    daemon.start();
    healthy(&daemon).await;
    daemon.kill9();
    let view = eventually("status to see the daemon gone", || async {
        let (ok, views) = daemon.status();
        (!ok && views[0]["live"] == false).then(|| views[0].clone())
    })
    .await;
    assert_eq!(view["shown_state"], "streaming (no daemon)", "{view}");
    assert_eq!(view["apply_lag_seconds"], Value::Null, "{view}");
    let reason = view["reason"].as_str().unwrap();
    if view["owner"].is_string() {
        assert!(
            reason.starts_with("its daemon ")
                && reason.contains(" is gone (its bookkeeping session ended)"),
            "{view}"
        );
    } else {
        // The 20 s lease expired meanwhile (a slow machine).
        assert!(reason.starts_with("no daemon runs it"), "{view}");
    }
    assert_eq!(daemon.connector("shop")["ready"], false);
    assert_eq!(
        daemon.cli(&["branch", "create", "late"]).status.code(),
        Some(1)
    );
}

#[tokio::test]
async fn a_retrying_or_failed_connector_fails_status_and_readyz_and_a_branch() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    let mut daemon = streaming(&source, &store).await;
    let addr = daemon.metrics_addr().await;
    assert_eq!(get(addr, "/readyz"), (200, "ok\n".to_owned()));

    // A source that went away: the pipeline retries, and the daemon is not ready meanwhile.
    source.stop();
    let body = eventually("/readyz to fail while the pipeline retries", || async {
        let (code, body) = get(addr, "/readyz");
        (code == 503).then_some(body)
    })
    .await;
    assert!(
        body.starts_with("connector shop: retrying after an error: "),
        "{body}"
    );
    let (ok, views) = daemon.status();
    assert!(!ok, "{views:?}");
    // Streaming or, once the pipeline restarted to retry, validating.
    assert!(
        views[0]["shown_state"]
            .as_str()
            .is_some_and(|s| s.ends_with(" (retrying)")),
        "{views:?}"
    );
    source.start_again();
    eventually("/readyz to come back with the source", || async {
        (get(addr, "/readyz").0 == 200).then_some(())
    })
    .await;
    daemon.terminate();

    // The slot goes while the daemon is down: the restarted pipeline fails for good.
    let slot = source.psql("postgres", "SELECT slot_name FROM pg_replication_slots");
    source.psql(
        "postgres",
        &format!("SELECT pg_drop_replication_slot('{slot}')"),
    );
    source.psql("shop", "INSERT INTO items VALUES (100, 'while down')");
    daemon.start();
    daemon.wait_for_state("shop", "failed").await;
    let addr = daemon.metrics_addr().await;
    let body = eventually("/readyz to fail for the failed connector", || async {
        let (code, body) = get(addr, "/readyz");
        (code == 503).then_some(body)
    })
    .await;
    assert!(
        body.starts_with("connector shop: stopped by an error: "),
        "{body}"
    );
    assert_eq!(
        get(addr, "/healthz").0,
        200,
        "alive: a restart would not help"
    );

    let (ok, views) = daemon.status();
    let view = &views[0];
    assert!(!ok, "{view}");
    assert_eq!(
        (&view["shown_state"], &view["live"], &view["healthy"]),
        (&json!("failed"), &json!(true), &json!(false)),
        "{view}"
    );
    assert!(
        view["reason"]
            .as_str()
            .unwrap()
            .starts_with("stopped by an error: ")
            && view["next_step"]
                .as_str()
                .unwrap()
                .contains("tributary connector retry-setup shop"),
        "{view}"
    );
    assert_eq!(view["apply_lag_seconds"], Value::Null, "{view}");
    let list = daemon.cli_ok(&["connector", "list"]);
    assert!(list.contains("not healthy: stopped by an error"), "{list}");
    assert_eq!(daemon.connector("shop")["ready"], false);
    let out = daemon.cli(&["branch", "create", "broken"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(stopped by an error: ")
            && stderr(&out).contains("retry-setup shop"),
        "{}",
        stderr(&out)
    );
    assert!(!database_exists(&store, "broken"));

    // Fixed: ready and healthy again.
    daemon.cli_ok(&["connector", "retry-setup", "shop", "--wait"]);
    eventually("/readyz to come back", || async {
        (get(addr, "/readyz").0 == 200).then_some(())
    })
    .await;
    healthy(&daemon).await;
    daemon.terminate();
}

/// `tributary status --watch | head -1` ends: the closed pipe ends the command quietly.
#[test]
fn status_watch_ends_when_its_reader_goes() {
    let store = Cluster::start();
    let daemon = Daemon::new(&store);
    let mut child = daemon.cli_spawn(&["status", "--watch", "1"]);
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("no connectors"), "{first}");
    // The reader is dropped: the pipe is closed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("status --watch kept running with nobody reading");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    // The tests' RUST_LOG has debug lines; no error or warning.
    assert!(
        !err.contains("ERROR") && !err.contains("WARN") && !err.contains("error:"),
        "{err}"
    );
}
