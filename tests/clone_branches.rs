//! Branches on a PostgreSQL 18 branch store whose data directory is on XFS with reflinks
//! (a loop-mounted image, as root), with `file_copy_method = clone`: the store check says
//! branches clone, a branch shares the replica's blocks (the filesystem's used space grows
//! by a fraction of the replica's size, where a copy would double it), the branch equals
//! the replica at its position, and writes to the branch leave the replica alone.

use crate::daemon::{content, wait_replica, Daemon};
use crate::harness::Cluster;

/// Bytes used on the filesystem holding `path`.
fn used_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=used"])
        .arg(path)
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df said {text:?}"))
}

#[tokio::test]
async fn pg18_branches_clone_on_xfs_with_reflinks() {
    // CI runs as root; mounting needs it.
    if std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout != b"0\n")
    {
        eprintln!("skipped: mounting an XFS image needs root");
        return;
    }
    let source = Cluster::start();
    source.psql(
        "postgres",
        "CREATE SCHEMA app;
         CREATE TABLE app.wide (id int PRIMARY KEY, pad text NOT NULL);
         INSERT INTO app.wide SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 100000) g;",
    );
    let store = Cluster::builder()
        .major(18)
        .reflink_storage()
        .setting("file_copy_method", "clone")
        .start();
    let mut daemon = Daemon::new(&store);
    let check = daemon.cli_ok(&["store", "check"]);
    assert!(
        check.contains("✓ branch copy") && check.contains("file_copy_method = clone on xfs"),
        "{check}"
    );

    daemon.create_connector(&source.superuser_url("postgres"), "shop", "app");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    let replica_bytes: u64 = store
        .psql("postgres", "SELECT pg_database_size('shop_replica')")
        .parse()
        .unwrap();
    assert!(replica_bytes > 100_000_000, "replica of {replica_bytes} B");

    store.psql("postgres", "CHECKPOINT");
    let before = used_bytes(store.data_dir());
    daemon.cli_ok(&["branch", "create", "dev"]);
    store.psql("postgres", "CHECKPOINT");
    let grown = used_bytes(store.data_dir()).saturating_sub(before);
    eprintln!("a branch of a {replica_bytes} B replica used {grown} B more on XFS");
    assert!(
        grown < replica_bytes / 4,
        "the branch took {grown} B of a {replica_bytes} B replica: copied, not cloned"
    );
    assert_eq!(
        content(&store, "dev", &["app"]),
        content(&store, "shop_replica", &["app"]),
        "the branch equals the replica"
    );

    // Writes to the branch stay in the branch.
    store.psql(
        "dev",
        "UPDATE app.wide SET pad = 'branch' WHERE id <= 1000; DELETE FROM app.wide WHERE id > 99000;",
    );
    wait_replica(&source, &store, "shop", &["app"], &daemon).await;
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT count(*) FROM app.wide WHERE pad = 'branch'"
        ),
        "0"
    );
    assert_eq!(store.psql("dev", "SELECT count(*) FROM app.wide"), "99000");
}
