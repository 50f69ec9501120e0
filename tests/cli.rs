//! The binary as an operator runs it: exit codes, messages, and `tail` end to end.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::Cluster;
use crate::versions::wal2json_at_least;

fn tributary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
}

#[test]
fn usage_errors_exit_with_2() {
    let out = tributary().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = tributary()
        .arg("tail")
        .env_remove("TRIBUTARY_SOURCE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_source_url_exits_with_1_and_hides_the_password() {
    let out = tributary()
        .args([
            "tail",
            "postgresql://u:hunter2@localhost/db?sslmode=sometimes",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown sslmode"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn tail_prints_changes_and_leaves_no_slot_behind() {
    let cluster = Cluster::start();
    cluster.psql(
        "postgres",
        "CREATE TABLE items (id int PRIMARY KEY, name text, price double precision)",
    );
    let mut child = tributary()
        .arg("tail")
        .env("TRIBUTARY_SOURCE_URL", cluster.superuser_url("postgres"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sql = cluster.connect("postgres").await;
    crate::support::eventually("tail's temporary slot", || async {
        let n: i64 = sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE temporary",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    // A column added in the same transaction prints by its type too.
    sql.execute("INSERT INTO items VALUES (1, 'widget', 'NaN')", &[])
        .await
        .unwrap();
    sql.batch_execute(
        "ALTER TABLE items ADD COLUMN qty int;
         INSERT INTO items VALUES (2, '3', 2.5, 3);",
    )
    .await
    .unwrap();

    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(6)
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("tail printed the transactions")
        .unwrap();
    // Numbers print bare by their column's type, also where wal2json 2.6+ sends them as
    // strings (numeric-data-types-as-string); before 2.6 it sends NaN as null.
    let nan = if wal2json_at_least(cluster.install().wal2json.as_deref(), 2, 6) {
        "NaN"
    } else {
        "NULL"
    };
    assert!(lines[0].starts_with("BEGIN"), "{lines:?}");
    assert_eq!(
        lines[1],
        format!(r#"INSERT public.items new: id=1 name="widget" price={nan}"#)
    );
    assert!(lines[2].starts_with("COMMIT"), "{lines:?}");
    assert!(lines[3].starts_with("BEGIN"), "{lines:?}");
    assert_eq!(
        lines[4],
        r#"INSERT public.items new: id=2 name="3" price=2.5 qty=3"#
    );
    assert!(lines[5].starts_with("COMMIT"), "{lines:?}");

    // SIGTERM ends it cleanly, and the temporary slot goes with it.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    crate::support::eventually("the temporary slot to disappear", || async {
        let n: i64 = sql
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
}

#[test]
fn output_into_a_closed_pipe_is_dropped_without_a_panic() {
    // `tributary … | head -0`: the reader is gone before the first line is written. Run
    // where no configuration names a branch store (whose absence would only slow it down).
    let dir = tempfile::tempdir().unwrap();
    let mut child = tributary()
        .current_dir(dir.path())
        .args([
            "connector",
            "preflight",
            "postgresql",
            "postgresql://nobody@127.0.0.1:1/db",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
}
