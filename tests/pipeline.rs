//! The daemon end to end: snapshot then stream, crashes, server restarts, shutdown. Every
//! check compares source and replica content (row count and checksum per table).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::{content, lock_replica_table, wait_converged, Daemon};
use crate::harness::Cluster;

const SCHEMAS: &[&str] = &["app", "audit"];

fn source_cluster() -> Cluster {
    Cluster::builder()
        .setting("max_wal_size", "2GB")
        .setting("wal_sender_timeout", "10s")
        .start()
}

const SOURCE_SCHEMA: &str = r#"
CREATE SCHEMA app;
CREATE SCHEMA audit;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.positive AS int CHECK (VALUE > 0);
CREATE TABLE app.kitchen_sink (
    id int PRIMARY KEY,
    c_int2 int2, c_int8 int8, c_numeric numeric, c_float4 float4, c_float8 float8, c_bool bool,
    c_text text, c_varchar varchar(30), c_char char(4), c_bytea bytea, c_uuid uuid, c_date date,
    c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz, c_interval interval,
    c_json json, c_jsonb jsonb, c_int_arr int[], c_text_arr text[], c_enum app.mood,
    c_domain app.positive, c_inet inet, c_cidr cidr, c_macaddr macaddr, c_bit bit(4),
    c_varbit varbit, c_point point, c_range int4range, c_tsvector tsvector, c_money money,
    c_generated int GENERATED ALWAYS AS (c_int2 * 2) STORED
);
CREATE TABLE app.docs (id int PRIMARY KEY, title text, body text);
CREATE TABLE app.accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL);
CREATE TABLE app.scratch (id serial PRIMARY KEY, v text);
CREATE TABLE audit.events (at timestamptz, kind text, payload jsonb);
ALTER TABLE audit.events REPLICA IDENTITY FULL;
CREATE SCHEMA other;
CREATE TABLE other.ignored (id int PRIMARY KEY, v text);
"#;

fn kitchen_sink_row(id: i64) -> String {
    format!(
        "({id}, {i2}, {i8}, {id}.{id}e{exp}, {id}.25, -{id}.125e-{exp}, {b}, E'text \\\\ ''q'' {id} é\\n', 'vc{id}', 'c{m}', '\\x{hex:04x}',
          md5('{id}')::uuid, DATE '2020-01-01' + {id}, '12:34:56.{id}', '01:02:03+05:30', TIMESTAMP '2001-02-03 04:05:06' + interval '{id} min',
          TIMESTAMPTZ '2001-02-03 04:05:06+00' + interval '{id} s', '{id} days 01:02:03', '{{\"k\": {id}}}', '{{\"a\": [{id}, null]}}',
          '{{{id},NULL,3}}', '{{\"a b\",{id}}}', '{mood}', {pos}, '10.0.{m}.1', '10.{m}.0.0/16', '08:00:2b:01:02:{m:02x}', B'1010',
          B'10{b01}', '({id},{m})', '[{id},{e})', 'fat cat {id}', {id}.5)",
        i2 = id % 30000,
        i8 = id * 1_000_000_007,
        exp = id % 20,
        b = id % 2 == 0,
        m = id % 250,
        hex = id % 65536,
        mood = ["sad", "ok", "happy"][(id % 3) as usize],
        pos = id + 1,
        b01 = id % 2,
        e = id + 10,
    )
}

/// A reproducible stream of mixed changes: inserts, updates (some moving keys), deletes,
/// truncates, on every table; `transactions` transactions of a few statements each.
fn mixed_workload(seed: u64, transactions: usize, first_id: i64) -> String {
    let mut rng = seed;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rng >> 33
    };
    let mut sql = String::new();
    let mut id = first_id;
    for _ in 0..transactions {
        sql.push_str("BEGIN;\n");
        for _ in 0..(1 + next() % 5) {
            let pick = next() % 100;
            let target = (next() % 2000) as i64;
            match pick {
                0..=29 => {
                    id += 1;
                    sql.push_str(&format!("INSERT INTO app.kitchen_sink VALUES {};\n", kitchen_sink_row(id)));
                }
                30..=44 => sql.push_str(&format!(
                    "UPDATE app.kitchen_sink SET c_text = c_text || '+', c_int2 = (c_int2 + 1) % 30000, c_jsonb = '{{\"n\": {pick}}}' WHERE id = {target};\n"
                )),
                45..=49 => sql.push_str(&format!("DELETE FROM app.kitchen_sink WHERE id = {target};\n")),
                50..=59 => sql.push_str(&format!(
                    "INSERT INTO app.accounts VALUES ({}, 'o{target}', {target}.5) ON CONFLICT (id) DO UPDATE SET balance = app.accounts.balance + 1;\n",
                    target
                )),
                60..=64 => sql.push_str(&format!(
                    "UPDATE app.accounts SET id = id + 100000 WHERE id = {target} \
                     AND NOT EXISTS (SELECT FROM app.accounts WHERE id = {target} + 100000);\n"
                )),
                65..=69 => sql.push_str(&format!("DELETE FROM app.accounts WHERE id = {};\n", target + 100000)),
                70..=79 => sql.push_str(&format!(
                    "INSERT INTO audit.events VALUES ('2024-01-01', 'k{}', '{{\"x\": 1}}');\n",
                    target % 7
                )),
                80..=84 => sql.push_str(&format!(
                    "DELETE FROM audit.events WHERE ctid = (SELECT ctid FROM audit.events WHERE kind = 'k{}' LIMIT 1);\n",
                    target % 7
                )),
                85..=89 => sql.push_str(&format!(
                    "UPDATE audit.events SET payload = '{{\"x\": 2}}' WHERE ctid = (SELECT ctid FROM audit.events WHERE kind = 'k{}' LIMIT 1);\n",
                    target % 7
                )),
                90..=97 => sql.push_str(&format!("INSERT INTO app.scratch (v) VALUES ('s{target}');\n")),
                _ => sql.push_str("TRUNCATE app.scratch;\n"),
            }
        }
        sql.push_str("COMMIT;\n");
    }
    sql
}

fn seed_source(source: &Cluster) {
    source.psql("postgres", SOURCE_SCHEMA);
    let rows: Vec<String> = (1..=2000).map(kitchen_sink_row).collect();
    source.psql(
        "postgres",
        &format!("INSERT INTO app.kitchen_sink VALUES {};", rows.join(",\n")),
    );
    source.psql(
        "postgres",
        "INSERT INTO app.docs SELECT g, 'doc ' || g, repeat(md5(g::text), 32768) FROM generate_series(1, 5) g;
         INSERT INTO app.accounts SELECT g, 'owner' || g, g * 10 FROM generate_series(1, 1000) g;
         INSERT INTO audit.events SELECT '2024-01-01', 'k' || (g % 7), '{\"x\": 1}' FROM generate_series(1, 300) g;
         INSERT INTO audit.events SELECT '2024-01-01', 'k1', '{\"x\": 1}' FROM generate_series(1, 3);
         INSERT INTO other.ignored VALUES (1, 'not replicated');",
    );
}

fn create_connector(daemon: &Daemon, source: &Cluster, name: &str) {
    daemon.create_connector(&source.superuser_url("postgres"), name, "app,audit");
}

/// Waits until connector `name`'s replica equals the (quiet) source.
async fn converged(source: &Cluster, store: &Cluster, name: &str, daemon: &Daemon) {
    wait_converged(
        source,
        "postgres",
        store,
        &format!("{name}_replica"),
        SCHEMAS,
        daemon,
    )
    .await;
}

/// A seeded source, a store, and a daemon streaming connector `name` between them.
async fn streaming(name: &str) -> (Cluster, Cluster, Daemon) {
    let source = source_cluster();
    let store = Cluster::start();
    seed_source(&source);
    let mut daemon = Daemon::new(&store);
    create_connector(&daemon, &source, name);
    daemon.start();
    daemon.wait_for_state(name, "streaming").await;
    (source, store, daemon)
}

#[tokio::test]
async fn snapshot_then_stream_reproduces_the_source() {
    let source = source_cluster();
    let store = Cluster::start();
    seed_source(&source);
    let mut daemon = Daemon::new(&store);
    daemon.set("TRIBUTARY__PIPELINE__BATCH_MAX_CHANGES", "500");
    create_connector(&daemon, &source, "shop");
    daemon.start();
    daemon.wait_for_state("shop", "streaming").await;
    converged(&source, &store, "shop", &daemon).await;
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'other'"
        ),
        "0"
    );

    source.psql("postgres", &mixed_workload(7, 2500, 10_000));
    // Tables outside the connector's schemas change too, in and beside its transactions.
    source.psql(
        "postgres",
        "INSERT INTO other.ignored VALUES (2, 'alone');
         BEGIN; INSERT INTO other.ignored VALUES (3, 'mixed'); UPDATE app.accounts SET balance = balance + 1 WHERE id = 1; COMMIT;
         CREATE TABLE public.unrelated (id int PRIMARY KEY); INSERT INTO public.unrelated VALUES (1);",
    );
    // Update a non-TOAST column of rows whose 1 MB body is unchanged.
    source.psql(
        "postgres",
        "UPDATE app.docs SET title = title || ' (edited)'",
    );
    converged(&source, &store, "shop", &daemon).await;
    assert_eq!(
        store.psql("shop_replica", "SELECT min(length(body)) FROM app.docs"),
        "1048576",
        "unchanged TOAST values are kept"
    );
    // Generated columns are computed by the replica, not copied.
    assert_eq!(
        store.psql(
            "shop_replica",
            "SELECT count(*) FROM app.kitchen_sink WHERE c_generated IS DISTINCT FROM c_int2 * 2"
        ),
        "0"
    );
    assert_eq!(daemon.terminate().code(), Some(0));
}

/// Writes transactions to the source until stopped; each moves money between accounts
/// and appends to an event log, so any lost or doubled change shows in the checksums.
fn spawn_writer(source: &Cluster, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let url = source.superuser_url("postgres");
    let bindir = source.bindir().to_owned();
    std::thread::spawn(move || {
        let mut batches = 0;
        while !stop.load(Ordering::Relaxed) && batches < 2000 {
            let script =
                mixed_workload(1000 + batches as u64, 20, 1_000_000 + batches as i64 * 1000);
            let status = std::process::Command::new(bindir.join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    &url,
                    "-c",
                    &script,
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            // The source may be restarting under this writer: a failed batch is just not written.
            let _ = status;
            batches += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        batches
    })
}

/// `app.bulk` with `rows` rows of about 200 bytes: a snapshot that takes a while and is
/// split into ctid ranges.
fn add_bulk_table(source: &Cluster, rows: u32) {
    source.psql(
        "postgres",
        &format!(
            "CREATE TABLE app.bulk (id bigint PRIMARY KEY, v text);
             INSERT INTO app.bulk SELECT g, repeat('x', 200) FROM generate_series(1, {rows}) g;"
        ),
    );
}

#[tokio::test]
async fn kill_9_at_random_moments_never_loses_or_duplicates() {
    let source = source_cluster();
    let store = Cluster::start();
    seed_source(&source);
    add_bulk_table(&source, 200_000);
    let mut daemon = Daemon::new(&store);
    daemon.set("TRIBUTARY__PIPELINE__BATCH_MAX_CHANGES", "200");
    create_connector(&daemon, &source, "crashy");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&source, stop.clone());

    let mut rng = 42u64;
    let mut random_ms = move |max: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % max
    };
    let (mut during_snapshot, mut during_stream) = (0, 0);
    for round in 0..22 {
        daemon.start();
        if round == 6 {
            // Let one snapshot finish; every later crash hits streaming.
            daemon.wait_for_state("crashy", "streaming").await;
        }
        // The first rounds crash inside the snapshot (which each crash restarts): a
        // moment into it, found by polling the bookkeeping (the copy itself takes well
        // under a second).
        let delay = if round < 6 {
            let state = "SELECT state FROM tributary.connectors WHERE name = 'crashy'";
            while store.psql("postgres", state) != "snapshotting" {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            random_ms(300)
        } else {
            600 + random_ms(2500)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        match daemon.connector_state("crashy").as_deref() {
            Some("snapshotting") => during_snapshot += 1,
            Some("streaming") => during_stream += 1,
            _ => {}
        }
        daemon.kill9();
    }
    stop.store(true, Ordering::Relaxed);
    let batches = writer.join().unwrap();
    assert!(batches > 0);
    assert!(during_snapshot >= 1, "no crash hit the snapshot");
    assert!(
        during_stream >= 10,
        "too few crashes hit streaming: {during_stream}"
    );

    daemon.start();
    daemon.wait_for_state("crashy", "streaming").await;
    converged(&source, &store, "crashy", &daemon).await;
}

#[tokio::test]
async fn source_and_store_restarts_are_survived() {
    let (source, store, mut daemon) = streaming("bouncy").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&source, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    source.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    store.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    assert!(
        daemon.is_running(),
        "the daemon survives both restarts:\n{}",
        daemon.log_tail()
    );
    daemon.wait_for_state("bouncy", "streaming").await;
    converged(&source, &store, "bouncy", &daemon).await;
}

#[tokio::test]
async fn sigterm_mid_stream_exits_0_with_the_slot_at_the_applied_lsn() {
    let (source, store, mut daemon) = streaming("polite").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&source, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(daemon.terminate().code(), Some(0), "{}", daemon.log_tail());
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let applied = store.psql("polite_replica", "SELECT lsn FROM tributary.applied");
    let confirmed = source.psql(
        "postgres",
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name LIKE 'tributary_%polite'",
    );
    assert_eq!(confirmed, applied, "{}", daemon.log_tail());

    // And it picks up where it stopped.
    daemon.start();
    converged(&source, &store, "polite", &daemon).await;
}

#[tokio::test]
async fn idle_connector_beside_a_busy_database_does_not_pin_wal() {
    let source = source_cluster();
    let store = Cluster::start();
    source.create_database("quiet");
    source.create_database("busy");
    source.psql(
        "quiet",
        "CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY);",
    );
    source.psql("busy", "CREATE TABLE noise (id serial PRIMARY KEY, v text)");
    let mut daemon = Daemon::new(&store);
    daemon.create_connector(&source.superuser_url("quiet"), "idle", "app");
    daemon.start();
    daemon.wait_for_state("idle", "streaming").await;

    for _ in 0..10 {
        source.psql(
            "busy",
            "INSERT INTO noise (v) SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
        );
    }
    let lag = || {
        source
            .psql(
                "postgres",
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots",
            )
            .parse::<i64>()
            .unwrap()
    };
    let written: i64 = 50 * 1024 * 1024;
    crate::support::eventually(
        "the idle slot to follow the busy database's WAL",
        || async { (lag() < 1024 * 1024).then_some(()) },
    )
    .await;
    assert!(lag() < written / 10);
    // The replica is still exactly the (unchanged) source.
    assert_eq!(
        content(&source, "quiet", &["app"]),
        content(&store, "idle_replica", &["app"])
    );
}

#[tokio::test]
async fn an_apply_error_holds_its_table_out_and_skips_nothing() {
    let (source, store, daemon) = streaming("strict").await;
    converged(&source, &store, "strict", &daemon).await;

    // Someone writes into the replica; the source then inserts the same key, in one
    // transaction with a change to another table.
    store.psql(
        "strict_replica",
        "INSERT INTO app.accounts VALUES (777777, 'intruder', 0)",
    );
    source.psql(
        "postgres",
        "BEGIN; INSERT INTO app.accounts VALUES (777777, 'real', 1);
         INSERT INTO app.docs VALUES (777777, 'beside it', 'b'); COMMIT;",
    );
    let held = daemon
        .wait_for_table("strict", "app.accounts", "failed")
        .await;
    let error = held["problem"].as_str().unwrap();
    assert!(error.contains("app.accounts"), "names the table: {error}");
    assert!(
        error.contains("23505") || error.contains("duplicate key"),
        "has the SQL error: {error}"
    );
    assert!(error.contains("/"), "names the LSN: {error}");
    assert!(
        held["next_step"]
            .as_str()
            .is_some_and(|s| s.contains("connector resync strict --table app.accounts")),
        "{held}"
    );
    // The other table's change of that transaction arrives once, and later ones too; a
    // later change of the held-out table waits rather than being applied past the
    // failed one.
    source.psql(
        "postgres",
        "INSERT INTO app.accounts VALUES (777778, 'later', 1);
         INSERT INTO app.docs VALUES (777778, 'after it', 'b');",
    );
    let docs = "SELECT count(*) FROM app.docs WHERE id IN (777777, 777778)";
    crate::support::eventually("app.docs to stream on", || async {
        (store.psql("strict_replica", docs) == "2").then_some(())
    })
    .await;
    assert_eq!(
        store.psql(
            "strict_replica",
            "SELECT owner FROM app.accounts WHERE id >= 777777"
        ),
        "intruder"
    );
    assert_eq!(
        daemon.connector_state("strict").as_deref(),
        Some("streaming")
    );

    // The operator removes the intruder and copies the table again: it rejoins with
    // every change the source made.
    store.psql(
        "strict_replica",
        "DELETE FROM app.accounts WHERE id = 777777",
    );
    daemon.cli_ok(&["connector", "resync", "strict", "--table", "app.accounts"]);
    daemon.cli_ok(&["connector", "wait", "strict"]);
    converged(&source, &store, "strict", &daemon).await;
}

#[tokio::test]
async fn deleting_a_connector_drops_its_slot_and_replica() {
    let source = source_cluster();
    let store = Cluster::start();
    seed_source(&source);
    let mut daemon = Daemon::new(&store);
    create_connector(&daemon, &source, "doomed");
    let listed = daemon.connectors();
    assert_eq!(listed.len(), 1);
    for key in ["name", "state", "slot_name", "replica_database"] {
        assert!(listed[0][key].is_string(), "{key} in {}", listed[0]);
    }
    daemon.start();
    daemon.wait_for_state("doomed", "streaming").await;

    // While the daemon runs: it lets go of the slot, the CLI drops it.
    daemon.cli_ok(&["connector", "delete", "doomed"]);
    assert!(daemon.connectors().is_empty());
    assert_eq!(
        source.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'doomed_replica'"
        ),
        "0"
    );
    let out = daemon.cli(&["connector", "delete", "doomed"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connector named doomed"));
}

#[tokio::test]
async fn cli_usage_and_configuration_errors_are_clear() {
    let store = Cluster::start();
    let daemon = Daemon::new(&store);
    let out = daemon.cli(&[
        "connector",
        "create",
        "postgresql",
        "postgresql://u:s3cret@h/db",
        "--name",
        "Bad-Name",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid connector name"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "--config",
            "/nonexistent/tributary.toml",
            "connector",
            "list",
        ])
        .env_remove("TRIBUTARY__STORE__URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The file is the problem, not store.url.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the configuration file /nonexistent/tributary.toml"),
        "{stderr}"
    );
    assert!(!stderr.contains("store.url"), "{stderr}");

    // The global option is accepted after the subcommand too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "connector",
            "list",
            "--config",
            "/nonexistent/tributary.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn sigterm_during_the_snapshot_exits_0_and_the_next_run_starts_over() {
    let source = source_cluster();
    let store = Cluster::start();
    seed_source(&source);
    add_bulk_table(&source, 300_000);
    let mut daemon = Daemon::new(&store);
    create_connector(&daemon, &source, "patient");
    daemon.start();
    daemon.wait_for_state("patient", "snapshotting").await;
    assert_eq!(daemon.terminate().code(), Some(0), "{}", daemon.log_tail());

    daemon.start();
    daemon.wait_for_state("patient", "streaming").await;
    converged(&source, &store, "patient", &daemon).await;
    assert_eq!(
        source.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "1",
        "the interrupted snapshot's slot was replaced, not kept beside the new one"
    );
}

/// The sink pipelines statements; loading a table's metadata or preparing a statement
/// while a large batch's replies are still unread used to stall the connection.
#[tokio::test]
async fn a_large_batch_followed_by_a_new_table_does_not_stall() {
    let (source, store, mut daemon) = streaming("busy").await;
    converged(&source, &store, "busy", &daemon).await;
    assert_eq!(daemon.terminate().code(), Some(0));

    // After the restart every table is new to the sink.
    source.psql(
        "postgres",
        "BEGIN;
         UPDATE app.kitchen_sink SET c_text = c_text || '!';
         UPDATE app.accounts SET balance = balance + 1;
         INSERT INTO audit.events VALUES ('2024-02-02', 'after', '{}');
         UPDATE app.docs SET title = title || '!';
         COMMIT;",
    );
    daemon.start();
    converged(&source, &store, "busy", &daemon).await;
}

/// Rows of one batched UPDATE are applied in no particular order; swapping the values of a
/// unique column through a temporary one must still work.
#[tokio::test]
async fn swapping_unique_values_applies_in_order() {
    let source = source_cluster();
    let store = Cluster::start();
    source.psql(
        "postgres",
        "CREATE SCHEMA app; CREATE SCHEMA audit;
         CREATE TABLE app.codes (id int PRIMARY KEY, code text NOT NULL UNIQUE, n int);
         INSERT INTO app.codes SELECT g, 'c' || g, 0 FROM generate_series(3, 50) g;
         INSERT INTO app.codes VALUES (2, 'b', 0), (1, 'a', 0);",
    );
    let mut daemon = Daemon::new(&store);
    create_connector(&daemon, &source, "swap");
    daemon.start();
    daemon.wait_for_state("swap", "streaming").await;
    source.psql(
        "postgres",
        "BEGIN;
         UPDATE app.codes SET n = n + 1;
         UPDATE app.codes SET code = 'tmp' WHERE id = 1;
         UPDATE app.codes SET code = 'a' WHERE id = 2;
         UPDATE app.codes SET code = 'b' WHERE id = 1;
         COMMIT;",
    );
    converged(&source, &store, "swap", &daemon).await;
}

#[tokio::test]
async fn a_vanished_replica_fails_instead_of_silently_starting_over() {
    let (source, store, mut daemon) = streaming("lost").await;
    daemon.kill9();
    store.psql("postgres", "DROP DATABASE lost_replica WITH (FORCE)");
    daemon.start();
    daemon.wait_for_state("lost", "failed").await;
    let c = daemon.connector("lost");
    assert!(
        c["last_error"].as_str().unwrap().contains("lost_replica"),
        "{c}"
    );
    assert_eq!(
        source.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "1",
        "the slot is kept"
    );
}

/// While the branch store blocks the applier (here: a lock held longer than the source's
/// wal_sender_timeout), the source must keep hearing from tributary.
#[tokio::test]
async fn a_blocked_branch_store_does_not_cost_the_replication_connection() {
    let source = Cluster::builder()
        .setting("wal_sender_timeout", "2s")
        .start();
    let store = Cluster::start();
    seed_source(&source);
    let mut daemon = Daemon::new(&store);
    create_connector(&daemon, &source, "patient");
    daemon.start();
    daemon.wait_for_state("patient", "streaming").await;

    let blocker = lock_replica_table(&store, "patient", "app.scratch").await;
    // Enough small transactions to fill the channel between reader and applier.
    source.psql(
        "postgres",
        &(0..3000)
            .map(|i| format!("INSERT INTO app.scratch (v) VALUES ('{i}');\n"))
            .collect::<String>(),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    blocker.batch_execute("COMMIT").await.unwrap();

    converged(&source, &store, "patient", &daemon).await;
    assert!(
        !source
            .log_contents()
            .contains("terminating walsender process due to replication timeout"),
        "the source timed tributary out:\n{}",
        daemon.log_tail()
    );
}

/// Wide rows in one large source transaction, while the branch store blocks the applier:
/// the reader must stop at its byte budget instead of decoding the whole transaction into
/// memory (a count of changes alone would allow 1 MB × the channel's capacity).
#[tokio::test]
async fn wide_rows_behind_a_blocked_branch_store_stay_within_the_memory_budget() {
    const ROWS: usize = 400;
    const RSS_LIMIT_KIB: u64 = 150 * 1024;
    let source = source_cluster();
    let store = Cluster::start();
    seed_source(&source);
    source.psql(
        "postgres",
        "CREATE TABLE app.wide (id int PRIMARY KEY, body text)",
    );
    let mut daemon = Daemon::new(&store);
    create_connector(&daemon, &source, "wide");
    daemon.start();
    daemon.wait_for_state("wide", "streaming").await;

    let blocker = lock_replica_table(&store, "wide", "app.wide").await;
    // 400 rows of 1 MiB each (compressed on the source, 1 MiB each once decoded).
    source.psql(
        "postgres",
        &format!(
            "INSERT INTO app.wide SELECT g, repeat(md5(g::text), 32768) FROM generate_series(1, {ROWS}) g"
        ),
    );
    // Long enough for wal2json to hand over far more than the budget.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let blocked_peak = daemon.peak_rss_kib();
    blocker.batch_execute("COMMIT").await.unwrap();

    converged(&source, &store, "wide", &daemon).await;
    let peak = daemon.peak_rss_kib();
    eprintln!("wide rows: peak RSS {blocked_peak} KiB while blocked, {peak} KiB overall");
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB (while blocked: {blocked_peak} KiB) is over {RSS_LIMIT_KIB} KiB"
    );
}
