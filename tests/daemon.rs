//! Running the `tributary` binary as an operator would, against harness clusters, and
//! comparing source and replica content.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::harness::{Cluster, Install};
use crate::support::PATIENCE;

/// A `tributary run` process and the environment every CLI call shares with it.
pub struct Daemon {
    child: Option<Child>,
    dir: TempDir,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// The environment for a branch store whose control database is `postgres` on `store`.
    pub fn new(store: &Cluster) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("tributary-daemon-")
            .tempdir()
            .unwrap();
        let env = vec![
            (
                "TRIBUTARY__STORE__URL".into(),
                store.superuser_url("postgres"),
            ),
            (
                "TRIBUTARY__SECRETS__KEY_FILE".into(),
                dir.path().join("tributary.key").display().to_string(),
            ),
            (
                "TRIBUTARY__SUPERVISOR__POLL_INTERVAL_SECS".into(),
                "1".into(),
            ),
            (
                "TRIBUTARY__SUPERVISOR__BACKOFF_INITIAL_MS".into(),
                "200".into(),
            ),
            ("TRIBUTARY__SUPERVISOR__BACKOFF_MAX_SECS".into(), "2".into()),
            (
                "TRIBUTARY__PIPELINE__SNAPSHOT_CHUNK_BYTES".into(),
                "1048576".into(),
            ),
            ("RUST_LOG".into(), "info,tributary=debug".into()),
            // Daemons of tests running side by side each take a free port.
            ("TRIBUTARY__METRICS__LISTEN".into(), "127.0.0.1:0".into()),
            ("TRIBUTARY__METRICS__SLOT_INTERVAL_SECS".into(), "1".into()),
            // pg_dump and pg_restore of the suite's PostgreSQL (TRIBUTARY_PG_MAJOR), not the
            // newest the machine has; a test of other majors sets its own.
            (
                "TRIBUTARY_PG_BINDIR".into(),
                Install::default().bindir.display().to_string(),
            ),
        ];
        Daemon {
            child: None,
            dir,
            env,
        }
    }

    /// Another daemon on the same bookkeeping (same settings and secrets key), with a log
    /// of its own.
    pub fn sibling(&self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("tributary-daemon-")
            .tempdir()
            .unwrap();
        Daemon {
            child: None,
            dir,
            env: self.env.clone(),
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the running daemon.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Adds or replaces an environment variable (a setting) for later starts and CLI calls.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Daemon {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Makes later starts and CLI calls kill themselves with SIGKILL at `point`
    /// (`src/crash.rs`); `None` lets them run through it again.
    pub fn crash_at(&mut self, point: Option<tributary::crash::CrashPoint>) -> &mut Daemon {
        match point {
            Some(point) => self.set(tributary::crash::ENV, point.name()),
            None => self.unset(tributary::crash::ENV),
        }
    }

    /// Like [`Daemon::crash_at`], the `nth` time the point is reached.
    pub fn crash_at_nth(&mut self, point: tributary::crash::CrashPoint, nth: u32) -> &mut Daemon {
        self.set(tributary::crash::ENV, &format!("{}:{nth}", point.name()))
    }

    /// Removes an environment variable, so that later starts use the setting's default.
    pub fn unset(&mut self, key: &str) -> &mut Daemon {
        self.env.retain(|(k, _)| k != key);
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
        command.current_dir(self.dir.path());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Starts `tributary run`, appending to the log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = self
            .command()
            .arg("run")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The address of the running daemon's metrics endpoint, from its log (the daemon
    /// binds port 0, so the system picked it).
    pub async fn metrics_addr(&self) -> std::net::SocketAddr {
        crate::support::eventually("the metrics endpoint to listen", || async {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let line = log
                .lines()
                .rev()
                .find(|l| l.contains("metrics and health endpoints listening"))?;
            let at = line.find("listen=")? + "listen=".len();
            line[at..].split_whitespace().next()?.parse().ok()
        })
        .await
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_exit()
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_sigterm(&self) {
        let child = self.child.as_ref().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the daemon to exit (after SIGTERM).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not exit after SIGTERM:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running daemon's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Runs `tributary <args>` with the daemon's environment.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs `tributary <args>` with the daemon's environment on a pseudo-terminal (through
    /// util-linux `script`), typing `input`; stdout holds what the terminal showed.
    pub fn cli_on_terminal(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write as _;
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let line = std::iter::once(env!("CARGO_BIN_EXE_tributary"))
            .chain(args.iter().copied())
            .map(quote)
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = Command::new("script");
        script.current_dir(self.dir.path());
        // The daemon's debug log would go to the same terminal.
        for (k, v) in self.env.iter().filter(|(k, _)| k != "RUST_LOG") {
            script.env(k, v);
        }
        let mut child = script
            .env("RUST_LOG", "warn")
            .args(["-q", "-e", "-c", &line, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("util-linux script");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    /// Like [`Daemon::cli`], panicking with the output when it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tributary {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `tributary <args>` with the daemon's environment, stdout and stderr piped.
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Like [`Daemon::cli`] for a command that must exit 1 (a check that fails, such as
    /// `status` with a connector not healthy): its stdout, panicking with the output
    /// otherwise.
    pub fn cli_fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "tributary {args:?} did not exit 1:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `status --format json` and whether it exited 0 (every enabled connector healthy).
    pub fn status(&self) -> (bool, Vec<serde_json::Value>) {
        let out = self.cli(&["status", "--format", "json"]);
        let code = out.status.code();
        assert!(
            matches!(code, Some(0 | 1)),
            "status exited {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let views = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        });
        (code == Some(0), views)
    }

    /// `connector create postgresql <url> --name <name> --schemas <schemas> --nan-as-null
    /// accept`, which must succeed. With wal2json before 2.6 (Debian 12's), any numeric or
    /// float column needs that decision; the tests of the refusal itself are in `nan.rs`.
    pub fn create_connector(&self, url: &str, name: &str, schemas: &str) -> String {
        self.cli_ok(&[
            "connector",
            "create",
            "postgresql",
            url,
            "--name",
            name,
            "--schemas",
            schemas,
            "--nan-as-null",
            "accept",
        ])
    }

    /// Whether the source's wal2json sends NaN and the infinities as they are (2.6 or
    /// newer), as `connector preflight` finds out for `schemas`.
    pub fn wal2json_sends_nan(&self, url: &str, schemas: &str) -> bool {
        let out = self.cli(&[
            "connector",
            "preflight",
            "postgresql",
            url,
            "--schemas",
            schemas,
            "--format",
            "json",
        ]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "numeric-data-types-as-string")
            .unwrap_or_else(|| panic!("no numeric check in {report}"));
        check["value"].as_str().unwrap().starts_with("supported")
    }

    /// `connector list --format json` as JSON values.
    pub fn connectors(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli_ok(&["connector", "list", "--format", "json"])).unwrap()
    }

    /// The connector `name` as `connector list --format json` shows it; it must exist.
    pub fn connector(&self, name: &str) -> serde_json::Value {
        self.connectors()
            .into_iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no connector {name} in `connector list`"))
    }

    pub fn connector_state(&self, name: &str) -> Option<String> {
        self.connectors()
            .into_iter()
            .find(|c| c["name"] == name)
            .map(|c| c["state"].as_str().unwrap().to_owned())
    }

    /// The connector's tables as `connector tables --format json` shows them, by
    /// `schema.name`.
    pub fn tables(&self, connector: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        let listed: Vec<serde_json::Value> = serde_json::from_str(&self.cli_ok(&[
            "connector",
            "tables",
            connector,
            "--format",
            "json",
        ]))
        .unwrap();
        listed
            .into_iter()
            .map(|t| (t["table"].as_str().unwrap().to_owned(), t))
            .collect()
    }

    /// Waits until the connector's `table` (`schema.name`) is in `state`; its row.
    pub async fn wait_for_table(
        &self,
        connector: &str,
        table: &str,
        state: &str,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + PATIENCE * 3;
        loop {
            let now = self.tables(connector).remove(table);
            if let Some(row) = now.as_ref().filter(|t| t["state"] == state) {
                return row.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{table} of {connector} never reached {state}: {now:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the connector reports `state`, failing early when it reports `failed`.
    pub async fn wait_for_state(&self, name: &str, state: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE * 3;
        loop {
            let connectors = self.connectors();
            let c = connectors.iter().find(|c| c["name"] == name);
            if let Some(c) = c {
                if c["state"] == state {
                    return;
                }
                assert!(
                    state == "failed" || c["state"] != "failed",
                    "connector {name} failed: {c}\n{}",
                    self.log_tail()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "connector {name} never reached {state}: {c:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Row count and an order-independent checksum of every table and materialized view in
/// `schemas`, by name (a materialized view without data as such).
pub fn content(cluster: &Cluster, db: &str, schemas: &[&str]) -> Vec<String> {
    let list = schemas
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(",");
    let tables = cluster.psql(
        db,
        &format!(
            "SELECT format('%I.%I', n.nspname, c.relname) || CASE WHEN c.relispopulated
                    THEN '' ELSE ' unpopulated' END FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'm') AND n.nspname IN ({list}) ORDER BY 1"
        ),
    );
    tables
        .lines()
        .map(|table| {
            if table.ends_with(" unpopulated") {
                return table.to_owned();
            }
            let sum = cluster.psql(
                db,
                &format!(
                    "SELECT count(*) || ' ' || coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '-') FROM {table} t"
                ),
            );
            format!("{table} {sum}")
        })
        .collect()
}

/// How many times two consecutive leases of one connector overlap in the bookkeeping's
/// lease history on `store` (a lease still held counts as not ended): must be 0.
pub fn overlapping_leases(store: &Cluster) -> u64 {
    store
        .psql(
            "postgres",
            "SELECT count(*) FROM (
                 SELECT ended_at, lead(acquired_at) OVER w AS next_acquired
                   FROM tributary.lease_history
                 WINDOW w AS (PARTITION BY connector_id ORDER BY token)
             ) h
              WHERE next_acquired IS NOT NULL AND (ended_at IS NULL OR ended_at > next_acquired)",
        )
        .parse()
        .unwrap()
}

/// [`wait_converged`] for the common case: the source's database `postgres` and
/// `connector`'s replica.
pub async fn wait_replica(
    source: &Cluster,
    store: &Cluster,
    connector: &str,
    schemas: &[&str],
    daemon: &Daemon,
) {
    let replica = format!("{connector}_replica");
    wait_converged(source, "postgres", store, &replica, schemas, daemon).await;
}

/// Waits until the replica's content equals the source's (the source must be quiet).
pub async fn wait_converged(
    source: &Cluster,
    source_db: &str,
    store: &Cluster,
    replica_db: &str,
    schemas: &[&str],
    daemon: &Daemon,
) {
    let expected = content(source, source_db, schemas);
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    loop {
        let got = content(store, replica_db, schemas);
        if got == expected {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let diff: Vec<String> = expected
                .iter()
                .zip(got.iter().chain(std::iter::repeat(&String::new())))
                .filter(|(e, g)| e != g)
                .map(|(e, g)| format!("source:  {e}\nreplica: {g}"))
                .collect();
            panic!(
                "replica never converged ({} vs {} tables):\n{}\n--- daemon log ---\n{}",
                expected.len(),
                got.len(),
                diff.join("\n"),
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Holds an exclusive lock on `table` in the connector's replica until the returned
/// session commits: the applier blocks on its first change to it.
pub async fn lock_replica_table(
    store: &Cluster,
    connector: &str,
    table: &str,
) -> tokio_postgres::Client {
    let blocker = store.connect(&format!("{connector}_replica")).await;
    blocker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    blocker
}
