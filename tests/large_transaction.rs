//! A single source transaction of more than 1 GiB streams through the client and the
//! decoder with bounded memory: nothing buffers a whole transaction.
//!
//! Memory is measured in a child process (this test binary run again for one ignored
//! test), so the peak RSS belongs to the streaming alone and not to tests running beside it.

use std::process::Command;

use tributary::change::Message;
use tributary::source::{SnapshotAction, StreamEvent};
use tributary::types::Lsn;

use crate::harness::Cluster;
use crate::support::*;

const ROWS: u64 = 1_100_000;
/// Peak RSS allowed for streaming the whole transaction (the daemon's budget is 150 MiB).
const RSS_LIMIT_KIB: u64 = 150 * 1024;
const CHILD_TEST: &str = "large_transaction::child_streams_the_transaction";

#[tokio::test]
async fn one_gigabyte_transaction_streams_with_bounded_memory() {
    let cluster = Cluster::builder()
        .setting("max_wal_size", "4GB")
        .setting("checkpoint_timeout", "30min")
        .start();
    let url = cluster.superuser_url("postgres");
    cluster.psql(
        "postgres",
        "CREATE TABLE big (id bigint PRIMARY KEY, payload text)",
    );
    let slot = slot("big_tx");
    let mut repl = replication_client(&url).await;
    repl.create_slot(&slot, false, SnapshotAction::NoExport)
        .await
        .unwrap();
    repl.close().await;
    // ~1 KiB per row, not compressible enough to be TOASTed: > 1 GiB in one transaction.
    cluster.psql(
        "postgres",
        &format!(
            "INSERT INTO big SELECT g, repeat(md5(g::text), 31) FROM generate_series(1, {ROWS}) g"
        ),
    );

    let exe = std::env::current_exe().unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(exe)
            .args([
                CHILD_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TRIBUTARY_TEST_SOURCE_URL", &url)
            .env("TRIBUTARY_TEST_SLOT", slot.as_str())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // libtest may print the report on the line that names the test.
    let report = stdout
        .lines()
        .find_map(|l| l.find("large-transaction:").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no report from the child:\n{stdout}"));
    eprintln!("{report}");
    let field = |name: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in {report}"))
    };
    assert_eq!(field("rows"), ROWS, "every row arrived");
    assert!(
        field("bytes") > 1 << 30,
        "more than 1 GiB streamed: {report}"
    );
    assert!(
        field("peak_rss_kib") < RSS_LIMIT_KIB,
        "peak RSS over {RSS_LIMIT_KIB} KiB: {report}"
    );
}

/// Run by the test above in a child process; does nothing useful on its own.
#[tokio::test]
#[ignore = "run in a child process by one_gigabyte_transaction_streams_with_bounded_memory"]
async fn child_streams_the_transaction() {
    let url = std::env::var("TRIBUTARY_TEST_SOURCE_URL").expect("run by the parent test");
    let slot = slot(&std::env::var("TRIBUTARY_TEST_SLOT").unwrap());
    let mut stream = start_stream(&url, &slot, Lsn::ZERO).await;
    let started = std::time::Instant::now();
    let (mut rows, mut bytes) = (0u64, 0u64);
    loop {
        let message = tokio::time::timeout(PATIENCE * 5, stream.next())
            .await
            .expect("the stream stalled")
            .unwrap()
            .expect("stream ended");
        let StreamEvent::Message(message) = message else {
            continue;
        };
        match message {
            Message::Change(change) => {
                rows += 1;
                bytes += change.approx_bytes() as u64;
            }
            Message::Commit(c) => {
                stream.set_flushed(c.end_lsn);
                break;
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stream.send_status().await.unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let peak_rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    println!(
        "large-transaction: rows={rows} bytes={bytes} peak_rss_kib={peak_rss_kib} seconds={elapsed:.1} mb_per_s={:.1}",
        bytes as f64 / 1e6 / elapsed
    );
}
