//! Helpers shared by the integration tests that stream from a real server.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use tokio_postgres::Client;
use tributary::change::Message;
use tributary::source::wal2json::PluginOptions;
use tributary::source::{ConnInfo, ReplicationClient, ReplicationStream, StreamEvent};
use tributary::types::{Lsn, SlotName};

/// Generous: a loaded 2-core CI machine can be slow, and nothing here is a timing test.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub async fn replication_client(url: &str) -> ReplicationClient {
    let info = ConnInfo::parse(url).expect("test URL parses");
    ReplicationClient::connect(&info)
        .await
        .unwrap_or_else(|e| panic!("replication connection to {info} failed: {e}"))
}

pub fn slot(name: &str) -> SlotName {
    SlotName::new(name).unwrap()
}

/// Starts wal2json streaming from `start` with a 1 s status interval.
pub async fn start_stream(url: &str, slot: &SlotName, start: Lsn) -> ReplicationStream {
    replication_client(url)
        .await
        .start_replication(
            slot,
            start,
            PluginOptions::default(),
            Duration::from_secs(1),
        )
        .await
        .expect("START_REPLICATION")
}

/// One source transaction as received: its messages from BEGIN to COMMIT.
#[derive(Debug)]
pub struct Transaction {
    pub messages: Vec<Message>,
    /// Where the commit ends: what to acknowledge once it is applied.
    pub end_lsn: Lsn,
}

impl Transaction {
    pub fn changes(&self) -> impl Iterator<Item = &tributary::change::Change> {
        self.messages.iter().filter_map(|m| match m {
            Message::Change(c) => Some(c),
            _ => None,
        })
    }
}

/// Reads and decodes until `count` transactions have been received.
pub async fn read_transactions(stream: &mut ReplicationStream, count: usize) -> Vec<Transaction> {
    let read = async {
        let mut done = Vec::new();
        let mut current = Vec::new();
        while done.len() < count {
            let message = stream
                .next()
                .await
                .expect("stream error")
                .expect("stream ended");
            let StreamEvent::Message(decoded) = message else {
                continue;
            };
            let commit_end = match &decoded {
                Message::Commit(c) => {
                    // BEGIN announced the same position.
                    match current.first() {
                        Some(Message::Begin(b)) => assert_eq!(b.end_lsn, c.end_lsn),
                        other => panic!("transaction without BEGIN: {other:?}"),
                    }
                    Some(c.end_lsn)
                }
                _ => None,
            };
            current.push(decoded);
            if let Some(end_lsn) = commit_end {
                done.push(Transaction {
                    messages: std::mem::take(&mut current),
                    end_lsn,
                });
            }
        }
        done
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("fewer than {count} transactions arrived within {PATIENCE:?}"))
}

/// Polls `check` until it returns `Some`, or panics after [`PATIENCE`] saying `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The slot's `confirmed_flush_lsn`.
pub async fn confirmed_flush(client: &Client, slot: &SlotName) -> Lsn {
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot.as_str()],
        )
        .await
        .expect("slot exists");
    row.get::<_, String>(0).parse().unwrap()
}

pub async fn current_wal_lsn(client: &Client) -> Lsn {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

/// Whether `cluster`'s server has `output_plugin_libraries` (current minor releases); the
/// tests of it have nothing to check on older ones, and say so.
pub fn has_output_plugin_libraries(cluster: &crate::harness::Cluster) -> bool {
    let has = cluster.install().has_setting("output_plugin_libraries");
    if !has {
        eprintln!(
            "PostgreSQL {} predates output_plugin_libraries: nothing to check",
            cluster.install().version
        );
    }
    has
}

/// How the connector's error, `connector list` and `status` say that the source removed the
/// WAL of a slot on `major`: 17+ names the reason, older majors only report the WAL as lost.
pub fn wal_removed_as_told(major: u32) -> &'static str {
    if major >= 17 {
        "invalidation_reason = wal_removed"
    } else {
        "wal_status = lost"
    }
}

/// A source of `major` (the default one when `None`) as the tests of failover and of
/// standbys use it: schema `app` made by `tables` (SQL), and the role `repl` (LOGIN
/// REPLICATION, SELECT on `app`, SCRAM over TCP with `password`; no superuser).
pub fn repl_source(major: Option<u32>, password: &str, tables: &str) -> crate::harness::Cluster {
    let mut builder = crate::harness::Cluster::builder()
        .hba("host all repl 127.0.0.1/32 scram-sha-256")
        .hba("host replication repl 127.0.0.1/32 scram-sha-256");
    if let Some(major) = major {
        builder = builder.major(major);
    }
    let source = builder.start();
    source.psql(
        "postgres",
        &format!(
            "CREATE SCHEMA app;
             {tables}
             CREATE ROLE repl LOGIN REPLICATION PASSWORD '{password}';
             GRANT CONNECT, CREATE ON DATABASE postgres TO repl;
             GRANT USAGE ON SCHEMA app TO repl;
             GRANT SELECT ON ALL TABLES IN SCHEMA app TO repl;"
        ),
    );
    source
}
