//! The README's quickstart, non-interactively: `scripts/quickstart.sh --for N` starts its
//! own servers, snapshots, branches, streams a workload, and ends with `tributary verify`
//! comparing the replica with the source while the workload goes on.

use std::net::TcpListener;
use std::process::Command;

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

#[test]
fn the_quickstart_ends_with_verify_finding_the_replica_equal() {
    let dir = tempfile::Builder::new()
        .prefix("tributary-quickstart-test-")
        .tempdir()
        .unwrap();
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/quickstart.sh"
    ))
    .args(["--for", "8"])
    .env("TRIBUTARY_BIN", env!("CARGO_BIN_EXE_tributary"))
    .env("QUICKSTART_SOURCE_PORT", free_port().to_string())
    .env("QUICKSTART_STORE_PORT", free_port().to_string())
    .env("QUICKSTART_METRICS", "127.0.0.1:0")
    .env("QUICKSTART_DIR", dir.path().join("qs"))
    .env_remove("RUST_LOG")
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    for line in [
        "✓ demo is streaming",
        "✓ Branch demo_dev of connector demo",
        "psql: psql 'postgresql://tributary_branch_demo_dev:",
        "CHANGES/S",
        "public.pgbench_accounts",
        "✓ the replica equals the source: 4 tables",
    ] {
        assert!(stdout.contains(line), "{line:?} not in\n{stdout}\n{stderr}");
    }
    // Everything is cleaned up.
    assert!(!dir.path().join("qs").exists());
}
