//! The branch-store sink against real servers: changes streamed from a source database
//! through wal2json are applied to a replica database, which must then equal the source
//! (row count and an order-independent checksum per table, computed by the server).
//!
//! Source and replica are two databases of one cluster: the slot decodes only the source
//! database, so the sink's own writes never come back.

use std::time::Instant;

use tributary::change::{Change, ChangeKind, Value};
use tributary::pg::ConnInfo;
use tributary::sink::{self, ReplicaSink, SinkError};
use tributary::source::SnapshotAction;
use tributary::types::{FencingToken, Lsn};

use crate::harness::Cluster;
use crate::support::*;

const SOURCE: &str = "source";
const REPLICA: &str = "replica";
/// The lease token the tests' replicas are claimed with.
const FIRST_OWNER: FencingToken = FencingToken(1);

/// A cluster with a source database and a prepared replica database, both holding `schema`.
struct Env {
    cluster: Cluster,
    store: ConnInfo,
    source_url: String,
}

impl Env {
    async fn new(schema: &str) -> Env {
        let cluster = Cluster::start();
        cluster.create_database(SOURCE);
        cluster.psql(SOURCE, schema);
        let store = ConnInfo::parse(&cluster.superuser_url("postgres")).unwrap();
        sink::prepare_replica(&store, REPLICA, FIRST_OWNER)
            .await
            .unwrap();
        cluster.psql(REPLICA, schema);
        let source_url = cluster.superuser_url(SOURCE);
        Env {
            cluster,
            store,
            source_url,
        }
    }

    async fn sink(&self) -> ReplicaSink {
        ReplicaSink::connect(&self.store, REPLICA, FIRST_OWNER)
            .await
            .unwrap()
    }

    /// Runs each of `transactions` on the source as one transaction and returns them as
    /// streamed (a slot is created first, so exactly these arrive).
    async fn capture(&self, slot_name: &str, transactions: &[&str]) -> Vec<Transaction> {
        let slot = slot(slot_name);
        replication_client(&self.source_url)
            .await
            .create_slot(&slot, false, SnapshotAction::NoExport)
            .await
            .unwrap();
        let script: String = transactions
            .iter()
            .map(|sql| format!("BEGIN;\n{sql};\nCOMMIT;\n"))
            .collect();
        self.cluster.psql(SOURCE, &script);
        let mut stream = start_stream(&self.source_url, &slot, Lsn::ZERO).await;
        read_transactions(&mut stream, transactions.len()).await
    }

    /// `count:checksum` of `table` in `database`, independent of row order.
    fn checksum(&self, database: &str, table: &str) -> String {
        self.cluster.psql(
            database,
            &format!(
                "SELECT count(*) || ':' || coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') \
                 FROM {table} t"
            ),
        )
    }

    fn assert_same(&self, tables: &[&str]) {
        for table in tables {
            let source = self.checksum(SOURCE, table);
            let replica = self.checksum(REPLICA, table);
            assert_eq!(source, replica, "{table}: source and replica differ");
        }
    }
}

/// Applies every change of `tx` and commits at its end; on error, rolls back if needed.
async fn apply_tx(sink: &mut ReplicaSink, tx: &Transaction) -> Result<(), SinkError> {
    let mut result = Ok(());
    for change in tx.changes() {
        result = sink
            .apply(change.clone())
            .await
            .map(|misfit| assert!(misfit.is_none(), "the change fits"));
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = sink.commit(tx.end_lsn).await;
    }
    if result.is_err() && sink.in_transaction() {
        sink.rollback().await.unwrap();
    }
    assert!(!sink.in_transaction());
    result
}

async fn apply_all(sink: &mut ReplicaSink, txs: &[Transaction]) {
    for (i, tx) in txs.iter().enumerate() {
        apply_tx(sink, tx)
            .await
            .unwrap_or_else(|e| panic!("transaction {i}: {e}"));
    }
}

fn only_change(tx: &Transaction) -> &Change {
    let changes: Vec<_> = tx.changes().collect();
    assert_eq!(changes.len(), 1, "{:?}", tx.messages);
    changes[0]
}

#[tokio::test]
async fn inserts_updates_deletes_and_truncates_reach_the_replica_as_made() {
    let env = Env::new(
        "CREATE TABLE parent (id int PRIMARY KEY, name text);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id), note text);
         CREATE TABLE items (id bigint PRIMARY KEY, qty int, label text, price numeric(12,2),
                             at timestamptz);",
    )
    .await;
    let txs = env
        .capture(
            "sink_basic",
            &[
                "INSERT INTO parent VALUES (1, 'one'), (2, 'two');
                 INSERT INTO child VALUES (10, 1, 'a'), (11, 2, NULL);
                 INSERT INTO items SELECT g, g % 7, 'item ' || g, g * 1.25, '2024-01-01'::timestamptz + g * interval '1 hour'
                   FROM generate_series(1, 300) g",
                "UPDATE items SET qty = qty + 1, at = now() WHERE id % 3 = 0;
                 UPDATE items SET label = NULL WHERE id % 5 = 0",
                "DELETE FROM items WHERE id > 280",
                "TRUNCATE parent, child",
                "INSERT INTO parent VALUES (3, 'three'); INSERT INTO child VALUES (12, 3, 'c')",
                "INSERT INTO items VALUES (1000, 1, 'late', 0.01, NULL);
                 UPDATE items SET price = -price WHERE id BETWEEN 10 AND 20",
            ],
        )
        .await;
    let truncates: Vec<_> = txs[3].changes().collect();
    assert_eq!(truncates.len(), 2, "one TRUNCATE record per table");
    assert!(truncates.iter().all(|c| c.kind == ChangeKind::Truncate));
    assert_eq!(truncates[0].lsn, truncates[1].lsn);

    let mut sink = env.sink().await;
    assert_eq!(sink.applied_lsn().await.unwrap(), None);
    apply_all(&mut sink, &txs).await;
    env.assert_same(&["parent", "child", "items"]);
    assert_eq!(
        sink.applied_lsn().await.unwrap(),
        Some(txs.last().unwrap().end_lsn)
    );
}

#[tokio::test]
async fn an_update_without_an_unchanged_toasted_column_keeps_its_value() {
    let env = Env::new(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await;
    let txs = env
        .capture(
            "sink_toast",
            &[
                // 1 MiB of incompressible-looking text, stored out of line.
                "INSERT INTO docs SELECT 1, 'first', string_agg(md5(g::text), '')
                   FROM generate_series(1, 32768) g",
                "UPDATE docs SET title = 'second' WHERE id = 1",
            ],
        )
        .await;
    let update = only_change(&txs[1]);
    assert_eq!(update.kind, ChangeKind::Update);
    assert_eq!(update.new_value("body"), None, "unchanged TOAST is absent");

    let mut sink = env.sink().await;
    apply_all(&mut sink, &txs).await;
    env.assert_same(&["docs"]);
    assert_eq!(
        env.cluster
            .psql(REPLICA, "SELECT title, length(body) FROM docs"),
        "second|1048576"
    );
}

#[tokio::test]
async fn an_update_of_the_key_moves_the_row() {
    let env = Env::new("CREATE TABLE t (id int PRIMARY KEY, v text, w int);").await;
    let txs = env
        .capture(
            "sink_key",
            &[
                "INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2)",
                "UPDATE t SET id = 10, v = 'moved' WHERE id = 1",
            ],
        )
        .await;
    let moved = only_change(&txs[1]);
    assert_eq!(moved.identity[0].value, Value::Number("1".into()));
    assert_eq!(moved.new_value("id"), Some(&Value::Number("10".into())));

    let mut sink = env.sink().await;
    apply_all(&mut sink, &txs).await;
    env.assert_same(&["t"]);
    assert_eq!(
        env.cluster.psql(REPLICA, "SELECT id, v FROM t ORDER BY id"),
        "2|b\n10|moved"
    );
}

#[tokio::test]
async fn replica_identity_full_changes_one_of_identical_rows() {
    // No key; columns without an equality operator (json, point) and with a loose one
    // (numeric: 1.0 = 1.00, float8: -0 = 0).
    let env = Env::new(
        "CREATE TABLE dup (a int, b text, j json, p point, n numeric, f float8);
         ALTER TABLE dup REPLICA IDENTITY FULL;",
    )
    .await;
    let txs = env
        .capture(
            "sink_full",
            &[
                r#"INSERT INTO dup VALUES
                     (1, 'x', '{"k":1}', '(1,2)', 1.0, 0.1),
                     (1, 'x', '{"k":1}', '(1,2)', 1.0, 0.1),
                     (1, 'x', '{"k": 1}', '(1,2)', 1.00, 0.1),
                     (2, NULL, NULL, NULL, NULL, '-0'),
                     (2, NULL, NULL, NULL, NULL, '-0'),
                     (2, NULL, NULL, NULL, NULL, 0.0)"#,
                r#"DELETE FROM dup WHERE ctid = (SELECT ctid FROM dup WHERE j::text = '{"k":1}' LIMIT 1)"#,
                "UPDATE dup SET b = 'changed' WHERE ctid = (SELECT ctid FROM dup WHERE a = 2 AND f::text = '-0' LIMIT 1)",
                "DELETE FROM dup WHERE n::text = '1.00'",
                "UPDATE dup SET f = 1 WHERE a = 2 AND f::text = '0'",
            ],
        )
        .await;
    let mut sink = env.sink().await;
    apply_all(&mut sink, &txs).await;
    env.assert_same(&["dup"]);
    assert_eq!(
        env.cluster.psql(
            REPLICA,
            "SELECT a, b, j, n, f FROM dup ORDER BY a, b NULLS FIRST, f"
        ),
        "1|x|{\"k\":1}|1.0|0.1\n2||||-0\n2||||1\n2|changed|||-0",
        "one of each duplicate pair changed"
    );
}

#[tokio::test]
async fn a_missing_row_fails_the_transaction_naming_table_and_lsn() {
    let env = Env::new("CREATE TABLE t (id int PRIMARY KEY, v text);").await;
    let txs = env
        .capture(
            "sink_missing",
            &[
                "INSERT INTO t VALUES (1, 'old'), (2, 'old')",
                "UPDATE t SET v = 'new' WHERE id = 1; UPDATE t SET v = 'new' WHERE id = 2",
                "DELETE FROM t WHERE id = 2",
            ],
        )
        .await;
    let mut sink = env.sink().await;
    apply_tx(&mut sink, &txs[0]).await.unwrap();
    // The replica diverges: somebody deletes a row on it.
    env.cluster.psql(REPLICA, "DELETE FROM t WHERE id = 2");

    for (tx, kind) in [(&txs[1], "UPDATE"), (&txs[2], "DELETE")] {
        let failing = tx.changes().last().unwrap();
        let err = apply_tx(&mut sink, tx).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SinkError::RowNotFound { .. }), "{err:?}");
        assert!(!err.is_transient());
        assert!(text.contains("row not found"), "{text}");
        assert!(text.contains(&format!("{kind} on public.t")), "{text}");
        let lsn = failing.lsn.to_string();
        assert!(text.contains(&lsn), "{text} should name {lsn}");
    }
    // Nothing of the failed transactions was committed: not even the first UPDATE.
    assert_eq!(env.cluster.psql(REPLICA, "SELECT id, v FROM t"), "1|old");
    assert_eq!(sink.applied_lsn().await.unwrap(), Some(txs[0].end_lsn));
}

/// Applies every change of `txs` in one target transaction, as the pipeline groups them.
async fn apply_grouped(sink: &mut ReplicaSink, txs: &[Transaction]) -> Result<(), SinkError> {
    let mut result = Ok(());
    for change in txs.iter().flat_map(Transaction::changes) {
        result = sink
            .apply(change.clone())
            .await
            .map(|misfit| assert!(misfit.is_none(), "the change fits"));
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = sink.commit(txs.last().unwrap().end_lsn).await;
    }
    if result.is_err() && sink.in_transaction() {
        sink.rollback().await.unwrap();
    }
    result
}

#[tokio::test]
async fn repeated_updates_of_hot_rows_in_one_target_transaction_end_as_on_the_source() {
    let env = Env::new(
        "CREATE TABLE hot (id int PRIMARY KEY, n bigint, note text, big text);
         ALTER TABLE hot ALTER big SET STORAGE EXTERNAL;
         CREATE TABLE other (id int PRIMARY KEY, n bigint);",
    )
    .await;
    env.cluster.psql(
        SOURCE,
        "INSERT INTO hot SELECT g, 0, 'start', repeat('x', 5000) FROM generate_series(1, 5) g;
         INSERT INTO other SELECT g, 0 FROM generate_series(1, 5) g;",
    );
    env.cluster.psql(
        REPLICA,
        "INSERT INTO hot SELECT g, 0, 'start', repeat('x', 5000) FROM generate_series(1, 5) g;
         INSERT INTO other SELECT g, 0 FROM generate_series(1, 5) g;",
    );
    // Many source transactions hitting the same few keys: same-shape updates (merged),
    // updates of another column set (TOAST omitted vs. present), NULLs, deletes and
    // re-inserts of a key, a key change, and interleaved changes to another table.
    let mut script = Vec::new();
    for i in 0..200 {
        let id = i % 5 + 1;
        script.push(match i % 17 {
            3 => format!("UPDATE hot SET big = repeat('y', 4000 + {i}) WHERE id = {id}"),
            5 => format!("UPDATE hot SET note = NULL, n = n + 1 WHERE id = {id}"),
            7 => format!(
                "DELETE FROM hot WHERE id = {id}; INSERT INTO hot VALUES ({id}, {i}, 'again', 'short')"
            ),
            11 => format!(
                "UPDATE hot SET id = 100 + {i} WHERE id = {id}; UPDATE hot SET id = {id} WHERE id = 100 + {i}"
            ),
            _ => format!(
                "UPDATE hot SET n = n + {i}, note = 'n' || {i} WHERE id = {id};
                 UPDATE other SET n = n + 1 WHERE id = {id}; UPDATE hot SET n = n + 1 WHERE id = {id}"
            ),
        });
    }
    let script: Vec<&str> = script.iter().map(String::as_str).collect();
    let txs = env.capture("sink_hot", &script).await;

    let mut sink = env.sink().await;
    for group in txs.chunks(37) {
        apply_grouped(&mut sink, group).await.unwrap();
    }
    env.assert_same(&["hot", "other"]);
    assert_eq!(
        sink.applied_lsn().await.unwrap(),
        Some(txs.last().unwrap().end_lsn)
    );
}

#[tokio::test]
async fn a_merged_update_of_a_missing_row_fails_naming_its_first_change() {
    let env = Env::new("CREATE TABLE t (id int PRIMARY KEY, n int);").await;
    env.cluster
        .psql(SOURCE, "INSERT INTO t VALUES (1, 0), (2, 0)");
    env.cluster.psql(REPLICA, "INSERT INTO t VALUES (1, 0)");
    let txs = env
        .capture(
            "sink_merged_missing",
            &[
                "UPDATE t SET n = 1 WHERE id = 1; UPDATE t SET n = 1 WHERE id = 2",
                "UPDATE t SET n = 2 WHERE id = 2; UPDATE t SET n = 2 WHERE id = 1",
            ],
        )
        .await;
    let first = txs[0].changes().last().unwrap().lsn.to_string();
    let mut sink = env.sink().await;
    let err = apply_grouped(&mut sink, &txs).await.unwrap_err();
    assert!(matches!(err, SinkError::RowNotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&first), "{text} should name {first}");
    assert_eq!(env.cluster.psql(REPLICA, "SELECT id, n FROM t"), "1|0");
    assert_eq!(sink.applied_lsn().await.unwrap(), None);
}

#[tokio::test]
async fn a_duplicate_insert_is_an_error_naming_the_failing_change_among_many() {
    let env = Env::new("CREATE TABLE t (id int PRIMARY KEY, v text);").await;
    let txs = env
        .capture(
            "sink_dup",
            &["INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 3000) g"],
        )
        .await;
    env.cluster
        .psql(REPLICA, "INSERT INTO t VALUES (1777, 'already here')");
    let failing = txs[0]
        .changes()
        .find(|c| c.new_value("id") == Some(&Value::Number("1777".into())))
        .unwrap();

    let mut sink = env.sink().await;
    let err = apply_tx(&mut sink, &txs[0]).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.sqlstate(), Some("23505"), "{text}");
    assert!(!err.is_transient());
    assert!(text.contains("INSERT on public.t"), "{text}");
    assert!(text.contains("23505"), "{text}");
    let lsn = failing.lsn.to_string();
    assert!(
        text.contains(&format!("LSN {lsn} ")),
        "{text} should name {lsn}"
    );
    assert!(
        !text.contains("already here"),
        "no row values in messages: {text}"
    );
    assert_eq!(env.cluster.psql(REPLICA, "SELECT count(*) FROM t"), "1");
    assert_eq!(sink.applied_lsn().await.unwrap(), None);
}

#[tokio::test]
async fn the_applied_lsn_commits_with_the_data_and_never_moves_backwards() {
    let env = Env::new("CREATE TABLE t (id int PRIMARY KEY);").await;
    let txs = env
        .capture(
            "sink_progress",
            &["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"],
        )
        .await;
    let mut sink = env.sink().await;
    assert_eq!(sink.applied_lsn().await.unwrap(), None);
    let start = Lsn::new(txs[0].end_lsn.as_u64() - 1);
    sink.mark_applied(start).await.unwrap();
    assert_eq!(sink.applied_lsn().await.unwrap(), Some(start));

    // Rolled back: neither data nor progress.
    for change in txs[0].changes() {
        assert!(
            sink.apply(change.clone()).await.unwrap().is_none(),
            "the change fits"
        );
    }
    assert!(sink.in_transaction());
    sink.rollback().await.unwrap();
    assert!(!sink.in_transaction());
    assert_eq!(env.cluster.psql(REPLICA, "SELECT count(*) FROM t"), "0");
    assert_eq!(sink.applied_lsn().await.unwrap(), Some(start));

    // Committed: both, seen from another session too.
    apply_all(&mut sink, &txs[..1]).await;
    assert_eq!(env.cluster.psql(REPLICA, "SELECT id FROM t"), "1");
    assert_eq!(
        env.cluster
            .psql(REPLICA, "SELECT lsn FROM tributary.applied"),
        txs[0].end_lsn.to_string()
    );

    // Applying a transaction at or before the recorded LSN would apply it twice.
    let err = apply_tx(&mut sink, &txs[0]).await.unwrap_err();
    assert!(
        matches!(err, SinkError::ProgressBackwards { .. }) || err.sqlstate() == Some("23505"),
        "{err}"
    );
    for change in txs[1].changes() {
        assert!(
            sink.apply(change.clone()).await.unwrap().is_none(),
            "the change fits"
        );
    }
    let err = sink.commit(start).await.unwrap_err();
    assert!(matches!(err, SinkError::ProgressBackwards { .. }), "{err}");
    assert!(!sink.in_transaction(), "a failed commit rolls back");
    assert_eq!(env.cluster.psql(REPLICA, "SELECT count(*) FROM t"), "1");

    // An empty transaction behind the recorded LSN is passed over; marking it is refused.
    sink.commit(start).await.unwrap();
    assert_eq!(sink.applied_lsn().await.unwrap(), Some(txs[0].end_lsn));
    let err = sink.mark_applied(start).await.unwrap_err();
    assert!(matches!(err, SinkError::ProgressBackwards { .. }), "{err}");
    assert_eq!(sink.applied_lsn().await.unwrap(), Some(txs[0].end_lsn));

    apply_all(&mut sink, &txs[1..]).await;
    env.assert_same(&["t"]);
    assert_eq!(sink.applied_lsn().await.unwrap(), Some(txs[1].end_lsn));
}

/// Names that need quoting everywhere, and the types of `value_fidelity.rs` plus a few
/// more, through INSERT, UPDATE (key and full identity) and DELETE.
const ODD_SCHEMA: &str = r#"
CREATE SCHEMA "Odd ""Schema"". x";
CREATE TYPE "Odd ""Schema"". x"."Mood é" AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN "Odd ""Schema"". x".positive AS int CHECK (VALUE > 0);
CREATE DOMAIN "Odd ""Schema"". x".blob AS bytea;
CREATE TABLE "Odd ""Schema"". x"."Table ""Q"". Ünï" (
    "Id Key" int PRIMARY KEY,
    "Quote""d" text, "CamelCase" int, "dot.ted" text, "space d" text, "ünï 漢字" text,
    c_int2 int2, c_int4 int4, c_int8 int8, c_numeric numeric, c_numeric_mod numeric(12,3),
    c_float4 float4, c_float8 float8, c_bool bool, c_text text, c_bytea bytea,
    c_blob "Odd ""Schema"". x".blob, c_bytea_arr bytea[], c_uuid uuid, c_date date,
    c_ts timestamp, c_ts3 timestamp(3), c_tstz timestamptz, c_interval interval, c_json json,
    c_jsonb jsonb, c_int_arr int[], c_text_arr text[], c_enum "Odd ""Schema"". x"."Mood é",
    c_enum_arr "Odd ""Schema"". x"."Mood é"[], c_domain "Odd ""Schema"". x".positive,
    c_varchar varchar(20), c_char char(5), c_time time, c_timetz timetz, c_inet inet,
    c_cidr cidr, c_macaddr macaddr, c_bit bit(4), c_varbit varbit, c_point point,
    c_tsrange tsrange, c_int4range int4range, c_oid oid, c_name name, c_tsvector tsvector
);
CREATE TABLE "Odd ""Schema"". x"."full ""no key""" (LIKE "Odd ""Schema"". x"."Table ""Q"". Ünï");
ALTER TABLE "Odd ""Schema"". x"."full ""no key""" REPLICA IDENTITY FULL;
"#;

const ODD_ROWS: &str = r#"
INSERT INTO "Odd ""Schema"". x"."Table ""Q"". Ünï" VALUES
 (1, 'q"uote', 1, 'd.t', 's p', 'ü', 1, 2, 3, 4.5, 1.5, 1.5, 2.25, true, 'plain', '\x0102',
  '\x0a0b', '{"\\x01","\\xff"}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
  '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.1239', '2024-02-29 13:14:15.5+05:30',
  '1 day 02:03:04', '{"a": 1}', '{"b": [1, 2]}', '{1,2,3}', '{x,y}', 'happy', '{sad,ok}', 7,
  'short', 'ab', '23:59:59.999999', '12:00+02', '10.0.0.1/8', '10.0.0.0/8',
  '08:00:2b:01:02:03', '1010', '10101', '(1.5,-2)', '[2024-01-01,2024-02-01)', '[1,10)',
  4294967295, 'a name', 'fat cat:1 rat'),
 (2, '', -1, '', '', '', -32768, 2147483647, -9223372036854775808,
  12345678901234567890.123456789, -0.0005, 3.4028235e38, 1.7976931348623157e308, false,
  E'quote'' dq" back\\slash\nnewline\ttab \u0001 ctl é ü 漢字 🦀 end', '\x00ff10deadbeef',
  '\x', '{}', '00000000-0000-0000-0000-000000000000', '0044-03-15 BC', 'infinity',
  'infinity', '-infinity', '-1 years +2 mons -3 days 04:05:06.789',
  E'{"k": "v \\"q\\" \\u00e9", "n": 12345678901234567890.5}', '{"z": null, "a": "é"}',
  '{NULL,-1,0}', E'{"a b","c,d",NULL,"\\"q\\"","é"}', 'sad', '{}', 2147483647, 'ümlaut',
  ' x ', '00:00:00', '00:00:00-14', '::1', '::/0', 'ff:ff:ff:ff:ff:ff', '0000', '',
  '(0,0)', 'empty', '(,)', 0, '', ''),
 (3, NULL, NULL, NULL, NULL, NULL, 0, 0, 0, 0.000000000000000000000000000001, 0, 1.17549435e-38,
  5e-324, true, '', '\x', NULL, '{NULL}', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '1970-01-01',
  '1970-01-01 00:00:00', '1970-01-01', '1970-01-01 00:00:00+00', '0', '"just a string"', '[]',
  '{}', '{}', 'ok', '{happy}', 1, '', '', '12:00', '12:00Z', '192.168.1.1', '192.168.1.0/24',
  '00:00:00:00:00:00', '1111', '1', '(1e300,-1e-300)', '(,)', 'empty', 1, 'n', 'a:1A b:2'),
 (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, -1.500, NULL, -0.0, 0.1, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'null', 'null', NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO "Odd ""Schema"". x"."full ""no key"""
  SELECT * FROM "Odd ""Schema"". x"."Table ""Q"". Ünï";
INSERT INTO "Odd ""Schema"". x"."full ""no key"""
  SELECT * FROM "Odd ""Schema"". x"."Table ""Q"". Ünï";
"#;

const ODD_TABLES: &[&str] = &[
    r#""Odd ""Schema"". x"."Table ""Q"". Ünï""#,
    r#""Odd ""Schema"". x"."full ""no key""""#,
];

#[tokio::test]
async fn odd_identifiers_and_many_types_round_trip_exactly() {
    let env = Env::new(ODD_SCHEMA).await;
    let mut changes = vec![ODD_ROWS.to_owned()];
    for table in ODD_TABLES {
        changes.push(format!(
            r#"UPDATE {table} SET "Quote""d" = "Quote""d" || '!', c_text = c_text || ' more',
                  c_numeric = c_numeric * 3, c_float8 = -c_float8, c_bytea = c_bytea || '\xfe',
                  c_jsonb = c_jsonb || '{{"x": 1}}', c_int_arr = c_int_arr || 4,
                  c_tstz = c_tstz + interval '1 microsecond', c_bool = NOT c_bool
                WHERE "Id Key" IN (1, 2, 3)"#
        ));
        changes.push(format!(
            r#"UPDATE {table} SET "Id Key" = "Id Key" + 100 WHERE "Id Key" = 4"#
        ));
        changes.push(format!(r#"DELETE FROM {table} WHERE "Id Key" = 5"#));
    }
    // One of the two identical rows of the full-identity table changes.
    changes.push(format!(
        r#"UPDATE {table} SET c_text = 'one of two' WHERE ctid = (SELECT ctid FROM {table} WHERE "Id Key" = 2 LIMIT 1)"#,
        table = ODD_TABLES[1]
    ));
    let changes: Vec<&str> = changes.iter().map(String::as_str).collect();
    let txs = env.capture("sink_odd", &changes).await;
    let mut sink = env.sink().await;
    apply_all(&mut sink, &txs).await;
    env.assert_same(ODD_TABLES);
    assert_eq!(
        env.cluster.psql(
            REPLICA,
            &format!(
                r#"SELECT count(*) FROM {} WHERE c_text = 'one of two'"#,
                ODD_TABLES[1]
            )
        ),
        "1"
    );
}

#[tokio::test]
async fn generated_and_identity_columns_are_left_to_the_replica() {
    let env = Env::new(
        "CREATE TABLE gen (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int,
                           b int GENERATED ALWAYS AS (a * 2) STORED);",
    )
    .await;
    let txs = env
        .capture(
            "sink_generated",
            &[
                "INSERT INTO gen (a) VALUES (1), (2), (3)",
                "UPDATE gen SET a = 10 WHERE id = 1",
                "DELETE FROM gen WHERE id = 2",
            ],
        )
        .await;
    let mut sink = env.sink().await;
    apply_all(&mut sink, &txs).await;
    env.assert_same(&["gen"]);

    // A value for the generated column is not written: the replica computes its own.
    let mut forged = txs[0].changes().next().unwrap().clone();
    for column in &mut forged.columns {
        column.value = Value::Number(
            match column.name.as_str() {
                "id" => "50",
                "a" => "7",
                _ => "999",
            }
            .into(),
        );
    }
    assert!(
        sink.apply(forged).await.unwrap().is_none(),
        "the change fits"
    );
    sink.commit(Lsn::new(txs[2].end_lsn.as_u64() + 1))
        .await
        .unwrap();
    assert_eq!(
        env.cluster
            .psql(REPLICA, "SELECT a, b FROM gen WHERE id = 50"),
        "7|14"
    );
}

#[tokio::test]
async fn a_missing_table_is_a_clear_definite_error() {
    let env = Env::new("CREATE TABLE here (id int PRIMARY KEY);").await;
    env.cluster
        .psql(SOURCE, r#"CREATE TABLE "Not There" (id int PRIMARY KEY);"#);
    let txs = env
        .capture(
            "sink_no_table",
            &[r#"INSERT INTO here VALUES (1); INSERT INTO "Not There" VALUES (1)"#],
        )
        .await;
    let failing = txs[0].changes().last().unwrap();
    let mut sink = env.sink().await;
    let err = apply_tx(&mut sink, &txs[0]).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SinkError::MissingTable { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(text.contains(r#"public."Not There""#), "{text}");
    assert!(text.contains(&failing.lsn.to_string()), "{text}");
    assert!(text.contains("snapshot"), "{text}");
    assert_eq!(env.cluster.psql(REPLICA, "SELECT count(*) FROM here"), "0");
}

#[tokio::test]
async fn a_lost_connection_is_transient_and_commits_nothing() {
    let env = Env::new("CREATE TABLE t (id int PRIMARY KEY);").await;
    let txs = env
        .capture(
            "sink_lost",
            &["INSERT INTO t SELECT generate_series(1, 10)"],
        )
        .await;
    let mut sink = env.sink().await;
    let mut changes = txs[0].changes();
    assert!(
        sink.apply(changes.next().unwrap().clone())
            .await
            .unwrap()
            .is_none(),
        "the change fits"
    );
    env.cluster.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = 'replica' AND pid <> pg_backend_pid()",
    );
    let mut result = Ok(());
    for change in changes {
        result = sink
            .apply(change.clone())
            .await
            .map(|misfit| assert!(misfit.is_none(), "the change fits"));
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = sink.commit(txs[0].end_lsn).await;
    }
    let err = result.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let _ = sink.rollback().await;
    assert_eq!(env.cluster.psql(REPLICA, "SELECT count(*) FROM t"), "0");

    // A new session picks up where the replica is.
    let mut sink = env.sink().await;
    assert_eq!(sink.applied_lsn().await.unwrap(), None);
    apply_all(&mut sink, &txs).await;
    env.assert_same(&["t"]);
}

/// Fencing: once a newer lease's token claimed the replica, nothing of an older one
/// commits: not the transaction it had open (a paused daemon's), not a new session of it,
/// not a new transaction on a session opened before the claim.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_lease_commits_nothing_once_a_newer_one_claimed_the_replica() {
    let env = Env::new("CREATE TABLE t (id int PRIMARY KEY);").await;
    let txs = env
        .capture(
            "sink_fenced",
            &[
                "INSERT INTO t SELECT generate_series(1, 10)",
                "INSERT INTO t SELECT generate_series(11, 20)",
                "INSERT INTO t SELECT generate_series(21, 30)",
            ],
        )
        .await;
    let tx_changes = |i: usize| txs[i].changes().cloned().collect::<Vec<Change>>();
    let count = || env.cluster.psql(REPLICA, "SELECT count(*) FROM t");

    // The first owner has a transaction open, and pauses.
    let mut first = env.sink().await;
    for change in tx_changes(0) {
        first.apply(change).await.unwrap();
    }
    // The second owner's claim ends that transaction rather than wait for it.
    let second_owner = FencingToken(2);
    let claim = ReplicaSink::connect(&env.store, REPLICA, second_owner);
    let mut second = tokio::time::timeout(PATIENCE, claim)
        .await
        .expect("the claim waited for the paused owner's transaction")
        .unwrap();
    let err = first.commit(txs[0].end_lsn).await.unwrap_err();
    assert!(!first.in_transaction());
    assert_eq!(
        count(),
        "0",
        "the paused owner's transaction committed: {err}"
    );
    // Its reconnection is refused.
    let err = ReplicaSink::connect(&env.store, REPLICA, FIRST_OWNER)
        .await
        .err()
        .expect("the first owner claimed the replica back");
    assert!(matches!(err, SinkError::Fenced { .. }), "{err}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("fencing token 2"), "{err}");

    apply_tx(&mut second, &txs[0]).await.unwrap();
    assert_eq!(count(), "10");

    // A third owner claims while the second's session is idle: the second's next
    // transaction is refused, whatever it applied.
    let _third = ReplicaSink::connect(&env.store, REPLICA, FencingToken(3))
        .await
        .unwrap();
    let err = apply_tx(&mut second, &txs[1]).await.unwrap_err();
    assert!(matches!(err, SinkError::Fenced { .. }), "{err}");
    assert_eq!(count(), "10");
    assert_eq!(
        env.cluster
            .psql(REPLICA, "SELECT token FROM tributary.lease"),
        "3"
    );
    assert_eq!(
        env.cluster
            .psql(REPLICA, "SELECT lsn::text FROM tributary.applied"),
        txs[0].end_lsn.to_string()
    );
}

#[tokio::test]
async fn prepare_is_idempotent_and_drop_spares_the_control_database() {
    let cluster = Cluster::start();
    let store = ConnInfo::parse(&cluster.superuser_url("postgres")).unwrap();
    let name = "Replica \"odd\" name";
    assert!(!sink::replica_exists(&store, name).await.unwrap());
    sink::prepare_replica(&store, name, FIRST_OWNER)
        .await
        .unwrap();
    sink::prepare_replica(&store, name, FIRST_OWNER)
        .await
        .unwrap();
    assert!(sink::replica_exists(&store, name).await.unwrap());
    let mut replica = ReplicaSink::connect(&store, name, FIRST_OWNER)
        .await
        .unwrap();
    assert_eq!(replica.applied_lsn().await.unwrap(), None);
    replica.mark_applied(Lsn::new(0x1_0000_0010)).await.unwrap();
    assert_eq!(
        replica.applied_lsn().await.unwrap(),
        Some("1/10".parse().unwrap())
    );

    let err = sink::drop_database(&store, "postgres", true)
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Refused { .. }), "{err}");
    // Dropping ends the sink's session (FORCE).
    sink::drop_database(&store, name, true).await.unwrap();
    assert!(!sink::replica_exists(&store, name).await.unwrap());
    sink::drop_database(&store, name, true).await.unwrap();
    let err = replica.applied_lsn().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn partitions_and_inheritance_children_are_changed_alone() {
    let env = Env::new(
        "CREATE TABLE parted (id int, region text, v text, PRIMARY KEY (id, region))
           PARTITION BY LIST (region);
         CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu');
         CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us');
         CREATE TABLE base (id int PRIMARY KEY, v text);
         CREATE TABLE derived (extra int, PRIMARY KEY (id)) INHERITS (base);",
    )
    .await;
    let txs = env
        .capture(
            "sink_parted",
            &[
                "INSERT INTO parted SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'v'
                   FROM generate_series(1, 20) g;
                 INSERT INTO base VALUES (1, 'base'); INSERT INTO derived VALUES (1, 'derived', 7)",
                // Moves rows between partitions; changes the parent's row, not the child's.
                "UPDATE parted SET region = 'eu', v = 'moved' WHERE id <= 5;
                 UPDATE ONLY base SET v = 'base changed' WHERE id = 1",
                "DELETE FROM derived WHERE id = 1; UPDATE base SET v = v || '!'",
                "TRUNCATE parted",
                "INSERT INTO parted VALUES (100, 'us', 'after')",
            ],
        )
        .await;
    let truncated: Vec<&str> = txs[3].changes().map(|c| c.table.name.as_str()).collect();
    eprintln!("TRUNCATE parted arrives as TRUNCATE records for {truncated:?}");
    let mut sink = env.sink().await;
    apply_all(&mut sink, &txs).await;
    env.assert_same(&["parted_eu", "parted_us", "ONLY base", "derived"]);
}

#[tokio::test]
async fn triggers_do_not_fire_on_apply() {
    let env = Env::new("CREATE TABLE t (id int PRIMARY KEY, v text);").await;
    env.cluster.psql(
        REPLICA,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'trigger fired'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON t
           FOR EACH ROW EXECUTE FUNCTION refuse();",
    );
    let txs = env
        .capture(
            "sink_triggers",
            &[
                "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
                "UPDATE t SET v = 'c' WHERE id = 1; DELETE FROM t WHERE id = 2",
            ],
        )
        .await;
    let mut sink = env.sink().await;
    apply_all(&mut sink, &txs).await;
    env.assert_same(&["t"]);
}

/// Throughput of a pgbench-like mix (one big load, then many small transactions of
/// three UPDATEs and one INSERT), batched into target transactions as the pipeline does.
/// Prints changes per second; asserts only correctness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_of_a_simple_insert_update_mix() {
    let env = Env::new(
        "CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
         CREATE TABLE tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
         CREATE TABLE branches (bid int PRIMARY KEY, bbalance int, filler char(88));
         CREATE TABLE history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));",
    )
    .await;
    const ACCOUNTS: u32 = 50_000;
    const SMALL: u32 = 15_000;
    let load = format!(
        "INSERT INTO branches SELECT g, 0 FROM generate_series(1, 2) g;
         INSERT INTO tellers SELECT g, (g - 1) / 10 + 1, 0 FROM generate_series(1, 20) g;
         INSERT INTO accounts SELECT g, (g - 1) / 25000 + 1, 0, '' FROM generate_series(1, {ACCOUNTS}) g"
    );
    let slot_name = "sink_speed";
    let slot = slot(slot_name);
    replication_client(&env.source_url)
        .await
        .create_slot(&slot, false, SnapshotAction::NoExport)
        .await
        .unwrap();
    env.cluster.psql(SOURCE, &format!("BEGIN; {load}; COMMIT;"));
    env.cluster.psql(
        SOURCE,
        &format!(
            "DO $$
             DECLARE v_aid int; v_tid int; v_bid int; v_delta int;
             BEGIN
               FOR i IN 1..{SMALL} LOOP
                 v_aid := (i * 7919) % {ACCOUNTS} + 1; v_tid := i % 20 + 1; v_bid := i % 2 + 1;
                 v_delta := i % 1000 - 500;
                 UPDATE accounts SET abalance = abalance + v_delta WHERE aid = v_aid;
                 UPDATE tellers SET tbalance = tbalance + v_delta WHERE tid = v_tid;
                 UPDATE branches SET bbalance = bbalance + v_delta WHERE bid = v_bid;
                 INSERT INTO history VALUES (v_tid, v_bid, v_aid, v_delta, now());
                 COMMIT;
               END LOOP;
             END $$;"
        ),
    );
    let mut stream = start_stream(&env.source_url, &slot, Lsn::ZERO).await;
    let txs = read_transactions(&mut stream, 1 + SMALL as usize).await;
    let total: usize = txs.iter().map(|tx| tx.changes().count()).sum();
    assert_eq!(total, (ACCOUNTS + 22 + 4 * SMALL) as usize);

    let mut sink = env.sink().await;
    let started = Instant::now();
    let mut in_batch = 0;
    for (i, tx) in txs.iter().enumerate() {
        for change in tx.changes() {
            assert!(
                sink.apply(change.clone()).await.unwrap().is_none(),
                "the change fits"
            );
            in_batch += 1;
        }
        if in_batch >= 10_000 || i + 1 == txs.len() {
            sink.commit(tx.end_lsn).await.unwrap();
            in_batch = 0;
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "sink throughput: {total} changes ({} source transactions) in {:.2} s = {:.0} changes/s",
        txs.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(1e-3)
    );
    env.assert_same(&["accounts", "tellers", "branches", "history"]);
}
