//! `tributary verify` against real servers: equal after a mixed workload on a schema with
//! the awkward cases; a changed, a deleted and a duplicated row planted in the replica
//! found and located; equal under a running write load (the comparison is at one source
//! position, not "eventually"); nothing left behind on either server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::daemon::{wait_converged, Daemon};
use crate::harness::Cluster;

/// Rows of the big table: enough for several key ranges (a range is about 50,000 rows).
const BIG: i64 = 240_000;

/// A source `shop` with what real schemas hold: a big table, a composite text key with a
/// name that needs quoting, a keyless table (REPLICA IDENTITY FULL), a partitioned table,
/// generated and identity columns, NaN and infinities, empty tsqueries, jsonb, bytea,
/// arrays, timestamps with time zones, and a large value.
fn shop(cluster: &Cluster) {
    cluster.create_database("shop");
    cluster.psql(
        "shop",
        &format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, qty int NOT NULL, note text);
             INSERT INTO big SELECT g, g % 97, 'row ' || g FROM generate_series(1, {BIG}) g;
             ANALYZE big;
             CREATE TABLE \"Order Lines\" (
                 \"Region\" text, \"line no\" int,
                 price numeric, ratio float8, at timestamptz, doc jsonb, raw bytea,
                 tags text[], q tsquery,
                 total numeric GENERATED ALWAYS AS (price * 2) STORED,
                 seq int GENERATED ALWAYS AS IDENTITY,
                 PRIMARY KEY (\"Region\", \"line no\"));
             INSERT INTO \"Order Lines\" (\"Region\", \"line no\", price, ratio, at, doc, raw, tags, q)
                 SELECT r, n, n * 1.5, n / 7.0, '2026-01-01 12:00+05'::timestamptz + n * interval '1 hour',
                        jsonb_build_object('n', n, 's', repeat('x', n)), decode(md5(n::text), 'hex'),
                        ARRAY['a', 'b''c', NULL], ''::tsquery
                 FROM unnest(ARRAY['north', 'South', 'ÉST', 'west 2']) r, generate_series(1, 200) n;
             INSERT INTO \"Order Lines\" (\"Region\", \"line no\", price, ratio, doc)
                 VALUES ('odd', 1, 'NaN', 'Infinity', '{{}}'), ('odd', 2, '-1e-30', '-Infinity', NULL),
                        ('odd', 3, 1, 'NaN', jsonb_build_object('big', repeat('y', 300000)));
             CREATE TABLE notes (body text, n int);
             ALTER TABLE notes REPLICA IDENTITY FULL;
             INSERT INTO notes SELECT 'note ' || (g % 50), g % 50 FROM generate_series(1, 300) g;
             CREATE TABLE covered (id int, doc json, CONSTRAINT covered_pk PRIMARY KEY (id) INCLUDE (doc));
             INSERT INTO covered SELECT g, json_build_object('g', g) FROM generate_series(1, 20) g;
             CREATE TABLE events (id int, day date, what text, PRIMARY KEY (id, day))
                 PARTITION BY RANGE (day);
             CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             INSERT INTO events SELECT g, DATE '2025-06-01' + g, 'e' || g FROM generate_series(1, 400) g;"
        ),
    );
}

/// Inserts, updates and deletes across the tables, as an application would.
fn mixed_workload(cluster: &Cluster, round: i64) {
    let base = BIG + round * 1000;
    cluster.psql(
        "shop",
        &format!(
            "INSERT INTO big SELECT g, 1, 'new' FROM generate_series({base} + 1, {base} + 500) g;
             UPDATE big SET qty = qty + 1, note = note || '!' WHERE id % 1000 = {round};
             DELETE FROM big WHERE id % 5000 = {round} + 7;
             UPDATE \"Order Lines\" SET price = price + 1, doc = doc || '{{\"u\": true}}'
                 WHERE \"line no\" % 10 = {round};
             DELETE FROM \"Order Lines\" WHERE \"Region\" = 'west 2' AND \"line no\" = 100 + {round};
             INSERT INTO notes VALUES ('round {round}', {round}), ('round {round}', {round});
             DELETE FROM notes WHERE n = {round} + 20;
             UPDATE events SET day = DATE '2026-02-01' + id WHERE id = 10 + {round};"
        ),
    );
}

/// The daemon, streaming `shop`. Before wal2json 2.6 NaN and the infinities would arrive
/// as NULL (the connector refuses them unless told): those values are taken out then.
fn start(store: &Cluster, source: &Cluster) -> Daemon {
    start_as(store, source, &source.superuser_url("shop"))
}

/// [`start`] with the source URL `url`.
fn start_as(store: &Cluster, source: &Cluster, url: &str) -> Daemon {
    let mut daemon = Daemon::new(store);
    let mut create = vec!["connector", "create", "postgresql", url, "--name", "shop"];
    if !daemon.wal2json_sends_nan(url, "public") {
        source.psql(
            "shop",
            "UPDATE \"Order Lines\" SET price = 0, ratio = 0 WHERE \"Region\" = 'odd'",
        );
        create.extend(["--nan-as-null", "accept"]);
    }
    daemon.cli_ok(&create);
    daemon.start();
    daemon
}

/// Source and store started, `shop` made and streamed by a daemon.
async fn streaming_shop() -> (Cluster, Cluster, Daemon) {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    let daemon = start(&store, &source);
    daemon.wait_for_state("shop", "streaming").await;
    (source, store, daemon)
}

async fn converged(source: &Cluster, store: &Cluster, daemon: &Daemon) {
    wait_converged(source, "shop", store, "shop_replica", &["public"], daemon).await;
}

fn verify_json(daemon: &Daemon, args: &[&str], code: i32) -> serde_json::Value {
    let mut all = vec!["verify", "shop", "--format", "json"];
    all.extend_from_slice(args);
    let out = daemon.cli(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(code),
        "verify {args:?}:\n{stdout}{}\n--- daemon ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log_tail()
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn table<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

/// Verify leaves no branch in the store and no slot on the source beyond the connector's.
#[track_caller]
fn nothing_left(daemon: &Daemon, source: &Cluster, store: &Cluster) {
    assert_eq!(
        daemon
            .cli_ok(&["branch", "list", "--format", "json"])
            .trim(),
        "[]"
    );
    assert_eq!(
        store.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'tributary_verify_%'"
        ),
        "0"
    );
    assert_eq!(
        source.psql("postgres", "SELECT count(*) FROM pg_replication_slots"),
        "1"
    );
}

#[tokio::test]
async fn verify_finds_the_replica_equal_after_a_mixed_workload() {
    let (source, store, daemon) = streaming_shop().await;
    for round in 0..3 {
        mixed_workload(&source, round);
    }
    // A table created since the snapshot is compared too.
    source.psql(
        "shop",
        "CREATE TABLE later (id int PRIMARY KEY, v text);
         INSERT INTO later SELECT g, md5(g::text) FROM generate_series(1, 100) g;",
    );
    converged(&source, &store, &daemon).await;

    let report = verify_json(&daemon, &[], 0);
    assert_eq!(report["equal"], true, "{report}");
    assert_eq!(table(&report, "public.later")["replica_rows"], 100);
    let big = table(&report, "public.big");
    let big_rows: u64 = source
        .psql("shop", "SELECT count(*) FROM big")
        .parse()
        .unwrap();
    assert_eq!(big["source_rows"], big_rows);
    assert_eq!(big["replica_rows"], big_rows);
    assert!(big["key_ranges"].as_u64().unwrap() >= 3, "{big}");
    for name in [
        "public.Order Lines",
        "public.notes",
        "public.events_2025",
        "public.events_2026",
    ] {
        let t = table(&report, name);
        assert_eq!(t["equal"], true, "{t}");
        assert!(t["source_rows"].as_u64().unwrap() > 0, "{t}");
    }
    nothing_left(&daemon, &source, &store);

    // Text, and one table asked for; the pipeline streams on after it.
    let out = daemon.cli_ok(&["verify", "shop", "--table", "notes"]);
    assert!(out.contains("public.notes"), "{out}");
    assert!(!out.contains("public.big"), "{out}");
    assert!(
        out.contains("✓ the replica equals the source: 1 tables"),
        "{out}"
    );
    mixed_workload(&source, 3);
    converged(&source, &store, &daemon).await;
    nothing_left(&daemon, &source, &store);

    // Bad input is the command line's fault; no daemon is none's.
    let out = daemon.cli(&["verify", "shop", "--table", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuch"),
        "{out:?}"
    );
    let mut daemon = daemon;
    daemon.terminate();
    let out = daemon.cli(&["verify", "shop"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not streamed by a running daemon"),
        "{out:?}"
    );
}

/// A transaction left open on the source keeps the snapshot from being taken: verify
/// gives up after its timeout naming the cause, and the pipeline streams on at once.
#[tokio::test]
async fn verify_gives_up_on_a_source_snapshot_held_back_by_an_open_transaction() {
    let (source, store, daemon) = streaming_shop().await;
    let open = source.connect("shop").await;
    open.batch_execute("BEGIN; INSERT INTO notes VALUES ('uncommitted', 0)")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let out = daemon.cli(&["verify", "shop", "--timeout", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gave no snapshot within 2s"), "{stderr}");
    assert!(stderr.contains("pg_stat_activity"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Streaming goes on while that transaction is still open.
    source.psql("shop", "INSERT INTO notes VALUES ('after', 1)");
    converged(&source, &store, &daemon).await;
    open.batch_execute("COMMIT").await.unwrap();
    converged(&source, &store, &daemon).await;
    nothing_left(&daemon, &source, &store);
    verify_json(&daemon, &[], 0);
}

#[tokio::test]
async fn verify_locates_a_changed_a_deleted_and_a_duplicated_row() {
    let (source, store, daemon) = streaming_shop().await;
    converged(&source, &store, &daemon).await;

    // Planted in the replica behind the pipeline's back.
    store.psql(
        "shop_replica",
        "UPDATE big SET note = 'tampered' WHERE id = 123456;
         DELETE FROM big WHERE id = 200001;
         INSERT INTO notes SELECT * FROM notes WHERE body = 'note 7' LIMIT 1;
         UPDATE covered SET doc = '{\"g\": 0}' WHERE id = 3;
         DROP TABLE events_2025;",
    );
    let report = verify_json(&daemon, &[], 1);
    assert_eq!(report["equal"], false);
    let big = table(&report, "public.big");
    assert_eq!(big["equal"], false);
    assert_eq!(
        big["replica_rows"].as_u64().unwrap() + 1,
        big["source_rows"].as_u64().unwrap()
    );
    let rows: Vec<(String, String)> = big["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("{123456}".to_owned(), "changed".to_owned()),
            ("{200001}".to_owned(), "missing".to_owned())
        ],
        "{big}"
    );
    // Each in a bounded key range that holds it.
    let ranges = big["differing_ranges"].as_array().unwrap();
    assert!(!ranges.is_empty() && ranges.len() <= 2, "{big}");
    for key in [123_456i64, 200_001] {
        assert!(
            ranges.iter().any(|r| {
                let bound =
                    |b: &serde_json::Value| b[0].as_str().map(|s| s.parse::<i64>().unwrap());
                bound(&r["from"]).is_none_or(|f| f <= key)
                    && bound(&r["to"]).is_none_or(|t| key < t)
            }),
            "{key} in {ranges:?}"
        );
    }
    let notes = table(&report, "public.notes");
    assert_eq!(notes["equal"], false);
    assert_eq!(notes["rows"].as_array().unwrap().len(), 1, "{notes}");
    assert_eq!(notes["rows"][0]["kind"], "duplicated", "{notes}");
    assert_eq!(notes["rows"][0]["key"], "(\"note 7\",7)", "{notes}");
    assert_eq!(table(&report, "public.Order Lines")["equal"], true);
    // A key's INCLUDE columns are not part of it.
    let covered = table(&report, "public.covered");
    assert_eq!(covered["rows"][0]["key"], "{3}", "{covered}");
    assert_eq!(covered["rows"][0]["kind"], "changed", "{covered}");
    assert_eq!(covered["rows"].as_array().unwrap().len(), 1, "{covered}");
    let gone = table(&report, "public.events_2025");
    assert_eq!(
        (&gone["equal"], &gone["only_in"]),
        (&false.into(), &"source".into())
    );

    // The text names them and the fix.
    let out = daemon.cli_fails(&["verify", "shop"]);
    assert!(out.contains("key '{123456}': different values"), "{out}");
    assert!(
        out.contains("key '{200001}': missing from the replica"),
        "{out}"
    );
    assert!(
        out.contains("row '(\"note 7\",7)': more often in the replica than in the source"),
        "{out}"
    );
    assert!(out.contains("public.events_2025"), "{out}");
    assert!(out.contains("missing from the replica\n"), "{out}");
    assert!(
        out.contains(
            "tributary connector resync shop --table public.big --table public.covered \
             --table public.events_2025 --table public.notes"
        ),
        "{out}"
    );
    nothing_left(&daemon, &source, &store);
}

/// Moves stock around in one transaction per step until `stop`: the total never changes.
async fn shuffle_until(client: tokio_postgres::Client, stop: Arc<AtomicBool>) -> u64 {
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (a, b) = (
            (done * 7919) % BIG as u64 + 1,
            (done * 104_729) % BIG as u64 + 1,
        );
        client
            .batch_execute(&format!(
                "BEGIN; UPDATE big SET qty = qty - 1 WHERE id = {a};
                 UPDATE big SET qty = qty + 1 WHERE id = {b};
                 INSERT INTO notes VALUES ('shuffle', {done}); COMMIT;"
            ))
            .await
            .unwrap();
        done += 1;
    }
    done
}

// Multi-threaded: the workload goes on while the test waits for verify. The source URL's
// role is a replication role with SELECT, not a superuser, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_under_a_running_write_load() {
    let source = Cluster::start();
    let store = Cluster::start();
    shop(&source);
    source.psql(
        "shop",
        "CREATE ROLE repl LOGIN REPLICATION;
         GRANT CONNECT, CREATE ON DATABASE shop TO repl;
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO repl;
         GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO repl;",
    );
    let url = format!("postgresql://repl@127.0.0.1:{}/shop", source.port());
    let daemon = start_as(&store, &source, &url);
    daemon.wait_for_state("shop", "streaming").await;
    let stop = Arc::new(AtomicBool::new(false));
    let workload = tokio::spawn(shuffle_until(source.connect("shop").await, stop.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut positions = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..2 {
        let report = verify_json(&daemon, &[], 0);
        assert_eq!(report["equal"], true, "{report}");
        positions.push(report["position"].as_str().unwrap().to_owned());
        counts.push(
            table(&report, "public.notes")["source_rows"]
                .as_u64()
                .unwrap(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let shuffled = workload.await.unwrap();
    assert!(shuffled > 0);
    // Two positions of a moving source: the second saw more of the workload.
    assert_ne!(positions[0], positions[1]);
    assert!(counts[0] < counts[1], "{counts:?}");
    converged(&source, &store, &daemon).await;
    nothing_left(&daemon, &source, &store);
}

/// A verify killed while the pipeline stands still for it: the pipeline streams on by
/// itself within a few seconds, and the next verify drops what the killed one left.
#[tokio::test]
async fn a_verify_killed_while_the_pipeline_holds_costs_a_bounded_pause() {
    let (source, store, daemon) = streaming_shop().await;
    // An open transaction keeps the killed verify in its slot's creation.
    let open = source.connect("shop").await;
    open.batch_execute("BEGIN; INSERT INTO notes VALUES ('uncommitted', 0)")
        .await
        .unwrap();
    let mut verify = daemon.cli_spawn(&["verify", "shop", "--timeout", "60"]);
    let held = "SELECT count(*) FROM tributary.branches WHERE held_at IS NOT NULL";
    crate::support::eventually("the pipeline to hold", || async {
        (store.psql("postgres", held) == "1").then_some(())
    })
    .await;
    verify.kill().unwrap();
    verify.wait().unwrap();
    let killed = std::time::Instant::now();
    source.psql("shop", "INSERT INTO notes VALUES ('after', 1)");
    let replica = store.connect("shop_replica").await;
    crate::support::eventually("the pipeline to stream on", || async {
        let row = replica
            .query_one("SELECT count(*) FROM notes WHERE body = 'after'", &[])
            .await
            .unwrap();
        (row.get::<_, i64>(0) == 1).then_some(())
    })
    .await;
    // The pipeline lets go once the killed verify's lock is free (checked every second).
    assert!(
        killed.elapsed() < std::time::Duration::from_secs(10),
        "streamed on after {:?}",
        killed.elapsed()
    );
    // A branch is cut with no session on the replica.
    drop(replica);
    open.batch_execute("COMMIT").await.unwrap();
    converged(&source, &store, &daemon).await;

    let out = daemon.cli(&["verify", "shop"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("note: dropped tributary_verify_")
            && stderr.contains("left by a verify that did not finish"),
        "{stderr}"
    );
    // The killed verify's walsender ends once its slot is made and it finds no client.
    crate::support::eventually("the killed verify's slot to go", || async {
        (source.psql("postgres", "SELECT count(*) FROM pg_replication_slots") == "1").then_some(())
    })
    .await;
    nothing_left(&daemon, &source, &store);
}

/// A pipeline that cannot reach a commit boundary (the replica's table locked while a
/// transaction is applied) is not waited for beyond --timeout; the request it had not
/// taken yet is passed over, and nothing is left.
#[tokio::test]
async fn verify_gives_up_on_a_pipeline_that_does_not_stand_still() {
    let (source, store, daemon) = streaming_shop().await;
    let blocker = crate::daemon::lock_replica_table(&store, "shop", "notes").await;
    source.psql("shop", "INSERT INTO notes VALUES ('blocked', 0)");
    let started = std::time::Instant::now();
    let out = daemon.cli(&["verify", "shop", "--timeout", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not stand still"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    blocker.batch_execute("COMMIT").await.unwrap();
    drop(blocker);
    converged(&source, &store, &daemon).await;
    // A branch is cut with no session on the replica but the pipeline's: the blocker's
    // backend ends a moment after its client is dropped.
    let others = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop_replica'";
    crate::support::eventually("the blocker's session to end", || async {
        (store.psql("postgres", others).parse::<i64>().unwrap() <= 1).then_some(())
    })
    .await;
    crate::support::eventually("the request to be gone", || async {
        (daemon
            .cli_ok(&["branch", "list", "--format", "json"])
            .trim()
            == "[]")
            .then_some(())
    })
    .await;
    nothing_left(&daemon, &source, &store);
    verify_json(&daemon, &[], 0);
}
