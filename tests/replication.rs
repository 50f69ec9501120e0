//! The replication protocol against a real server: exported snapshots, resume after an
//! acknowledgement, keepalives, idle acknowledgement.

use std::time::Duration;

use tributary::change::{ChangeKind, Message, Value};
use tributary::source::wal2json::PluginOptions;
use tributary::source::{AckTracker, SnapshotAction, StreamEvent};
use tributary::types::Lsn;

use crate::harness::Cluster;
use crate::support::*;

fn inserted_ids(tx: &Transaction) -> Vec<String> {
    tx.changes()
        .filter(|c| c.kind == ChangeKind::Insert)
        .map(|c| {
            c.new_value("id")
                .and_then(Value::as_text)
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Table `t (id int PRIMARY KEY)` and a new slot (no exported snapshot) on `cluster`.
async fn table_and_slot(
    cluster: &Cluster,
    name: &str,
) -> (
    tokio_postgres::Client,
    String,
    tributary::types::SlotName,
    tributary::source::ReplicationClient,
    tributary::source::CreatedSlot,
) {
    let sql = cluster.connect("postgres").await;
    sql.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let slot = slot(name);
    let url = cluster.superuser_url("postgres");
    let mut repl = replication_client(&url).await;
    let created = repl
        .create_slot(&slot, false, SnapshotAction::NoExport)
        .await
        .unwrap();
    (sql, url, slot, repl, created)
}

#[tokio::test]
async fn exported_snapshot_sees_exactly_what_committed_before_the_consistent_point() {
    let cluster = Cluster::start();
    let sql = cluster.connect("postgres").await;
    sql.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         INSERT INTO t SELECT g, 'before' FROM generate_series(1, 3) g;",
    )
    .await
    .unwrap();

    let slot = slot("snap_export");
    let url = cluster.superuser_url("postgres");
    let mut repl = replication_client(&url).await;
    let created = repl
        .create_slot(&slot, false, SnapshotAction::Export)
        .await
        .unwrap();
    let snapshot = created.snapshot_name.clone().expect("snapshot exported");
    assert_eq!(created.output_plugin, "wal2json");

    // Committed after the consistent point: not in the snapshot, but on the stream.
    for id in [4, 5] {
        sql.execute("INSERT INTO t VALUES ($1, 'after')", &[&id])
            .await
            .unwrap();
    }

    // The replication connection stays idle while another session reads under the snapshot.
    let mut reader = cluster.connect("postgres").await;
    let tx = reader
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    tx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .await
        .unwrap();
    let ids: Vec<i32> = tx
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit().await.unwrap();
    assert_eq!(ids, [1, 2, 3]);

    let mut stream = repl
        .start_replication(
            &slot,
            created.consistent_point,
            PluginOptions::default(),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let txs = read_transactions(&mut stream, 2).await;
    let streamed: Vec<String> = txs.iter().flat_map(inserted_ids).collect();
    assert_eq!(streamed, ["4", "5"], "exactly the rows after the snapshot");
    assert!(txs.iter().all(|t| t.end_lsn > created.consistent_point));
}

#[tokio::test]
async fn resume_delivers_only_unacknowledged_transactions() {
    let cluster = Cluster::start();
    let (sql, url, slot, repl, _) = table_and_slot(&cluster, "resume").await;
    for id in 1..=5 {
        sql.execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
    }

    let mut stream = repl
        .start_replication(
            &slot,
            Lsn::ZERO,
            PluginOptions::default(),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let first = read_transactions(&mut stream, 5).await;
    let ids: Vec<String> = first.iter().flat_map(inserted_ids).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);

    // Acknowledge the second transaction only, then go away.
    let acked = first[1].end_lsn;
    stream.set_flushed(acked);
    let client = stream.stop().await.unwrap();
    client.close().await;
    eventually("the server to record the acknowledgement", || async {
        (confirmed_flush(&sql, &slot).await == acked).then_some(())
    })
    .await;

    // Resuming from the slot's position: transactions 3..5 again, never 1 or 2.
    let mut stream = start_stream(&url, &slot, Lsn::ZERO).await;
    let again = read_transactions(&mut stream, 3).await;
    let ids: Vec<String> = again.iter().flat_map(inserted_ids).collect();
    assert_eq!(ids, ["3", "4", "5"]);

    // A later transaction follows them, with nothing replayed in between.
    sql.execute("INSERT INTO t VALUES (6)", &[]).await.unwrap();
    let next = read_transactions(&mut stream, 1).await;
    assert_eq!(inserted_ids(&next[0]), ["6"]);
}

#[tokio::test]
async fn acknowledgement_never_moves_backwards() {
    let cluster = Cluster::start();
    let (sql, url, slot, _, _) = table_and_slot(&cluster, "monotonic").await;
    for id in 1..=2 {
        sql.execute("INSERT INTO t VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    let mut stream = start_stream(&url, &slot, Lsn::ZERO).await;
    let txs = read_transactions(&mut stream, 2).await;
    stream.set_flushed(txs[1].end_lsn);
    stream.set_flushed(txs[0].end_lsn);
    assert_eq!(stream.flushed(), txs[1].end_lsn);
    stream.send_status().await.unwrap();
    eventually("the acknowledgement", || async {
        (confirmed_flush(&sql, &slot).await == txs[1].end_lsn).then_some(())
    })
    .await;
}

#[tokio::test]
async fn connection_survives_ten_seconds_idle_with_a_two_second_sender_timeout() {
    let cluster = Cluster::builder()
        .setting("wal_sender_timeout", "2s")
        .start();
    let slot = slot("keepalive");
    let url = cluster.superuser_url("postgres");
    let mut repl = replication_client(&url).await;
    assert_eq!(
        repl.wal_sender_timeout().await.unwrap(),
        Duration::from_secs(2)
    );
    repl.create_slot(&slot, false, SnapshotAction::NoExport)
        .await
        .unwrap();
    // No periodic status updates: only the answers to the server's keepalive requests keep
    // this connection alive.
    let mut stream = repl
        .start_replication(
            &slot,
            Lsn::ZERO,
            PluginOptions::default(),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();

    let mut requests = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(message) = tokio::time::timeout_at(deadline, stream.next()).await {
        match message {
            Ok(Some(StreamEvent::Keepalive(k))) if k.reply_requested => requests += 1,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the server ended the stream"),
            Err(e) => panic!(
                "the connection failed while idle: {e}\n{}",
                cluster.log_tail()
            ),
        }
    }
    assert!(
        requests >= 3,
        "the server asked for replies only {requests} times in 10 s"
    );
    let sql = cluster.connect("postgres").await;
    let senders: i64 = sql
        .query_one("SELECT count(*) FROM pg_stat_replication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(senders, 1, "the walsender is still connected");
    assert!(!cluster
        .log_contents()
        .contains("terminating walsender process due to replication timeout"));
}

#[tokio::test]
async fn idle_connector_acknowledges_wal_written_to_other_databases() {
    let cluster = Cluster::start();
    cluster.create_database("watched");
    cluster.create_database("busy");
    let watched = cluster.connect("watched").await;
    watched
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let busy = cluster.connect("busy").await;
    busy.batch_execute("CREATE TABLE noise (id serial PRIMARY KEY, v text)")
        .await
        .unwrap();

    let slot = slot("idle_ack");
    let url = cluster.superuser_url("watched");
    let mut repl = replication_client(&url).await;
    let created = repl
        .create_slot(&slot, false, SnapshotAction::NoExport)
        .await
        .unwrap();
    let mut stream = repl
        .start_replication(
            &slot,
            Lsn::ZERO,
            PluginOptions::default(),
            Duration::from_millis(200),
        )
        .await
        .unwrap();

    for _ in 0..20 {
        busy.execute(
            "INSERT INTO noise (v) SELECT repeat('x', 1000) FROM generate_series(1, 100)",
            &[],
        )
        .await
        .unwrap();
    }
    let written = current_wal_lsn(&busy).await;
    assert!(written > created.consistent_point);

    // The owner's loop as the pipeline runs it: keepalives are acknowledged while nothing
    // is in flight.
    let mut tracker = AckTracker::new(created.consistent_point);
    let pump = async {
        loop {
            match stream.next().await.unwrap().unwrap() {
                StreamEvent::Keepalive(k) => {
                    if let Some(position) = tracker.idle_position(k.wal_end) {
                        tracker.applied(position);
                    }
                    stream.set_flushed(tracker.flushed());
                }
                StreamEvent::Message(m) => {
                    panic!("no change was made in the watched database, got {m:?}")
                }
                StreamEvent::Notice(n) => panic!("unexpected notice {n}"),
            }
        }
    };
    let check = eventually(
        "confirmed_flush_lsn to pass the other database's writes",
        || async { (confirmed_flush(&watched, &slot).await >= written).then_some(()) },
    );
    tokio::select! {
        _ = pump => unreachable!(),
        _ = check => {}
    }
}

#[tokio::test]
async fn in_flight_transaction_is_not_acknowledged_by_keepalives() {
    let cluster = Cluster::start();
    let (sql, _, slot, repl, created) = table_and_slot(&cluster, "in_flight").await;
    sql.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let mut stream = repl
        .start_replication(
            &slot,
            Lsn::ZERO,
            PluginOptions::default(),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    let mut tracker = AckTracker::new(created.consistent_point);
    // Receive the transaction but never apply it, while other WAL keeps the server sending
    // keepalives.
    let received = read_transactions(&mut stream, 1).await;
    tracker.begin();
    tracker.commit(received[0].end_lsn);
    for _ in 0..10 {
        sql.execute("SELECT pg_logical_emit_message(false, 'noise', 'x')", &[])
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(message) = tokio::time::timeout_at(deadline, stream.next()).await {
        match message.unwrap().unwrap() {
            StreamEvent::Keepalive(k) => {
                if let Some(position) = tracker.idle_position(k.wal_end) {
                    tracker.applied(position);
                }
                stream.set_flushed(tracker.flushed());
            }
            // Non-transactional messages are not part of any transaction.
            StreamEvent::Message(m) => assert!(matches!(m, Message::Logical(_)), "{m:?}"),
            StreamEvent::Notice(n) => panic!("unexpected notice {n}"),
        }
    }
    stream.send_status().await.unwrap();
    assert_eq!(confirmed_flush(&sql, &slot).await, created.consistent_point);
}

#[tokio::test]
async fn dropping_a_slot_waits_for_its_reader_to_let_go() {
    let cluster = Cluster::start();
    let sql = cluster.connect("postgres").await;
    let slot = slot("dropped");
    let url = cluster.superuser_url("postgres");
    let mut repl = replication_client(&url).await;
    repl.create_slot(&slot, false, SnapshotAction::NoExport)
        .await
        .unwrap();

    // Creating it twice is the server's error, with its SQLSTATE.
    let again = repl
        .create_slot(&slot, false, SnapshotAction::NoExport)
        .await
        .err()
        .unwrap();
    assert_eq!(again.sqlstate(), Some("42710"), "{again}");

    // While another session streams from it, DROP … WAIT blocks until that session ends.
    let reader = start_stream(&url, &slot, Lsn::ZERO).await;
    let mut dropper = replication_client(&url).await;
    let drop = tokio::spawn(async move { dropper.drop_slot(&slot, true).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !drop.is_finished(),
        "the drop waits while the slot is in use"
    );
    reader.stop().await.unwrap().close().await;
    tokio::time::timeout(PATIENCE, drop)
        .await
        .expect("the drop finishes once the reader is gone")
        .unwrap()
        .unwrap();
    let left: i64 = sql
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    let missing = repl
        .drop_slot(&crate::support::slot("dropped"), false)
        .await
        .err()
        .unwrap();
    assert_eq!(missing.sqlstate(), Some("42704"), "{missing}");
    assert!(missing.to_string().contains("does not exist"), "{missing}");
}
