//! What verify asks each server, and how it reads the answers: pure functions.
//!
//! A table is cut into ranges of its key (primary key, else replica identity index) whose
//! boundaries are sampled from the source; each range is summarized on both servers as a
//! row count and the sum of a 64-bit hash of every row's text. The sum does not depend on
//! the order of rows, so the servers may read them in any order; a range that differs is
//! then read row by row (key and hash) on both, and the rows compared by key.

use std::collections::BTreeMap;

use crate::pg::{quote_ident, quote_literal};
use crate::types::TableName;

/// Rows per range, about: small enough that reading a differing range row by row is
/// cheap, large enough that the per-query cost is nothing next to the scan.
pub const RANGE_ROWS: f64 = 50_000.0;

/// Ranges per table, at most.
const MAX_RANGES: usize = 1024;

/// Sampled keys per boundary: boundaries every this many sampled keys.
const SAMPLES_PER_BOUNDARY: usize = 8;

/// Session settings under which both servers print every value the same way: the hash is
/// of the row's text.
/// No timeout ends them either: the source's sessions stay in their snapshot's transaction
/// from before the cut to the end of the comparison (`transaction_timeout` exists from 17).
pub const SESSION_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; \
     SET lc_monetary = 'C'; SET statement_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; \
     SELECT pg_catalog.set_config('transaction_timeout', '0', false) \
     WHERE pg_catalog.current_setting('server_version_num')::int >= 170000";

/// A table as the source has it: every column, and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub table: TableName,
    /// Every column, by name, in the source's order: the replica's may differ.
    pub columns: Vec<String>,
    /// The key's columns and their types; empty for a table without one (REPLICA
    /// IDENTITY FULL), which is one range, and whose rows are told apart by content.
    pub key: Vec<(String, String)>,
}

/// Key values, as text, one per key column.
pub type Key = Vec<String>;

/// A range of a table's key: from `from` (inclusive) to `to` (exclusive); `None` is
/// unbounded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    pub from: Option<Key>,
    pub to: Option<Key>,
}

/// Pages sampled at least: page sampling of a few pages is too uneven to cut by.
const MIN_SAMPLED_PAGES: f64 = 32.0;

/// How many ranges a table of about `rows` rows in `pages` pages is cut into, and the
/// share of its pages to sample for the boundaries (a percentage for `TABLESAMPLE
/// SYSTEM`); `None` for one range and no sample.
pub fn sampling(rows: f64, pages: f64, keyed: bool) -> Option<(usize, f64)> {
    if !keyed || rows <= 2.0 * RANGE_ROWS {
        return None;
    }
    let ranges = ((rows / RANGE_ROWS).ceil() as usize).min(MAX_RANGES);
    let wanted = (ranges * SAMPLES_PER_BOUNDARY) as f64;
    // Twice the keys wanted, and enough pages: page sampling is uneven.
    let share = (2.0 * wanted / rows).max(MIN_SAMPLED_PAGES / pages.max(1.0));
    Some((ranges, (100.0 * share).min(100.0)))
}

/// The ranges that `sample` (sorted keys) cuts a table into: a boundary every few keys,
/// repeated ones once. Every key falls into exactly one range.
pub fn ranges(sample: &[Key], wanted: usize) -> Vec<Range> {
    let step = (sample.len() / wanted.max(1)).max(1);
    let mut bounds: Vec<&Key> = Vec::new();
    for key in sample.iter().skip(step).step_by(step) {
        if bounds.last() != Some(&key) {
            bounds.push(key);
        }
    }
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut from = None;
    for bound in bounds {
        out.push(Range {
            from: from.take(),
            to: Some(bound.clone()),
        });
        from = Some(bound.clone());
    }
    out.push(Range { from, to: None });
    out
}

fn target(table: &TableName) -> String {
    format!(
        "ONLY {}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// `ROW(a, b, …)::text`: a row's text, columns by name.
fn row_text(columns: &[String]) -> String {
    let columns: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!("ROW({})::text", columns.join(", "))
}

/// The key's text, or the whole row's for a table without a key.
fn key_text(shape: &Shape) -> String {
    if shape.key.is_empty() {
        return row_text(&shape.columns);
    }
    let parts: Vec<String> = shape
        .key
        .iter()
        .map(|(column, _)| format!("{}::text", quote_ident(column)))
        .collect();
    format!("ARRAY[{}]", parts.join(", "))
}

/// `WHERE …` for `range`, its bounds as parameters cast from text to the key's types.
fn predicate(shape: &Shape, range: &Range) -> (String, Vec<String>) {
    let columns: Vec<String> = shape.key.iter().map(|(c, _)| quote_ident(c)).collect();
    let columns = format!("({})", columns.join(", "));
    let mut params = Vec::new();
    let mut clauses = Vec::new();
    for (bound, op) in [(&range.from, ">="), (&range.to, "<")] {
        let Some(values) = bound else { continue };
        let casts: Vec<String> = values
            .iter()
            .zip(&shape.key)
            .map(|(value, (_, ty))| {
                params.push(value.clone());
                format!("${}::text::{ty}", params.len())
            })
            .collect();
        // ROW(…) for one column too: a one-element row compares as the value does.
        clauses.push(format!("ROW{columns} {op} ROW({})", casts.join(", ")));
    }
    if clauses.is_empty() {
        (String::new(), params)
    } else {
        (format!(" WHERE {}", clauses.join(" AND ")), params)
    }
}

/// The row count and hash sum of `range`: `(count int8, sum text)`.
pub fn summary_sql(shape: &Shape, range: &Range) -> (String, Vec<String>) {
    let (predicate, params) = predicate(shape, range);
    let sql = format!(
        "SELECT count(*)::int8, coalesce(sum(pg_catalog.hashtextextended({}, 0)), 0)::text \
         FROM {}{predicate}",
        row_text(&shape.columns),
        target(&shape.table)
    );
    (sql, params)
}

/// Every row of `range`: `(key text, hash int8)`.
pub fn rows_sql(shape: &Shape, range: &Range) -> (String, Vec<String>) {
    let (predicate, params) = predicate(shape, range);
    let sql = format!(
        "SELECT {}::text, pg_catalog.hashtextextended({}, 0) FROM {}{predicate}",
        key_text(shape),
        row_text(&shape.columns),
        target(&shape.table)
    );
    (sql, params)
}

/// A sample of the table's keys, sorted: `(key text[])`.
pub fn sample_sql(shape: &Shape, percent: f64) -> String {
    let columns: Vec<String> = shape.key.iter().map(|(c, _)| quote_ident(c)).collect();
    let texts: Vec<String> = columns.iter().map(|c| format!("{c}::text")).collect();
    format!(
        "SELECT ARRAY[{}] FROM {} TABLESAMPLE SYSTEM ({percent}) ORDER BY {}",
        texts.join(", "),
        target(&shape.table),
        columns.join(", ")
    )
}

/// The table's columns and key (primary key first, else the replica identity index):
/// `(column name, key position or NULL, key type)` in column order; `$1` is the table.
pub fn shape_sql() -> &'static str {
    "SELECT a.attname::text, k.n::int4,
            pg_catalog.format_type(a.atttypid, a.atttypmod)
     FROM pg_catalog.pg_attribute a
     LEFT JOIN LATERAL (
         SELECT s.n
         FROM (SELECT i.indkey, i.indnkeyatts FROM pg_catalog.pg_index i
               WHERE i.indrelid = a.attrelid AND (i.indisprimary OR i.indisreplident)
               ORDER BY i.indisprimary DESC LIMIT 1) i,
              unnest(i.indkey) WITH ORDINALITY s(attnum, n)
         -- An index's INCLUDE columns are not part of its key.
         WHERE s.attnum = a.attnum AND s.n <= i.indnkeyatts) k ON true
     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attnum"
}

/// The table's estimated rows (the planner's, else from its size) and pages.
pub fn estimate_sql() -> &'static str {
    "SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::float8
                 ELSE pg_catalog.pg_relation_size(c.oid)::float8 / 100 END,
            pg_catalog.pg_relation_size(c.oid)::float8 / current_setting('block_size')::float8
     FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass"
}

/// The permanent tables (leaf partitions included, partitioned parents not) of the schemas
/// in `$1`: those a connector replicates, unless a decision leaves one out.
pub fn tables_sql() -> &'static str {
    "SELECT n.nspname::text, c.relname::text
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND n.nspname = ANY($1)
     ORDER BY 1, 2"
}

/// Whether the table exists: `$1` is [`regclass`].
pub fn exists_sql() -> &'static str {
    "SELECT pg_catalog.to_regclass($1) IS NOT NULL"
}

/// The table of `tables` that `given` names: `schema.name`, or a name alone that one
/// table has.
pub fn named(tables: &[TableName], given: &str) -> Option<TableName> {
    if let Some(table) = tables.iter().find(|t| t.to_string() == given) {
        return Some(table.clone());
    }
    let mut by_name = tables.iter().filter(|t| t.name == given);
    match (by_name.next(), by_name.next()) {
        (Some(table), None) => Some(table.clone()),
        _ => None,
    }
}

/// The table as `regclass` text, for `$1` of [`shape_sql`] and [`estimate_sql`].
pub fn regclass(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

/// Builds a [`Shape`] from [`shape_sql`]'s rows.
pub fn shape(table: TableName, rows: Vec<(String, Option<i32>, String)>) -> Shape {
    let mut key: Vec<(i32, String, String)> = Vec::new();
    let mut columns = Vec::with_capacity(rows.len());
    for (column, position, ty) in rows {
        if let Some(position) = position {
            key.push((position, column.clone(), ty));
        }
        columns.push(column);
    }
    key.sort();
    Shape {
        table,
        columns,
        key: key.into_iter().map(|(_, c, t)| (c, t)).collect(),
    }
}

/// How one row differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    /// In the source, not in the replica.
    Missing,
    /// In the replica, not in the source.
    Extra,
    /// In both, with other values.
    Changed,
    /// In the replica more often than in the source.
    Duplicated,
}

impl RowKind {
    pub fn describe(self) -> &'static str {
        match self {
            RowKind::Missing => "missing from the replica",
            RowKind::Extra => "in the replica only",
            RowKind::Changed => "different values",
            RowKind::Duplicated => "more often in the replica than in the source",
        }
    }
}

/// One key whose rows differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowDifference {
    /// The key's values as text (`{…}`), or the row's text for a table without a key.
    pub key: String,
    pub kind: RowKind,
}

/// Compares rows `(key, hash)` of the same key ranges read from both servers. Rows are
/// matched by key, whatever range each server placed them in (two servers with other
/// collations may order text keys differently); a key with the same hashes on both is
/// equal.
pub fn diff_rows(source: Vec<(String, i64)>, replica: Vec<(String, i64)>) -> Vec<RowDifference> {
    let mut by_key: BTreeMap<String, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
    for (key, hash) in source {
        by_key.entry(key).or_default().0.push(hash);
    }
    for (key, hash) in replica {
        by_key.entry(key).or_default().1.push(hash);
    }
    let mut out = Vec::new();
    for (key, (mut source, mut replica)) in by_key {
        source.sort_unstable();
        replica.sort_unstable();
        let kind = if source == replica {
            continue;
        } else if replica.is_empty() {
            RowKind::Missing
        } else if source.is_empty() {
            RowKind::Extra
        } else if replica.len() > source.len() && contains_all(&replica, &source) {
            let mut distinct = replica.clone();
            distinct.dedup();
            let mut wanted = source.clone();
            wanted.dedup();
            if distinct == wanted {
                RowKind::Duplicated
            } else {
                RowKind::Changed
            }
        } else if source.len() > replica.len() && contains_all(&source, &replica) {
            RowKind::Missing
        } else {
            RowKind::Changed
        };
        out.push(RowDifference { key, kind });
    }
    out
}

/// Whether sorted `all` holds every element of sorted `part`, as many times.
fn contains_all(all: &[i64], part: &[i64]) -> bool {
    let mut rest = all.iter();
    part.iter().all(|p| rest.any(|a| a == p))
}

/// A literal for messages: a key's text quoted as SQL would.
pub fn show_key(key: &str) -> String {
    const LIMIT: usize = 200;
    if key.len() <= LIMIT {
        return quote_literal(key);
    }
    let mut end = LIMIT;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", quote_literal(&key[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(values: &[i32]) -> Vec<Key> {
        values.iter().map(|v| vec![v.to_string()]).collect()
    }

    fn shape(key: &[(&str, &str)]) -> Shape {
        Shape {
            table: TableName {
                schema: "public".into(),
                name: "Order Lines".into(),
            },
            columns: vec!["id".into(), "note".into()],
            key: key
                .iter()
                .map(|(c, t)| (c.to_string(), t.to_string()))
                .collect(),
        }
    }

    #[test]
    fn small_or_keyless_tables_are_one_range() {
        assert_eq!(sampling(0.0, 0.0, true), None);
        assert_eq!(sampling(100_000.0, 1_000.0, true), None);
        assert_eq!(sampling(10_000_000.0, 100_000.0, false), None);
        // pgbench scale 50: 100 ranges from twice 800 keys, about 0.03% of the pages.
        let (ranges, percent) = sampling(5_000_000.0, 82_000.0, true).unwrap();
        assert_eq!(ranges, 100);
        assert!((percent - 0.04).abs() < 0.001, "{percent}");
        assert_eq!(sampling(1e12, 1e10, true).unwrap().0, MAX_RANGES);
        // A table of a few pages is sampled from 32 at least, or whole.
        let (ranges, percent) = sampling(240_000.0, 1_700.0, true).unwrap();
        assert_eq!(ranges, 5);
        assert!((percent - 100.0 * 32.0 / 1_700.0).abs() < 1e-9, "{percent}");
        assert_eq!(sampling(240_000.0, 10.0, true).unwrap().1, 100.0);
    }

    #[test]
    fn ranges_cover_every_key_once() {
        for (sample, wanted, expected) in [
            (keys(&[]), 4, vec![(None, None)]),
            (keys(&[5]), 4, vec![(None, None)]),
            (
                keys(&[1, 2, 3, 4]),
                2,
                vec![(None, Some(3)), (Some(3), None)],
            ),
            (
                keys(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
                3,
                vec![(None, Some(4)), (Some(4), Some(7)), (Some(7), None)],
            ),
            // Repeated keys make one boundary.
            (
                keys(&[1, 2, 2, 2, 2, 3]),
                3,
                vec![(None, Some(2)), (Some(2), None)],
            ),
        ] {
            let got = ranges(&sample, wanted);
            let want: Vec<Range> = expected
                .into_iter()
                .map(|(from, to): (Option<i32>, Option<i32>)| Range {
                    from: from.map(|v| vec![v.to_string()]),
                    to: to.map(|v| vec![v.to_string()]),
                })
                .collect();
            assert_eq!(got, want, "sample {sample:?} into {wanted}");
        }
    }

    #[test]
    fn queries_quote_names_and_pass_bounds_as_parameters() {
        let one = shape(&[("id", "bigint")]);
        let range = Range {
            from: Some(vec!["10".into()]),
            to: Some(vec!["20".into()]),
        };
        let (sql, params) = summary_sql(&one, &range);
        assert_eq!(
            sql,
            "SELECT count(*)::int8, coalesce(sum(pg_catalog.hashtextextended(\
             ROW(\"id\", \"note\")::text, 0)), 0)::text FROM ONLY \"public\".\"Order Lines\" \
             WHERE ROW(\"id\") >= ROW($1::text::bigint) AND ROW(\"id\") < ROW($2::text::bigint)"
        );
        assert_eq!(params, ["10", "20"]);
        let two = shape(&[("id", "integer"), ("note", "text")]);
        let (sql, params) = rows_sql(
            &two,
            &Range {
                from: None,
                to: Some(vec!["3".into(), "x'y".into()]),
            },
        );
        assert_eq!(
            sql,
            "SELECT ARRAY[\"id\"::text, \"note\"::text]::text, pg_catalog.hashtextextended(\
             ROW(\"id\", \"note\")::text, 0) FROM ONLY \"public\".\"Order Lines\" \
             WHERE ROW(\"id\", \"note\") < ROW($1::text::integer, $2::text::text)"
        );
        assert_eq!(params, ["3", "x'y"]);
        let keyless = shape(&[]);
        let (sql, params) = rows_sql(&keyless, &Range::default());
        assert!(
            sql.starts_with("SELECT ROW(\"id\", \"note\")::text::text,"),
            "{sql}"
        );
        assert!(!sql.contains("WHERE") && params.is_empty());
        assert_eq!(
            sample_sql(&two, 0.5),
            "SELECT ARRAY[\"id\"::text, \"note\"::text] FROM ONLY \"public\".\"Order Lines\" \
             TABLESAMPLE SYSTEM (0.5) ORDER BY \"id\", \"note\""
        );
    }

    #[test]
    fn the_key_comes_in_index_order() {
        let rows = vec![
            ("b".to_owned(), Some(2), "text".to_owned()),
            ("a".to_owned(), None, "integer".to_owned()),
            ("c".to_owned(), Some(1), "uuid".to_owned()),
        ];
        let table = TableName {
            schema: "s".into(),
            name: "t".into(),
        };
        let got = super::shape(table, rows);
        assert_eq!(got.columns, ["b", "a", "c"]);
        assert_eq!(
            got.key,
            [("c".into(), "uuid".into()), ("b".into(), "text".into())]
        );
    }

    #[test]
    fn rows_are_matched_by_key() {
        let row = |k: &str, h: i64| (k.to_owned(), h);
        let diff =
            |source: Vec<(String, i64)>, replica: Vec<(String, i64)>| -> Vec<(String, RowKind)> {
                diff_rows(source, replica)
                    .into_iter()
                    .map(|d| (d.key, d.kind))
                    .collect()
            };
        // Equal, in another order (another range on the other server, say).
        assert_eq!(
            diff(
                vec![row("1", 7), row("2", 8)],
                vec![row("2", 8), row("1", 7)]
            ),
            []
        );
        for (source, replica, expected) in [
            (vec![row("1", 7)], vec![], RowKind::Missing),
            (vec![], vec![row("1", 7)], RowKind::Extra),
            (vec![row("1", 7)], vec![row("1", 9)], RowKind::Changed),
            (
                vec![row("1", 7)],
                vec![row("1", 7), row("1", 7)],
                RowKind::Duplicated,
            ),
            (
                vec![row("1", 7), row("1", 7)],
                vec![row("1", 7)],
                RowKind::Missing,
            ),
            (
                vec![row("1", 7)],
                vec![row("1", 7), row("1", 9)],
                RowKind::Changed,
            ),
        ] {
            let label = format!("{source:?} vs {replica:?}");
            assert_eq!(
                diff(source, replica),
                [("1".to_owned(), expected)],
                "{label}"
            );
        }
        assert_eq!(
            diff(
                vec![row("1", 1), row("2", 2), row("3", 3)],
                vec![row("1", 1), row("2", 5), row("4", 4)]
            ),
            [
                ("2".to_owned(), RowKind::Changed),
                ("3".to_owned(), RowKind::Missing),
                ("4".to_owned(), RowKind::Extra)
            ]
        );
    }

    #[test]
    fn tables_are_named_with_or_without_their_schema() {
        let table = |schema: &str, name: &str| TableName {
            schema: schema.into(),
            name: name.into(),
        };
        let tables = [
            table("public", "a"),
            table("sales", "a"),
            table("sales", "b"),
        ];
        for (given, expected) in [
            ("sales.a", Some(table("sales", "a"))),
            ("b", Some(table("sales", "b"))),
            ("a", None), // two schemas have it
            ("c", None),
            ("public.b", None),
        ] {
            assert_eq!(named(&tables, given), expected, "{given}");
        }
    }

    #[test]
    fn long_keys_are_cut_for_messages() {
        assert_eq!(show_key("{1}"), "'{1}'");
        let long = "é".repeat(300);
        let shown = show_key(&long);
        assert!(shown.ends_with('…') && shown.len() < 210, "{shown}");
    }
}
