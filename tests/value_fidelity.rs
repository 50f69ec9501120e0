//! Decoded values equal what `SELECT` returns, for every common type and awkward value;
//! and each kind of change arrives as the statement made it.

use std::time::Duration;

use tributary::change::{ChangeKind, Message, Value};
use tributary::source::wal2json::PluginOptions;
use tributary::source::SnapshotAction;
use tributary::types::Lsn;

use crate::harness::Cluster;
use crate::support::*;
use crate::versions::wal2json_at_least;

const COLUMNS: &[&str] = &[
    "id",
    "c_int2",
    "c_int4",
    "c_int8",
    "c_numeric",
    "c_float4",
    "c_float8",
    "c_bool",
    "c_text",
    "c_bytea",
    "c_uuid",
    "c_date",
    "c_ts",
    "c_tstz",
    "c_interval",
    "c_json",
    "c_jsonb",
    "c_int_arr",
    "c_text_arr",
    "c_enum",
    "c_domain",
    "c_varchar",
    "c_char",
    "c_time",
    "c_inet",
];

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE v (
    id int PRIMARY KEY,
    c_int2 int2, c_int4 int4, c_int8 int8, c_numeric numeric, c_float4 float4, c_float8 float8,
    c_bool bool, c_text text, c_bytea bytea, c_uuid uuid, c_date date, c_ts timestamp,
    c_tstz timestamptz, c_interval interval, c_json json, c_jsonb jsonb, c_int_arr int[],
    c_text_arr text[], c_enum mood, c_domain positive, c_varchar varchar(20), c_char char(5),
    c_time time, c_inet inet
);
"#;

const ROWS: &str = r#"
INSERT INTO v VALUES
 (1, 1, 2, 3, 4.5, 1.5, 2.25, true, 'plain', '\x0102', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '2024-02-29', '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.5+05:30', '1 day 02:03:04',
  '{"a": 1}', '{"b": [1, 2]}', '{1,2,3}', '{x,y}', 'happy', 7, 'short', 'ab', '23:59:59.999999',
  '10.0.0.1/8'),
 (2, -32768, 2147483647, -9223372036854775808, 12345678901234567890.123456789, 3.4028235e38,
  1.7976931348623157e308, false,
  E'quote'' dq" back\\slash\nnewline\ttab \u0001 ctl é ü 漢字 🦀 end', '\x00ff10deadbeef',
  '00000000-0000-0000-0000-000000000000', '0044-03-15 BC', 'infinity', '-infinity',
  '-1 years +2 mons -3 days 04:05:06.789',
  E'{"k": "v \\"q\\" \\u00e9", "n": 12345678901234567890.5}', '{"z": null, "a": "é"}',
  '{NULL,-1,0}', E'{"a b","c,d",NULL,"\\"q\\"","é"}', 'sad', 2147483647, 'ümlaut', ' x ',
  '00:00:00', '::1'),
 (3, 0, 0, 0, 0.000000000000000000000000000001, 1.17549435e-38, 5e-324, true, '', '\x',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', '1970-01-01', '1970-01-01 00:00:00',
  '1970-01-01 00:00:00+00', '0', '"just a string"', '[]', '{}', '{}', 'ok', 1, '', '',
  '12:00', '192.168.1.1'),
 (4, NULL, NULL, NULL, -1.500, -0.0, 0.1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'null',
  'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

/// Plain, and with `numeric-data-types-as-string` where the server's wal2json has it (2.6+,
/// PostgreSQL 17 and 18 here), which sends every number as a JSON string: the same text.
#[tokio::test]
async fn decoded_values_match_select_for_every_type() {
    let cluster = Cluster::start();
    let url = cluster.superuser_url("postgres");
    cluster.psql("postgres", SCHEMA);
    let plain = slot("fidelity");
    let as_string = slot("fidelity_numeric_as_string");
    let mut repl = replication_client(&url).await;
    for slot in [&plain, &as_string] {
        repl.create_slot(slot, false, SnapshotAction::NoExport)
            .await
            .unwrap();
    }
    cluster.psql("postgres", ROWS);

    // SELECT in a session with the walsender's settings: same output functions, same text.
    let mut reader = replication_client(&url).await;
    let expected = reader
        .simple_query(&format!("SELECT {} FROM v ORDER BY id", COLUMNS.join(", ")))
        .await
        .unwrap();

    let info = tributary::source::ConnInfo::parse(&url).unwrap();
    let supported = tributary::source::replication::probe_numeric_as_string(&info)
        .await
        .unwrap();
    assert_eq!(
        supported,
        wal2json_at_least(cluster.install().wal2json.as_deref(), 2, 6)
    );
    for (slot, on) in [(&plain, false), (&as_string, true)] {
        if on && !supported {
            continue; // wal2json before 2.6: nothing to compare.
        }
        let mut stream = replication_client(&url)
            .await
            .start_replication(
                slot,
                Lsn::ZERO,
                numeric_as_string(on),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        let txs = read_transactions(&mut stream, 1).await;
        let inserts: Vec<_> = txs[0].changes().collect();
        assert_eq!(inserts.len(), expected.len());

        for (change, row) in inserts.iter().zip(&expected) {
            assert_eq!(change.kind, ChangeKind::Insert);
            assert_eq!(
                (change.table.schema.as_str(), change.table.name.as_str()),
                ("public", "v")
            );
            assert_eq!(
                change.columns.len(),
                COLUMNS.len(),
                "every column is present on INSERT"
            );
            for (column, want) in COLUMNS.iter().zip(row) {
                let got = change
                    .new_value(column)
                    .unwrap_or_else(|| panic!("{column} missing"));
                let mut got = got.as_text().map(str::to_owned);
                if *column == "c_bytea" {
                    // wal2json writes bytea as bare hex, SELECT with its \x prefix.
                    got = got.map(|hex| format!("\\x{hex}"));
                }
                assert_eq!(
                    &got, want,
                    "row {:?}, column {column} (as string: {on})",
                    row[0]
                );
            }
            // The JSON type is the option's, never the decoder's guess.
            let numeric = change.new_value("c_numeric").unwrap();
            if let Some(text) = numeric.as_text() {
                assert_eq!(
                    matches!(numeric, Value::Number(_)),
                    !on,
                    "numeric {text} with numeric-data-types-as-string {on}"
                );
            }
        }
        assert_eq!(
            inserts[1].new_value("c_numeric").and_then(Value::as_text),
            Some("12345678901234567890.123456789")
        );
    }
}

fn numeric_as_string(on: bool) -> PluginOptions {
    PluginOptions {
        numeric_as_string: on,
        ..PluginOptions::default()
    }
}

/// wal2json before 2.6 writes NaN and ±Infinity in numeric and float columns as JSON null;
/// with `numeric-data-types-as-string` they arrive as text. Pin whichever this server does.
#[tokio::test]
async fn nan_and_infinity_follow_the_servers_wal2json_capability() {
    let cluster = Cluster::start();
    let url = cluster.superuser_url("postgres");
    cluster.psql(
        "postgres",
        "CREATE TABLE f (id int PRIMARY KEY, n numeric, r real, d double precision)",
    );
    let slot = slot("nan");
    let mut repl = replication_client(&url).await;
    repl.create_slot(&slot, false, SnapshotAction::NoExport)
        .await
        .unwrap();
    cluster.psql(
        "postgres",
        "INSERT INTO f VALUES (1, 'NaN', 'Infinity', '-Infinity'), (2, 1.5, NULL, 2.5)",
    );
    let info = tributary::source::ConnInfo::parse(&url).unwrap();
    let supported = tributary::source::replication::probe_numeric_as_string(&info)
        .await
        .unwrap();
    if !supported {
        // The probe's answer is the server's: asking anyway is refused.
        let refused = replication_client(&url)
            .await
            .start_replication(
                &slot,
                Lsn::ZERO,
                numeric_as_string(true),
                Duration::from_secs(1),
            )
            .await
            .err()
            .expect("wal2json without numeric-data-types-as-string rejects it");
        assert_eq!(refused.sqlstate(), Some("22023"), "{refused}");
    }
    let mut stream = repl
        .start_replication(
            &slot,
            Lsn::ZERO,
            numeric_as_string(supported),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let txs = read_transactions(&mut stream, 1).await;
    let rows: Vec<_> = txs[0].changes().collect();
    let text = |row: usize, column: &str| rows[row].new_value(column).unwrap().as_text();
    if stream.numeric_as_string() {
        assert_eq!(text(0, "n"), Some("NaN"));
        assert_eq!(text(0, "r"), Some("Infinity"));
        assert_eq!(text(0, "d"), Some("-Infinity"));
    } else {
        // The documented loss (preflight warns about such columns).
        assert_eq!(text(0, "n"), None);
        assert_eq!(text(0, "r"), None);
        assert_eq!(text(0, "d"), None);
    }
    assert_eq!(text(1, "n"), Some("1.5"));
    assert_eq!(text(1, "r"), None);
    assert_eq!(text(1, "d"), Some("2.5"));
}

#[tokio::test]
async fn each_kind_of_change_arrives_as_made() {
    let cluster = Cluster::start();
    let url = cluster.superuser_url("postgres");
    cluster.psql(
        "postgres",
        "CREATE TABLE k (id int PRIMARY KEY, small text, big text, maybe int);
         ALTER TABLE k ALTER COLUMN big SET STORAGE EXTERNAL;",
    );
    let slot = slot("kinds");
    let mut repl = replication_client(&url).await;
    repl.create_slot(&slot, false, SnapshotAction::NoExport)
        .await
        .unwrap();
    cluster.psql(
        "postgres",
        "INSERT INTO k VALUES (1, 'a', repeat('0123456789', 1000), 5);
         UPDATE k SET small = 'b', maybe = NULL WHERE id = 1;
         UPDATE k SET id = 2 WHERE id = 1;
         DELETE FROM k WHERE id = 2;
         INSERT INTO k VALUES (3, 'c', 'd', 1);
         TRUNCATE k;
         SELECT pg_logical_emit_message(true, 'tributary.test', 'hello ''quoted''');",
    );
    let mut stream = repl
        .start_replication(&slot, Lsn::ZERO, Default::default(), Duration::from_secs(1))
        .await
        .unwrap();
    let txs = read_transactions(&mut stream, 7).await;
    let only_change = |i: usize| {
        let changes: Vec<_> = txs[i].changes().collect();
        assert_eq!(changes.len(), 1, "transaction {i}: {:?}", txs[i].messages);
        changes[0].clone()
    };

    let insert = only_change(0);
    assert_eq!(insert.kind, ChangeKind::Insert);
    assert_eq!(
        insert.new_value("big").unwrap().as_text().unwrap().len(),
        10_000
    );

    // Unchanged TOASTed column: absent. Column set to NULL: present as Null.
    let update = only_change(1);
    assert_eq!(update.kind, ChangeKind::Update);
    assert_eq!(
        update.new_value("big"),
        None,
        "unchanged TOAST value is not present"
    );
    assert_eq!(update.new_value("maybe"), Some(&Value::Null));
    assert_eq!(
        update.new_value("small").and_then(Value::as_text),
        Some("b")
    );

    // Key change: old key in identity, new key in columns.
    let moved = only_change(2);
    assert_eq!(moved.kind, ChangeKind::Update);
    assert_eq!(moved.identity.len(), 1);
    assert_eq!(moved.identity[0].name, "id");
    assert_eq!(moved.identity[0].value.as_text(), Some("1"));
    assert_eq!(moved.new_value("id").and_then(Value::as_text), Some("2"));

    let delete = only_change(3);
    assert_eq!(delete.kind, ChangeKind::Delete);
    assert_eq!(delete.identity[0].value.as_text(), Some("2"));
    assert!(delete.columns.is_empty());

    let truncate = only_change(5);
    assert_eq!(truncate.kind, ChangeKind::Truncate);
    assert_eq!(truncate.table.name, "k");

    let logical: Vec<_> = txs[6]
        .messages
        .iter()
        .filter_map(|m| match m {
            Message::Logical(l) => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(logical.len(), 1);
    assert!(logical[0].transactional);
    assert_eq!(logical[0].prefix, "tributary.test");
    assert_eq!(logical[0].content, "hello 'quoted'");

    // Commits arrive in order, each ending after the one before.
    assert!(txs.windows(2).all(|w| w[0].end_lsn < w[1].end_lsn));
}
