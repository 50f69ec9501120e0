//! The snapshot against real servers: schema and rows of exactly the exported instant land
//! in a replica database on another cluster; failures say what went wrong without secrets.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::BytesMut;
use tokio_postgres::Client;
use tributary::change::TableName;
use tributary::pipeline::snapshot::{
    copy_data, Progress, SchemaDump, Section, SnapshotError, SnapshotJob, Tools,
};
use tributary::source::catalog::{list_tables, ReplicaIdentity, SourceTable};
use tributary::source::copy::SnapshotSession;
use tributary::source::{ConnInfo, SnapshotAction};

use tributary::sink::prepare_replica;
use tributary::types::{FencingToken, Lsn};

use crate::harness::{Cluster, SCRAM_PASSWORD, SCRAM_USER};

/// The lease token the copies here hold the replica with.
const TOKEN: FencingToken = FencingToken(1);
use crate::support::*;

fn table(schema: &str, name: &str) -> TableName {
    TableName {
        schema: schema.into(),
        name: name.into(),
    }
}

/// The source's own pg_dump and pg_restore, as the daemon's TRIBUTARY_PG_BINDIR names them in
/// the tests (the suite's PostgreSQL, whatever the machine's newest is).
async fn source_tools(source: &Cluster, store: &Cluster) -> Tools {
    Tools::choose(Some(source.bindir()), source.major(), store.major())
        .await
        .unwrap_or_else(|e| panic!("choosing pg_dump and pg_restore: {e}"))
}

fn qualified(t: &TableName) -> String {
    format!("\"{}\".\"{}\"", t.schema, t.name)
}

/// Row count and an order-independent checksum of a table's rows as text.
async fn checksum(client: &Client, table: &str) -> (i64, String) {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '')
                   FROM {table} t"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("checksum of {table}: {e}"));
    (row.get(0), row.get(1))
}

/// Opens a transaction on an exported snapshot: what the source looked like at that instant.
async fn on_snapshot(client: &Client, snapshot: &str) {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .expect("importing the exported snapshot");
}

const SOURCE_SCHEMA: &str = r#"
CREATE SCHEMA ext;
CREATE EXTENSION hstore WITH SCHEMA ext;
CREATE EXTENSION citext;
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('happy', 'sad', 'meh');
CREATE TYPE app.pair AS (a int, b text);

CREATE TABLE public.customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email citext NOT NULL UNIQUE,
    name text NOT NULL,
    name_upper text GENERATED ALWAYS AS (upper(name)) STORED,
    tags ext.hstore,
    balance numeric(12,2),
    score float8,
    photo bytea,
    created timestamptz NOT NULL,
    mood app.mood
);
-- An array of an enum and a composite: their binary forms carry type OIDs, so this table
-- travels as text.
CREATE TABLE app.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES public.customers (id),
    amount numeric NOT NULL,
    placed date NOT NULL,
    moods app.mood[],
    pair app.pair,
    payload jsonb,
    notes text[]
);
CREATE INDEX orders_customer ON app.orders (customer_id);
CREATE TABLE app.blobs (id int PRIMARY KEY, body text NOT NULL);
CREATE TABLE app.events (id int NOT NULL, at timestamptz NOT NULL, what text, PRIMARY KEY (id))
    PARTITION BY RANGE (id);
CREATE TABLE app.events_low PARTITION OF app.events FOR VALUES FROM (MINVALUE) TO (1000);
CREATE TABLE app.events_high PARTITION OF app.events FOR VALUES FROM (1000) TO (MAXVALUE);
CREATE TABLE app.audit (id int PRIMARY KEY, what text);
CREATE TABLE app.keyless (a int, b text);
ALTER TABLE app.keyless REPLICA IDENTITY FULL;
CREATE UNLOGGED TABLE app.scratch (id int);
CREATE VIEW app.order_totals AS SELECT customer_id, sum(amount) AS total FROM app.orders GROUP BY 1;

INSERT INTO public.customers (email, name, tags, balance, score, photo, created, mood)
SELECT 'User' || g || '@Example.com',
       CASE WHEN g % 7 = 0 THEN E'tab\there, newline\nthere, back\\slash, ünïcødé ' || g
            ELSE 'name ' || g END,
       CASE WHEN g % 3 = 0 THEN NULL ELSE ext.hstore('k' || g, 'v' || g) END,
       g * 1.25, CASE WHEN g % 11 = 0 THEN 'NaN'::float8 ELSE g / 3.0 END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour',
       (ARRAY['happy', 'sad', 'meh'])[g % 3 + 1]::app.mood
  FROM generate_series(1, 200) g;
INSERT INTO app.orders (customer_id, amount, placed, moods, pair, payload, notes)
SELECT g % 200 + 1, g * 0.01, date '2024-01-01' + g % 365,
       CASE WHEN g % 4 = 0 THEN NULL ELSE ARRAY['happy', 'meh']::app.mood[] END,
       ROW(g, 'p' || g)::app.pair,
       jsonb_build_object('n', g, 'big', 12345678901234567890.123456789),
       ARRAY['a"b', E'c\\d', NULL, 'x,y']
  FROM generate_series(1, 2000) g;
INSERT INTO app.blobs SELECT g, g || repeat(' lorem ipsum', 20) FROM generate_series(1, 20000) g;
INSERT INTO app.events SELECT g, '2024-06-01'::timestamptz + g * interval '1 min', 'e' || g
  FROM generate_series(1, 2000) g;
INSERT INTO app.audit SELECT g, 'secret ' || g FROM generate_series(1, 100) g;
INSERT INTO app.keyless SELECT g % 10, 'k' || g FROM generate_series(1, 50) g;
INSERT INTO app.scratch SELECT generate_series(1, 10);
"#;

/// Written after the slot: the snapshot must not see any of it.
const AFTER_SLOT: &str = "
INSERT INTO public.customers (email, name, created) VALUES ('late@example.com', 'Late', now());
UPDATE app.blobs SET body = 'changed' WHERE id <= 100;
DELETE FROM app.orders WHERE id % 10 = 0;
INSERT INTO app.events VALUES (5000, now(), 'late'), (0, now(), 'late low');
INSERT INTO app.keyless VALUES (99, 'late');
DELETE FROM app.audit;
";

#[tokio::test]
async fn snapshot_restores_schema_and_rows_of_exactly_the_exported_instant() {
    let source = Cluster::builder().password_auth().start();
    let store = Cluster::start();
    source.create_database("shop");
    source.psql("shop", SOURCE_SCHEMA);
    // The connector's role reads everything but owns nothing, and logs in with a password:
    // pg_dump gets it from the environment.
    source.psql("shop", &read_all_data(&source, SCRAM_USER));
    let source_url = source.url(SCRAM_USER, Some(SCRAM_PASSWORD), "shop");
    let source_info = ConnInfo::parse(&source_url).unwrap();

    let mut repl = replication_client(&source_url).await;
    let created = repl
        .create_slot(&slot("snapshot_test"), false, SnapshotAction::Export)
        .await
        .unwrap();
    let snapshot = created.snapshot_name.clone().expect("snapshot exported");
    let sql = source.connect("shop").await;
    sql.batch_execute(AFTER_SLOT).await.unwrap();

    // What the snapshot sees, and the tables it lists.
    let exclude = vec![table("app", "audit")];
    let schemas = vec!["public".to_owned(), "app".to_owned()];
    let reader = source.connect("shop").await;
    on_snapshot(&reader, &snapshot).await;
    let tables: Vec<SourceTable> = list_tables(&reader, &schemas, &exclude).await.unwrap();
    let names: Vec<String> = tables
        .iter()
        .map(|t| format!("{}.{}", t.name.schema, t.name.name))
        .collect();
    assert_eq!(
        names,
        [
            "app.blobs",
            "app.events_high",
            "app.events_low",
            "app.keyless",
            "app.orders",
            "public.customers"
        ],
        "leaf partitions, no parent, no view, no unlogged or excluded table"
    );
    let by_name = |name: &str| {
        tables
            .iter()
            .find(|t| t.name.name == name)
            .unwrap_or_else(|| panic!("{name} listed"))
    };
    let customers = by_name("customers");
    assert_eq!(customers.identity, ReplicaIdentity::PrimaryKey);
    assert!(
        customers.binary_copy,
        "hstore, citext and enums travel in binary"
    );
    assert!(
        !customers.columns.contains(&"name_upper".to_owned()),
        "generated columns are not copied: {:?}",
        customers.columns
    );
    assert_eq!(by_name("keyless").identity, ReplicaIdentity::Full);
    assert!(
        !by_name("orders").binary_copy,
        "enum[] and composites carry OIDs"
    );
    let blobs = by_name("blobs");
    assert!(blobs.pages > 20, "blobs spans many pages: {}", blobs.pages);

    let mut checked: Vec<String> = tables.iter().map(|t| qualified(&t.name)).collect();
    checked.push("app.events".into());
    let mut expected = BTreeMap::new();
    for t in &checked {
        expected.insert(t.clone(), checksum(&reader, t).await);
    }
    reader.batch_execute("COMMIT").await.unwrap();
    assert_eq!(expected["\"app\".\"blobs\""].0, 20_000);
    assert_eq!(
        expected["\"public\".\"customers\""].0, 200,
        "not the late row"
    );

    let store_info = ConnInfo::parse(&store.superuser_url("postgres")).unwrap();
    prepare_replica(&store_info, "replica", TOKEN)
        .await
        .unwrap();
    let replica_info = ConnInfo::parse(&store.superuser_url("replica")).unwrap();
    let chunk_bytes = 64 * 1024;
    let tools = source_tools(&source, &store).await;
    let job = SnapshotJob {
        source: &source_info,
        replica: &replica_info,
        snapshot_name: &snapshot,
        schemas: &schemas,
        only: None,
        replicated: &[],
        tables: &tables,
        copied_at: Lsn::new(0x100),
        token: TOKEN,
        deadline: None,
        exclude: &exclude,
        workers: 3,
        chunk_bytes,
        tools: &tools,
    };
    let schema = SchemaDump::create(&job)
        .await
        .unwrap_or_else(|e| panic!("schema dump: {e}"));
    schema
        .restore(&job, Section::PreData)
        .await
        .unwrap_or_else(|e| panic!("pre-data: {e}"));
    let events = Mutex::new(Vec::new());
    let progress = |p: Progress<'_>| {
        events
            .lock()
            .unwrap()
            .push((p.table.clone(), p.rows, p.bytes, p.copies.is_some()));
    };
    let stats = copy_data(&job, &progress)
        .await
        .unwrap_or_else(|e| panic!("copy: {e}"));
    schema
        .restore(&job, Section::PostData)
        .await
        .unwrap_or_else(|e| panic!("post-data: {e}"));

    // The replica holds exactly the snapshot's rows.
    let replica = store.connect("replica").await;
    for t in &checked {
        assert_eq!(
            checksum(&replica, t).await,
            expected[t],
            "{t}: replica differs from the snapshot"
        );
    }
    let exists = |name: &'static str| {
        let replica = &replica;
        async move {
            replica
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    };
    // Tables copied whole are loaded with FREEZE: every page is
    // all-frozen from the start, so no reader or vacuum rewrites them later.
    replica
        .batch_execute("CREATE EXTENSION pg_visibility")
        .await
        .unwrap();
    for t in ["public.customers", "app.keyless"] {
        let row = replica
            .query_one(
                "SELECT pg_relation_size($1::text::regclass) / current_setting('block_size')::bigint,
                        (SELECT all_frozen FROM pg_visibility_map_summary($1::text::regclass))",
                &[&t],
            )
            .await
            .unwrap();
        let (pages, frozen): (i64, i64) = (row.get(0), row.get(1));
        assert!(pages > 0, "{t} has pages");
        // COPY FREEZE sets the visibility map's bits from PostgreSQL 14 on; 13 freezes the
        // rows and leaves the map to the first vacuum.
        let expected = if store.major() >= 14 { pages } else { 0 };
        assert_eq!(frozen, expected, "{t}: every page all-frozen");
    }
    replica
        .batch_execute("DROP EXTENSION pg_visibility")
        .await
        .unwrap();
    assert!(!exists("app.audit").await, "the excluded table is absent");
    assert!(exists("app.order_totals").await, "views come with pre-data");

    // Post-data: indexes and constraints; pre-data: the generated column and extensions.
    let indexes: Vec<String> = replica
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname IN ('public', 'app') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for index in [
        "blobs_pkey",
        "customers_email_key",
        "customers_pkey",
        "events_high_pkey",
        "events_low_pkey",
        "orders_customer",
        "orders_pkey",
    ] {
        assert!(
            indexes.contains(&index.to_owned()),
            "{index} in {indexes:?}"
        );
    }
    let foreign_keys: i64 = replica
        .query_one(
            "SELECT count(*) FROM pg_constraint
              WHERE contype = 'f' AND conrelid = 'app.orders'::regclass AND convalidated",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign_keys, 1);
    let generated: String = replica
        .query_one(
            "SELECT attgenerated::text FROM pg_attribute
              WHERE attrelid = 'public.customers'::regclass AND attname = 'name_upper'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(generated, "s", "the replica computes the generated column");
    let extensions: Vec<String> = replica
        .query(
            "SELECT extname || '@' || extnamespace::regnamespace FROM pg_extension ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        extensions,
        ["citext@public", "hstore@ext", "plpgsql@pg_catalog"]
    );

    // Progress adds up to what was copied; each table completes once, last.
    let events = events.into_inner().unwrap();
    let mut per_table: BTreeMap<String, (u64, u64, usize, Vec<bool>)> = BTreeMap::new();
    for (t, rows, bytes, complete) in &events {
        let entry = per_table.entry(qualified(t)).or_default();
        entry.0 += rows;
        entry.1 += bytes;
        entry.2 += 1;
        entry.3.push(*complete);
    }
    assert_eq!(per_table.len(), tables.len());
    for (t, (rows, _, chunks, completes)) in &per_table {
        assert_eq!(*rows as i64, expected[t].0, "{t}: rows reported");
        let mut want = vec![false; chunks - 1];
        want.push(true);
        assert_eq!(completes, &want, "{t}: complete exactly once, at the end");
    }
    let blob_chunks = per_table["\"app\".\"blobs\""].2 as u64;
    if source.major() >= 14 {
        assert!(
            blob_chunks >= blobs.estimated_bytes / chunk_bytes,
            "blobs copied in ctid ranges: {blob_chunks} chunks"
        );
    } else {
        // No TID Range Scan before 14: a range would read the whole table each time.
        assert_eq!(blob_chunks, 1, "blobs copied whole on 13");
    }
    assert_eq!(stats.tables, tables.len());
    assert_eq!(stats.rows, per_table.values().map(|v| v.0).sum::<u64>());
    assert_eq!(stats.bytes, per_table.values().map(|v| v.1).sum::<u64>());
    assert!(stats.bytes > blobs.estimated_bytes / 2, "{stats:?}");

    // The replication connection stayed idle all along; the slot is still usable.
    repl.drop_slot(&slot("snapshot_test"), true).await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_without_the_password() {
    let source = Cluster::builder().password_auth().start();
    let store = Cluster::start();
    let wrong = "not-the-pass-7f3e9c";
    let source_info = ConnInfo::parse(&source.url(SCRAM_USER, Some(wrong), "postgres")).unwrap();
    let replica_info = ConnInfo::parse(&store.superuser_url("postgres")).unwrap();
    let schemas = vec!["public".to_owned()];
    let tables = vec![SourceTable {
        name: table("public", "t"),
        identity: ReplicaIdentity::PrimaryKey,
        columns: vec!["id".into()],
        estimated_bytes: 0,
        pages: 0,
        binary_copy: true,
    }];
    let tools = source_tools(&source, &store).await;
    let job = SnapshotJob {
        source: &source_info,
        replica: &replica_info,
        snapshot_name: "00000003-00000002-1",
        schemas: &schemas,
        only: None,
        replicated: &[],
        tables: &tables,
        copied_at: Lsn::new(0x100),
        token: TOKEN,
        deadline: None,
        exclude: &[],
        workers: 2,
        chunk_bytes: 0,
        tools: &tools,
    };

    let schema_error = SchemaDump::create(&job).await.unwrap_err();
    let copy_error = copy_data(&job, &|_| {}).await.unwrap_err();
    for error in [schema_error, copy_error] {
        let message = error.to_string();
        assert!(
            message.contains("password authentication failed"),
            "says why: {message}"
        );
        assert!(
            message.contains("password in the source URL"),
            "says what to do: {message}"
        );
        assert!(!message.contains(wrong), "leaks the password: {message}");
        assert!(
            !format!("{error:?}").contains(wrong),
            "Debug leaks the password"
        );
        assert!(
            !error.kind().is_transient(),
            "bad credentials need the operator"
        );
    }
}

#[tokio::test]
async fn a_dead_snapshot_or_a_pg_dump_failure_is_reported_precisely() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY)");
    let source_info = ConnInfo::parse(&source.superuser_url("postgres")).unwrap();
    let replica_info = ConnInfo::parse(&store.superuser_url("postgres")).unwrap();
    let schemas = vec!["public".to_owned()];
    let reader = source.connect("postgres").await;
    let tables = list_tables(&reader, &schemas, &[]).await.unwrap();
    let tools = source_tools(&source, &store).await;
    let job = SnapshotJob {
        source: &source_info,
        replica: &replica_info,
        snapshot_name: "00000003-0000001B-1",
        schemas: &schemas,
        only: None,
        replicated: &[],
        tables: &tables,
        copied_at: Lsn::new(0x100),
        token: TOKEN,
        deadline: None,
        exclude: &[],
        workers: 1,
        chunk_bytes: 0,
        tools: &tools,
    };

    // A snapshot that is gone: reported before pg_dump runs, as a reason to start over.
    let error = SchemaDump::create(&job).await.unwrap_err();
    assert!(
        matches!(error, SnapshotError::SnapshotGone { .. }),
        "{error:?}"
    );
    let error = copy_data(&job, &|_| {}).await.unwrap_err();
    assert!(
        matches!(error, SnapshotError::SnapshotGone { .. }),
        "{error:?}"
    );
    assert!(
        error.kind().is_transient(),
        "a new slot brings a new snapshot"
    );
    assert!(error.to_string().contains("new snapshot"), "{error}");

    // With a live snapshot: pg_dump runs with --strict-names, so an unknown schema is an
    // error, not an empty dump.
    let mut repl = replication_client(&source.superuser_url("postgres")).await;
    let created = repl
        .create_slot(&slot("strict_names"), true, SnapshotAction::Export)
        .await
        .unwrap();
    let live = created.snapshot_name.unwrap();
    let missing = vec!["public".to_owned(), "nope".to_owned()];
    let error = SchemaDump::create(&SnapshotJob {
        schemas: &missing,
        snapshot_name: &live,
        ..job
    })
    .await
    .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, SnapshotError::ToolFailed { .. }),
        "{error:?}"
    );
    assert!(message.starts_with("pg_dump failed"), "{message}");
    assert!(
        message.contains("no matching schemas"),
        "pg_dump's own words: {message}"
    );
    assert!(
        !error.kind().is_transient(),
        "the server is up and the snapshot alive: pg_dump would fail again: {message}"
    );
}

/// Timing only, never asserted: `cargo test --release --test integration
/// snapshot::timing -- --ignored --nocapture`. Copies `pgbench -i -s 10` with 2 and 4
/// workers, and with `pg_dump | pg_restore`, on the same two clusters.
#[tokio::test]
#[ignore = "timing; run by hand with --release --nocapture"]
async fn timing_pgbench_scale_10_against_pg_dump_and_pg_restore() {
    let scale: u32 = std::env::var("TRIBUTARY_SNAPSHOT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let runs: usize = std::env::var("TRIBUTARY_SNAPSHOT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let tuned = |b: crate::harness::ClusterBuilder| {
        b.setting("max_wal_size", "4GB")
            .setting("checkpoint_timeout", "30min")
            .setting("shared_buffers", "256MB")
    };
    let source = tuned(Cluster::builder()).start();
    let store = tuned(Cluster::builder()).start();
    source.create_database("bench");
    let bin = source.bindir();
    let source_url = source.superuser_url("bench");
    let status = std::process::Command::new(bin.join("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), &source_url])
        .output()
        .unwrap();
    assert!(status.status.success(), "pgbench -i failed");
    source.psql("bench", "VACUUM ANALYZE; CHECKPOINT");
    let source_info = ConnInfo::parse(&source_url).unwrap();
    let schemas = vec!["public".to_owned()];

    let mut results: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in 0..runs {
        for workers in [2, 4] {
            let mut repl = replication_client(&source_url).await;
            let slot_name = slot(&format!("timing_{run}_{workers}"));
            let created = repl
                .create_slot(&slot_name, true, SnapshotAction::Export)
                .await
                .unwrap();
            let snapshot = created.snapshot_name.unwrap();
            let reader = source.connect("bench").await;
            on_snapshot(&reader, &snapshot).await;
            let tables = list_tables(&reader, &schemas, &[]).await.unwrap();
            let db = format!("ours_{run}_{workers}");
            let store_info = ConnInfo::parse(&store.superuser_url("postgres")).unwrap();
            prepare_replica(&store_info, &db, TOKEN).await.unwrap();
            let replica_info = ConnInfo::parse(&store.superuser_url(&db)).unwrap();
            let tools = source_tools(&source, &store).await;
            let job = SnapshotJob {
                source: &source_info,
                replica: &replica_info,
                snapshot_name: &snapshot,
                schemas: &schemas,
                only: None,
                replicated: &[],
                tables: &tables,
                copied_at: Lsn::new(0x100),
                token: TOKEN,
                deadline: None,
                exclude: &[],
                workers,
                chunk_bytes: 32 << 20,
                tools: &tools,
            };
            let started = Instant::now();
            let schema = SchemaDump::create(&job).await.unwrap();
            schema.restore(&job, Section::PreData).await.unwrap();
            let pre = started.elapsed().as_secs_f64();
            let stats = copy_data(&job, &|_| {}).await.unwrap();
            let copied = started.elapsed().as_secs_f64();
            schema.restore(&job, Section::PostData).await.unwrap();
            let total = started.elapsed().as_secs_f64();
            reader.batch_execute("COMMIT").await.unwrap();
            drop(repl);
            eprintln!(
                "run {run}: tributary {workers} workers: {total:.2} s (pre-data {pre:.2} s, \
                 rows {:.2} s: {} rows, {} MB, post-data {:.2} s)",
                copied - pre,
                stats.rows,
                stats.bytes >> 20,
                total - copied
            );
            results
                .entry(format!("tributary, {workers} workers"))
                .or_default()
                .push(total);
        }

        let db = format!("dump_{run}");
        store.create_database(&db);
        let started = Instant::now();
        let script = format!(
            "{} --format=custom '{}' | {} --no-owner --no-privileges --exit-on-error -d '{}'",
            bin.join("pg_dump").display(),
            source_url,
            bin.join("pg_restore").display(),
            store.superuser_url(&db)
        );
        let output = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let total = started.elapsed().as_secs_f64();
        eprintln!("run {run}: pg_dump | pg_restore: {total:.2} s");
        results
            .entry("pg_dump | pg_restore".into())
            .or_default()
            .push(total);
    }
    println!("pgbench scale {scale}, {runs} run(s), median seconds:");
    for (what, mut times) in results {
        times.sort_by(f64::total_cmp);
        println!(
            "  {what:24} {:6.2}   (all: {times:.2?})",
            times[times.len() / 2]
        );
    }
}

#[tokio::test]
async fn the_first_error_stops_every_worker_and_closes_their_sessions() {
    let source = Cluster::start();
    let store = Cluster::start();
    source.psql(
        "postgres",
        "CREATE TABLE big (id int PRIMARY KEY, body text);
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
         CREATE TABLE small (id int PRIMARY KEY);",
    );
    let source_url = source.superuser_url("postgres");
    let mut repl = replication_client(&source_url).await;
    let created = repl
        .create_slot(&slot("first_error"), true, SnapshotAction::Export)
        .await
        .unwrap();
    let snapshot = created.snapshot_name.unwrap();
    let reader = source.connect("postgres").await;
    on_snapshot(&reader, &snapshot).await;
    let schemas = vec!["public".to_owned()];
    let tables = list_tables(&reader, &schemas, &[]).await.unwrap();
    reader.batch_execute("COMMIT").await.unwrap();

    // The replica has `big` but not `small`: the worker that takes `small` fails while
    // the others are busy with `big`.
    store.psql(
        "postgres",
        "CREATE TABLE big (id int PRIMARY KEY, body text)",
    );
    let mut source_info = ConnInfo::parse(&source_url).unwrap();
    source_info.application_name = "snapshot_worker".into();
    let mut replica_info = ConnInfo::parse(&store.superuser_url("postgres")).unwrap();
    prepare_replica(&replica_info, "postgres", TOKEN)
        .await
        .unwrap();
    replica_info.application_name = "snapshot_worker".into();
    let tools = source_tools(&source, &store).await;
    let job = SnapshotJob {
        source: &source_info,
        replica: &replica_info,
        snapshot_name: &snapshot,
        schemas: &schemas,
        only: None,
        replicated: &[],
        tables: &tables,
        copied_at: Lsn::new(0x100),
        token: TOKEN,
        deadline: None,
        exclude: &[],
        workers: 4,
        chunk_bytes: 64 * 1024,
        tools: &tools,
    };
    let error = copy_data(&job, &|_| {}).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("writing public.small") && message.contains("does not exist"),
        "{message}"
    );
    assert!(
        !error.kind().is_transient(),
        "a missing table needs the operator: {message}"
    );

    // Nothing outlives copy_data: every worker's sessions end.
    let sessions =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'snapshot_worker'";
    for cluster in [&source, &store] {
        eventually("worker sessions to end", || async {
            (cluster.psql("postgres", sessions) == "0").then_some(())
        })
        .await;
    }
}

/// The relay's reading side, byte for byte: notices between rows are logged and skipped
/// (the rows after them still arrive), blocks end anywhere inside a row, and a server
/// error in the middle of a COPY is the server's.
#[tokio::test]
async fn copy_data_arrives_whole_around_notices_and_errors() {
    let source = Cluster::start();
    source.psql(
        "postgres",
        "CREATE FUNCTION noisy(n int) RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
             IF n % 100 = 0 THEN RAISE NOTICE 'row %', n; END IF;
             RETURN 10 / (n - 4000);
         END $$",
    );
    let exporter = source.connect("postgres").await;
    exporter
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let snapshot: String = exporter
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .unwrap()
        .get(0);
    let info = ConnInfo::parse(&source.superuser_url("postgres")).unwrap();
    let mut session = SnapshotSession::open(&info, "SET client_min_messages = notice", &snapshot)
        .await
        .unwrap();

    let mut data = BytesMut::new();
    let mut out = session
        .copy_out(
            "COPY (SELECT g, noisy(g), repeat('x', g % 50) FROM generate_series(1, 3999) g) \
             TO STDOUT",
        )
        .await
        .unwrap();
    while out.read(&mut data, 1000).await.unwrap() {}
    let expected: String = (1..=3999)
        .map(|g: i32| {
            format!(
                "{g}\t{}\t{}\n",
                10 / (g - 4000),
                "x".repeat(g as usize % 50)
            )
        })
        .collect();
    assert_eq!(String::from_utf8(data.to_vec()).unwrap(), expected);

    // The same session runs the next COPY, which fails at row 4000, after 3999 rows.
    data.clear();
    let mut out = session
        .copy_out("COPY (SELECT noisy(g) FROM generate_series(1, 5000) g) TO STDOUT")
        .await
        .unwrap();
    let error = loop {
        match out.read(&mut data, 1 << 16).await {
            Ok(true) => {}
            Ok(false) => panic!("the COPY ended without its error"),
            Err(error) => break error,
        }
    };
    assert_eq!(error.sqlstate(), Some("22012"), "{error}");
    assert!(error.to_string().contains("division by zero"), "{error}");
}

/// Grants `role` reading every table and sequence: `pg_read_all_data` from PostgreSQL 14,
/// before it the same grants schema by schema.
fn read_all_data(cluster: &Cluster, role: &str) -> String {
    if cluster.major() >= 14 {
        return format!("GRANT pg_read_all_data TO {role}");
    }
    format!(
        "DO $$ DECLARE s text; BEGIN
           FOR s IN SELECT nspname FROM pg_namespace
                     WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP
             EXECUTE format('GRANT USAGE ON SCHEMA %I TO {role};
                             GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {role};
                             GRANT SELECT ON ALL SEQUENCES IN SCHEMA %I TO {role}', s, s, s);
           END LOOP;
         END $$"
    )
}
