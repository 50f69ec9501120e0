//! Faults production throws at a running daemon, each against real servers and each ending
//! with the replica equal to the source: a source or branch store that hangs for longer
//! than `wal_sender_timeout`, a branch store out of disk space, a slot the source
//! invalidates while its WAL is held back (with the `wal_status` metric on the way; on 13,
//! 17 and 18 too, the last two naming the reason) or, on 18, for being idle, and a source
//! whose `output_plugin_libraries` stops allowing wal2json.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tributary::source::slot::Cause;

use crate::daemon::{lock_replica_table, wait_converged, Daemon};
use crate::harness::Cluster;
use crate::metrics::{get, value};
use crate::support::*;

/// A source database `shop` with one keyed table.
fn shop(source: &Cluster) {
    source.create_database("shop");
    source.psql(
        "shop",
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int NOT NULL DEFAULT 0);
         INSERT INTO items SELECT g, 'item ' || g, 0 FROM generate_series(1, 200) g;",
    );
}

/// Seeds `shop` on `source`, starts a branch store and a daemon (with `settings` as
/// environment), and waits until connector `shop` streams.
async fn streaming_shop(source: &Cluster, settings: &[(&str, &str)]) -> (Cluster, Daemon) {
    // A store and client programs of the source's version.
    let store = Cluster::builder().major(source.major()).start();
    shop(source);
    let mut daemon = Daemon::new(&store);
    daemon.set(
        "TRIBUTARY_PG_BINDIR",
        &source.bindir().display().to_string(),
    );
    for (key, value) in settings {
        daemon.set(key, value);
    }
    daemon.create_connector(&source.superuser_url("shop"), "shop", "public");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    (store, daemon)
}

async fn converged(source: &Cluster, store: &Cluster, daemon: &Daemon) {
    wait_converged(source, "shop", store, "shop_replica", &["public"], daemon).await;
}

/// Inserts and updates on the source until `stop`, retrying through a paused or restarting
/// server; returns the transactions committed.
fn write_load(source: &Cluster, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let url = source.superuser_url("shop");
    tokio::spawn(async move {
        let committed = AtomicU64::new(0);
        let mut n = 1_000u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            tokio::spawn(connection);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let tx = format!(
                    "BEGIN;
                     INSERT INTO items VALUES ({n}, 'new', 1);
                     UPDATE items SET qty = qty + 1 WHERE id = {};
                     COMMIT;",
                    n % 200 + 1
                );
                if client.batch_execute(&tx).await.is_err() {
                    break;
                }
                committed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        committed.load(Ordering::Relaxed)
    })
}

fn log(daemon: &Daemon) -> String {
    std::fs::read_to_string(daemon.log_path()).unwrap_or_default()
}

/// Pauses `paused` (the source or the branch store) under a write load until the daemon's
/// log says `noticed`, resumes it, and waits for the replica to equal the source again.
async fn survives_a_pause(
    (source, store, daemon): (&Cluster, &Cluster, &mut Daemon),
    paused: &Cluster,
    noticed: &str,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = write_load(source, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    paused.pause();
    eventually(&format!("the daemon to log {noticed:?}"), || async {
        log(daemon).contains(noticed).then_some(())
    })
    .await;
    assert!(
        daemon.is_running(),
        "the daemon exited:\n{}",
        daemon.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    paused.resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let committed = load.await.unwrap();
    assert!(committed > 50, "the load ran: {committed} transactions");
    converged(source, store, daemon).await;
    daemon.wait_for_state("shop", "streaming").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_hangs_past_wal_sender_timeout_is_given_up_and_reconnected() {
    let source = Cluster::builder()
        .setting("wal_sender_timeout", "2s")
        .start();
    let (store, mut daemon) = streaming_shop(&source, &[]).await;

    // Every process of the source stops: its sockets stay open, nothing answers, as when
    // the network path is cut without a reset. The daemon's replication session hears
    // nothing, not even answers to its status updates.
    survives_a_pause(
        (&source, &store, &mut daemon),
        &source,
        "on the replication connection (the server is paused or the network path was cut)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_branch_store_that_hangs_stops_the_pipelines_until_it_answers_again() {
    let source = Cluster::start();
    let (store, mut daemon) =
        streaming_shop(&source, &[("TRIBUTARY__SUPERVISOR__LEASE_TTL_SECS", "3")]).await;

    // The branch store (and with it the bookkeeping) hangs: applying blocks, and the
    // connector's lease cannot be renewed, so the daemon stops the pipeline before the
    // lease could pass to anyone else. It keeps running and starts over once the store
    // answers.
    survives_a_pause(
        (&source, &store, &mut daemon),
        &store,
        "could not renew the connector leases in time",
    )
    .await;
}

/// A tmpfs of `size` mounted on a fresh directory owned by the server's OS user, unmounted
/// on drop. Mounting needs root, which the suite runs as (see the README).
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(size: &str) -> TinyDisk {
        let dir = tempfile::Builder::new()
            .prefix("tributary-tiny-")
            .tempdir()
            .unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a {size} tmpfs failed: this test fills a small filesystem and needs root"
        );
        let chown = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        TinyDisk { dir }
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_branch_store_disk_fails_the_connector_and_it_resumes_once_space_is_freed() {
    let source = Cluster::start();
    let (store, mut daemon) = streaming_shop(&source, &[]).await;

    // The replica's table lives on a 4 MB filesystem.
    let disk = TinyDisk::mount("4m");
    store.psql(
        "postgres",
        &format!(
            "CREATE TABLESPACE tiny LOCATION '{}'",
            disk.dir.path().display()
        ),
    );
    store.psql(
        "shop_replica",
        "ALTER TABLE public.items SET TABLESPACE tiny",
    );

    // One source transaction of about 8 MB (hex digits, which hardly compress) does not fit.
    source.psql(
        "shop",
        "INSERT INTO items
         SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 60) i), 0
           FROM generate_series(10001, 14000) g",
    );
    let committed_by = source.psql("shop", "SELECT pg_current_wal_lsn()");
    daemon.wait_for_state("shop", "failed").await;
    let connector = daemon.connector("shop");
    let error = connector["last_error"].as_str().unwrap();
    let next_step = connector["next_step"].as_str().unwrap();
    assert!(error.contains("No space left on device"), "{error}");
    assert!(
        error.contains("out of disk space") && error.contains("retry-setup"),
        "{error}"
    );
    assert!(!next_step.is_empty(), "{connector}");
    // Nothing of the transaction was applied, and the source was told nothing beyond the
    // replica's applied position: the slot still holds the transaction.
    assert_eq!(
        store.psql(
            "shop_replica",
            &format!("SELECT lsn < '{committed_by}'::pg_lsn FROM tributary.applied")
        ),
        "t",
        "the replica records the failed transaction as applied"
    );
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT count(*) FROM items WHERE id > 10000"
        ),
        "0"
    );
    let confirmed = source.psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name LIKE 'tributary_%_1_shop'",
    );
    let behind = store.psql(
        "shop_replica",
        &format!("SELECT '{confirmed}'::pg_lsn <= lsn FROM tributary.applied"),
    );
    assert_eq!(
        behind, "t",
        "the slot confirmed {confirmed}, past what was applied"
    );

    // The operator makes room and asks the connector to go on: it resumes where it was.
    disk.resize("64m");
    daemon.cli_ok(&["connector", "retry-setup", "shop", "--wait"]);
    source.psql("shop", "UPDATE items SET qty = qty + 1 WHERE id <= 10");
    converged(&source, &store, &daemon).await;
    let snapshots = store.psql(
        "postgres",
        "SELECT count(*) FROM tributary.state_history WHERE to_state = 'snapshotting'",
    );
    assert_eq!(snapshots, "1", "resuming took a new snapshot");
    // The tablespace must be empty before the disk goes.
    daemon.terminate();
    store.psql(
        "shop_replica",
        "ALTER TABLE public.items SET TABLESPACE pg_default",
    );
    store.psql("postgres", "DROP TABLESPACE tiny");
}

/// The slot's `wal_status` as the daemon's metrics report it.
fn metric_wal_status(addr: std::net::SocketAddr) -> Option<String> {
    let (_, body) = get(addr, "/metrics");
    ["reserved", "extended", "unreserved", "lost"]
        .into_iter()
        .find(|status| {
            value(
                &body,
                &format!(r#"tributary_slot_wal_status{{connector="shop",status="{status}"}}"#),
            ) == Some(1.0)
        })
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_held_back_goes_extended_unreserved_lost_and_retry_setup_rebuilds() {
    slot_held_back(None).await;
}

/// The same on the oldest major and on those whose `pg_replication_slots` says more: 17 and
/// 18 name the reason (`invalidation_reason`) and how long nothing streamed from the slot.
macro_rules! slot_held_back_on {
    ($($name:ident: $major:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $name() {
            slot_held_back(Some($major)).await;
        }
    )*};
}

slot_held_back_on! {
    pg13_slot_held_back_is_invalidated_and_rebuilt: 13;
    pg17_slot_held_back_is_invalidated_naming_the_reason: 17;
    pg18_slot_held_back_is_invalidated_naming_the_reason: 18;
}

/// The cause whose `tributary_slot_invalidated` series is 1 for the connector, if one is.
fn metric_invalidation_cause(addr: std::net::SocketAddr) -> Option<&'static str> {
    let (_, body) = get(addr, "/metrics");
    Cause::ALL.into_iter().map(Cause::as_str).find(|cause| {
        value(
            &body,
            &format!(r#"tributary_slot_invalidated{{cause="{cause}",connector="shop"}}"#),
        ) == Some(1.0)
    })
}

async fn slot_held_back(major: Option<u32>) {
    let builder = match major {
        Some(major) => Cluster::builder().major(major),
        None => Cluster::builder(),
    };
    let source = builder
        .setting("max_wal_size", "32MB")
        .setting("min_wal_size", "32MB")
        .setting("max_slot_wal_keep_size", "64MB")
        .setting("checkpoint_timeout", "1h")
        .start();
    let (store, daemon) = streaming_shop(&source, &[]).await;
    let addr = daemon.metrics_addr().await;
    eventually("wal_status reserved", || async {
        (metric_wal_status(addr).as_deref() == Some("reserved")).then_some(())
    })
    .await;

    // The replica's table is locked, so nothing is applied and the slot stays where it
    // is; the checkpointer is paused, so nothing is removed until the test says so.
    let blocker = lock_replica_table(&store, "shop", "public.items").await;
    let checkpointer = source.psql(
        "postgres",
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
    );
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill")
            .args([sig, &checkpointer])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    let slot_status = || {
        source.psql(
            "postgres",
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name LIKE 'tributary_%_1_shop'",
        )
    };
    let mut n = 100_000;
    let mut seen = vec!["reserved".to_owned()];
    for wanted in ["extended", "unreserved"] {
        // A new WAL segment per step, until the server reports the state.
        while slot_status() != wanted {
            n += 1;
            source.psql(
                "shop",
                &format!("INSERT INTO items VALUES ({n}, 'wal', 0); SELECT pg_switch_wal();"),
            );
            assert!(
                n < 100_020,
                "the slot never became {wanted}: {}",
                slot_status()
            );
        }
        eventually(
            &format!("the wal_status metric to say {wanted}"),
            || async { (metric_wal_status(addr).as_deref() == Some(wanted)).then_some(()) },
        )
        .await;
        seen.push(wanted.to_owned());
    }
    // The checkpoint removes the WAL the slot needs.
    signal("-CONT");
    source.psql("shop", "CHECKPOINT");
    assert_eq!(slot_status(), "lost");
    eventually("the wal_status metric to say lost", || async {
        (metric_wal_status(addr).as_deref() == Some("lost")).then_some(())
    })
    .await;
    seen.push("lost".to_owned());
    assert_eq!(seen, ["reserved", "extended", "unreserved", "lost"]);

    // The connector fails asking for a new snapshot, and everything that shows the slot
    // says why it is gone and what keeps it from recurring; retry-setup takes it.
    drop(blocker);
    daemon.wait_for_state("shop", "failed").await;
    let connector = daemon.connector("shop");
    let how = wal_removed_as_told(source.major());
    assert!(
        connector["last_error"]
            .as_str()
            .unwrap()
            .contains(&format!("invalidated by the source ({how})")),
        "{connector}"
    );
    let next_step = connector["next_step"].as_str().unwrap();
    assert!(
        next_step.contains("retry-setup shop --resnapshot")
            && next_step.contains("raise max_slot_wal_keep_size"),
        "{connector}"
    );
    assert_eq!(connector["slot"]["invalidation_cause"], "wal_removed");
    let listed = daemon.cli_ok(&["connector", "list"]);
    assert!(
        listed.contains(&format!("slot was invalidated by the source ({how})")),
        "{listed}"
    );
    let status = daemon.cli_fails(&["status"]);
    assert!(
        status.contains(&format!(
            "slot invalidated by the source ({how}): raise max_slot_wal_keep_size"
        )),
        "{status}"
    );
    // The walsender was ended when the slot was invalidated: 17+ says since when.
    let status: serde_json::Value =
        serde_json::from_str(&daemon.cli_fails(&["status", "--format", "json"])).unwrap();
    assert_eq!(
        status[0]["slot_inactive_seconds"].is_number(),
        source.major() >= 17,
        "{status}"
    );
    eventually("the invalidation metric to name the cause", || async {
        (metric_invalidation_cause(addr) == Some("wal_removed")).then_some(())
    })
    .await;
    daemon.cli_ok(&["connector", "retry-setup", "shop", "--wait"]);
    converged(&source, &store, &daemon).await;
}

/// PostgreSQL 18 invalidates a slot nothing streamed from for longer than
/// `idle_replication_slot_timeout` (at a checkpoint): while the daemon is down, status says
/// for how long the slot is idle; then `list`, `status`, the
/// connector's error and the metric name `idle_timeout` and the setting, and retry-setup
/// takes a new snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn pg18_names_a_slot_invalidated_for_being_idle() {
    let source = Cluster::builder().major(18).start();
    let (store, mut daemon) = streaming_shop(&source, &[]).await;
    daemon.terminate();
    source.psql("shop", "UPDATE items SET qty = 7 WHERE id <= 10");
    let status: serde_json::Value =
        serde_json::from_str(&daemon.cli_fails(&["status", "--format", "json"])).unwrap();
    assert!(status[0]["slot_inactive_seconds"].is_number(), "{status}");
    assert!(
        daemon.cli_fails(&["status"]).contains("slot inactive for"),
        "{status}"
    );

    source.psql(
        "postgres",
        "ALTER SYSTEM SET idle_replication_slot_timeout = '1s'; SELECT pg_reload_conf();",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    source.psql("postgres", "CHECKPOINT");
    // Like every invalidated slot from 16 on, it shows wal_status = lost too.
    assert_eq!(
        source.psql(
            "postgres",
            "SELECT invalidation_reason || ' ' || wal_status FROM pg_replication_slots
              WHERE slot_name LIKE 'tributary_%_1_shop'",
        ),
        "idle_timeout lost"
    );
    let how = "invalidation_reason = idle_timeout";
    let fix = "raise or disable idle_replication_slot_timeout";
    let listed = daemon.cli_ok(&["connector", "list"]);
    assert!(
        listed.contains(&format!("slot was invalidated by the source ({how})"))
            && listed.contains(fix),
        "{listed}"
    );
    assert_eq!(
        daemon.connector("shop")["slot"]["invalidation_cause"],
        "idle_timeout"
    );
    let status = daemon.cli_fails(&["status"]);
    assert!(
        status.contains(&format!("slot invalidated by the source ({how}): {fix}")),
        "{status}"
    );

    source.psql(
        "postgres",
        "ALTER SYSTEM RESET idle_replication_slot_timeout; SELECT pg_reload_conf();",
    );
    daemon.start();
    daemon.wait_for_state("shop", "failed").await;
    let connector = daemon.connector("shop");
    assert!(
        connector["last_error"]
            .as_str()
            .unwrap()
            .contains(&format!("invalidated by the source ({how})")),
        "{connector}"
    );
    let next_step = connector["next_step"].as_str().unwrap();
    assert!(
        next_step.contains("retry-setup shop --resnapshot") && next_step.contains(fix),
        "{connector}"
    );
    let addr = daemon.metrics_addr().await;
    eventually("the invalidation metric to name the cause", || async {
        (metric_invalidation_cause(addr) == Some("idle_timeout")).then_some(())
    })
    .await;
    daemon.cli_ok(&["connector", "retry-setup", "shop", "--wait"]);
    converged(&source, &store, &daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_starts_refusing_wal2json_fails_the_connector_until_it_is_allowed_again() {
    let source = Cluster::start();
    if !has_output_plugin_libraries(&source) {
        return;
    }
    let (store, daemon) = streaming_shop(&source, &[]).await;
    source.psql("shop", "UPDATE items SET qty = 1 WHERE id <= 10");
    converged(&source, &store, &daemon).await;

    // An administrator sets the list back to the default and reloads: the walsender that
    // streams goes on, the next START_REPLICATION is refused. Changes keep coming meanwhile.
    source.psql(
        "postgres",
        "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding';
         SELECT pg_reload_conf();",
    );
    source.psql(
        "shop",
        "INSERT INTO items SELECT g, 'while refused', 2 FROM generate_series(201, 250) g;
         DELETE FROM items WHERE id = 5;",
    );
    source.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'walsender'",
    );
    daemon.wait_for_state("shop", "failed").await;
    let connector = daemon.connector("shop");
    let error = connector["last_error"].as_str().unwrap();
    let next_step = connector["next_step"].as_str().unwrap();
    assert!(
        error.contains(
            "the source refuses wal2json as an output plugin at START_REPLICATION (ERROR 42501: \
             library \"wal2json\" may not be used as an output plugin): its \
             output_plugin_libraries is 'pgoutput, test_decoding', without wal2json"
        ),
        "{connector}"
    );
    assert!(!error.contains("REPLICATION attribute"), "{connector}");
    let fix = "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
               'wal2json'; SELECT pg_reload_conf();";
    assert!(
        next_step.contains(&format!(
            "{fix} Then run `tributary connector retry-setup shop`, which resumes from \
             replication slot {}, without a new snapshot.",
            connector["slot_name"].as_str().unwrap()
        )),
        "{connector}"
    );

    // Failed for good: no retry, so the source is asked no more.
    let refusals = || {
        source
            .log_contents()
            .matches("may not be used as an output plugin")
            .count()
    };
    let seen = refusals();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(refusals(), seen, "the pipeline was retried");
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("failed"));
    assert!(
        !log(&daemon)
            .lines()
            .any(|l| l.contains("will retry") && l.contains("output plugin")),
        "{}",
        daemon.log_tail()
    );

    // Asked too early, retry-setup says what preflight says, and starts nothing.
    let out = daemon.cli(&["connector", "retry-setup", "shop"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("output_plugin_libraries is 'pgoutput, test_decoding', without wal2json")
            && stdout.contains(fix)
            && stdout.contains("Setup of shop not restarted."),
        "{stdout}"
    );
    assert_eq!(daemon.connector_state("shop").as_deref(), Some("failed"));

    // The operator runs the fix as it was given, and asks the connector to go on.
    source.psql("postgres", fix);
    let out = daemon.cli_ok(&["connector", "retry-setup", "shop", "--wait"]);
    assert!(
        out.contains("resumes from the replica's applied position"),
        "{out}"
    );
    assert_eq!(
        source.psql("postgres", "SHOW output_plugin_libraries"),
        "pgoutput, test_decoding, wal2json"
    );
    source.psql("shop", "UPDATE items SET qty = qty + 1 WHERE id > 240");
    converged(&source, &store, &daemon).await;
    let snapshots = store.psql(
        "postgres",
        "SELECT count(*) FROM tributary.state_history WHERE to_state = 'snapshotting'",
    );
    assert_eq!(snapshots, "1", "resuming took a new snapshot");
    let failures = store.psql(
        "postgres",
        "SELECT count(*) FROM tributary.state_history WHERE to_state = 'failed'",
    );
    assert_eq!(failures, "1");
}
