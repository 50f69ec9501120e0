//! What the sink knows about a replica table, read from the replica's own catalog, and the
//! SQL it builds from that knowledge.
//!
//! The catalog is the replica's, not the source's: the statements must fit the table they
//! run against, and a table or column the replica lacks is a schema difference to report,
//! not something to guess around. Everything here is pure except [`TableMeta::load`].
//!
//! # Values and casts
//!
//! Every value is bound as a `text` parameter and cast in SQL to the column's type,
//! `$1::numeric`, which runs the type's input function: the exact inverse of the output
//! function wal2json used on the source. The cast names the type *without* its modifier
//! (`character varying`, not `character varying(20)`): an explicit cast to a modified type
//! silently truncates (`'abcdef'::varchar(3)` is `abc`), while the assignment to the column
//! applies the modifier with an error on overflow. The one exception is `bytea`, which
//! wal2json writes as bare hex without the `\x` prefix: `decode($1, 'hex')`. (A domain over
//! bytea has another type oid and arrives in the usual `\x` form, so it takes the cast.)
//!
//! # Finding the old row
//!
//! UPDATE and DELETE find their row from the change's identity (the old key, or the whole
//! old row under `REPLICA IDENTITY FULL`):
//!
//! - **By key** when the replica table has a primary key (or a replica identity index) and
//!   the identity holds all of its columns: `WHERE "id" = $1::integer`. The key is unique,
//!   so at most one row matches.
//! - **By scan** otherwise (`REPLICA IDENTITY FULL` without a usable key): every identity
//!   column present must match, NULL-safe, and exactly one of the matching rows changes, so
//!   duplicate rows stay duplicates:
//!   `WHERE ctid = (SELECT ctid FROM ONLY t WHERE "a" IS NOT DISTINCT FROM $1::integer … LIMIT 1)`.
//!   Columns whose type has an exact equality (integers, uuid, timestamps, text with a
//!   deterministic collation, …) compare typed, so an index can help; every other column
//!   compares its text form, which is exact for types whose equality is looser than
//!   identity (`1.0 = 1.00`, `-0 = 0`) and works for types with no equality at all (json,
//!   point). The text form must be the type's output function, as wal2json used it, not a
//!   cast to text (`char(5)` casts without its padding, `bool` to `true`, `inet` with a
//!   netmask): `format('%s', x)` calls the output function, and `num_nulls(x) = 1` tells SQL
//!   NULL apart from a composite value whose fields are all NULL (`x IS NULL` does not).
//!   The session uses the walsender's output settings, so both sides come from the same
//!   output function with the same settings.
//!
//! # Columns that cannot simply be written
//!
//! - Generated columns are never written: the replica computes them.
//! - `GENERATED ALWAYS AS IDENTITY` columns need `OVERRIDING SYSTEM VALUE` on INSERT and
//!   cannot be assigned by UPDATE at all. An UPDATE therefore leaves them out of `SET` and
//!   requires the row to hold the new value already (`AND "id" IS NOT DISTINCT FROM $n`):
//!   if the source changed such a column (only `SET id = DEFAULT` can), the row is not
//!   found and the pipeline stops instead of silently keeping the old value.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::change::{ChangeKind, NanPolicy, TableName};
use crate::pg::{quote_ident, quote_table};

/// `bytea`: wal2json writes it as hex without `\x`.
const BYTEA_OID: u32 = 17;

/// Types whose `=` holds exactly when the values are identical, so a typed comparison may
/// stand in for identity: bool, int8, int2, int4, oid, date, time, timestamp, timestamptz,
/// uuid; text and varchar only under a deterministic collation (checked separately).
const EXACT_EQUALITY_OIDS: &[u32] = &[16, 20, 21, 23, 26, 1082, 1083, 1114, 1184, 2950];
const TEXT_OIDS: &[u32] = &[25, 1043];

/// `schema.table` for messages, each part quoted only when it needs it.
pub(crate) fn display_name(table: &TableName) -> String {
    fn part(name: &str) -> String {
        let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if plain {
            name.to_owned()
        } else {
            quote_ident(name)
        }
    }
    format!("{}.{}", part(&table.schema), part(&table.name))
}

/// One column of a replica table.
#[derive(Debug, Clone)]
pub(crate) struct ColumnMeta {
    pub name: String,
    /// The type for casts, without modifier, schema-qualified unless in `pg_catalog`.
    pub type_sql: String,
    pub type_oid: u32,
    /// Generated (stored or virtual): computed by the replica, never written.
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`.
    pub identity_always: bool,
    /// Typed `=` is identity for this column (see [`EXACT_EQUALITY_OIDS`]).
    pub exact_equality: bool,
}

impl ColumnMeta {
    /// The SQL expression turning text parameter `$n` into this column's type.
    fn value_expr(&self, n: usize) -> String {
        self.cast(&format!("${n}"))
    }

    /// The SQL expression turning the text expression `text` into this column's type.
    fn cast(&self, text: &str) -> String {
        if self.type_oid == BYTEA_OID {
            format!("pg_catalog.decode({text}, 'hex')")
        } else {
            format!("{text}::{}", self.type_sql)
        }
    }

    /// NULL-safe "this column holds exactly the value of `$n`" for matching by scan.
    fn same_value_cond(&self, n: usize) -> String {
        let column = quote_ident(&self.name);
        if self.type_oid == BYTEA_OID || self.exact_equality {
            format!("{column} IS NOT DISTINCT FROM {}", self.value_expr(n))
        } else {
            format!(
                "CASE WHEN pg_catalog.num_nulls({column}) = 1 THEN NULL \
                 ELSE pg_catalog.format('%s', {column}) END COLLATE pg_catalog.\"C\" \
                 IS NOT DISTINCT FROM ${n}"
            )
        }
    }
}

/// A table of the replica as the sink needs it.
#[derive(Debug)]
pub(crate) struct TableMeta {
    /// `"schema"."table"`.
    pub sql_name: String,
    /// `schema.table` for messages.
    pub display: Arc<str>,
    /// `ONLY ` for plain tables (UPDATE, DELETE and TRUNCATE must not reach inheritance
    /// children, whose changes arrive on their own); empty for partitioned tables, which
    /// reject `ONLY` in TRUNCATE.
    only: &'static str,
    pub columns: Vec<ColumnMeta>,
    by_name: HashMap<String, u16>,
    /// Columns of the replica identity index under `REPLICA IDENTITY USING INDEX`, else of
    /// the primary key; empty when there is neither.
    key: Vec<u16>,
    /// `relreplident`: d(efault), n(othing), f(ull), i(ndex).
    pub(crate) replica_identity: char,
    pub has_identity_always: bool,
    /// An immediate unique index or exclusion constraint besides the key: a multi-row
    /// UPDATE applies its rows in no particular order and is checked row by row, so a
    /// valid sequence of updates (a swap through a temporary value) could fail. Such
    /// tables get their UPDATEs one statement at a time, in order.
    other_unique: bool,
}

/// Where a statement parameter comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// `change.columns[i]`, the new row.
    New(usize),
    /// `change.identity[i]`, the old key or row.
    Old(usize),
}

/// The statements for one shape of change: its SQL, where each parameter comes from, and
/// what batching needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    pub sql: String,
    pub params: Vec<Source>,
    /// The same change for many rows at once: one `text[]` parameter per entry of
    /// `params`, in the same order (see [`TableMeta::plan`]). `None` when this shape is
    /// not batched.
    pub batch_sql: Option<String>,
    /// UPDATE: the key columns present in the new row, as (index in `change.columns`,
    /// index in `change.identity`). A change whose new key differs moves its row and is not
    /// batched.
    pub key_pairs: Vec<(usize, usize)>,
    /// Entries of `params` that hold the row's key (the old key for UPDATE and DELETE, the
    /// new one for INSERT; empty when incomplete): duplicate keys end a batch, and an error
    /// that quotes a key can be traced to its change.
    pub key_params: Vec<usize>,
}

/// Why no statement can be built for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlanError {
    /// The change names a column the replica table lacks.
    MissingColumn(String),
    /// UPDATE/DELETE whose old row cannot be identified; the reason, for the operator.
    NoRowIdentity(String),
}

/// Why [`TableMeta::load`] found nothing usable.
#[derive(Debug)]
pub(crate) enum LoadError {
    Missing,
    /// Its rows are computed by the replica (`REFRESH`), not written.
    MaterializedView,
    NotATable(&'static str),
    Sql(tokio_postgres::Error),
}

impl TableMeta {
    /// Reads `table` from the catalog of the database `client` is connected to. The
    /// session's `search_path` must be empty, so that `format_type` qualifies every type
    /// outside `pg_catalog`.
    pub(crate) async fn load(client: &Client, table: &TableName) -> Result<TableMeta, LoadError> {
        const SQL: &str = "\
            SELECT c.relkind::text, c.relreplident::text, a.attname::text, \
                   pg_catalog.format_type(a.atttypid, -1), a.atttypid, \
                   a.attgenerated::text <> '', a.attidentity::text = 'a', \
                   coalesce(a.attnum = ANY (k.indkey::int2[]), false), \
                   coalesce(co.collisdeterministic, true), \
                   EXISTS (SELECT FROM pg_catalog.pg_index u \
                           WHERE u.indrelid = c.oid AND (u.indisunique OR u.indisexclusion) \
                             AND u.indimmediate AND u.indexrelid IS DISTINCT FROM k.indexrelid) \
            FROM pg_catalog.pg_class c \
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
            LEFT JOIN pg_catalog.pg_attribute a \
                   ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
            LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
            LEFT JOIN LATERAL ( \
                SELECT i.indkey, i.indexrelid FROM pg_catalog.pg_index i \
                WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident) \
                ORDER BY (c.relreplident = 'i' AND i.indisreplident) DESC, i.indisprimary DESC \
                LIMIT 1) k ON true \
            WHERE n.nspname = $1 AND c.relname = $2 \
            ORDER BY a.attnum";
        let rows = client
            .query(SQL, &[&table.schema, &table.name])
            .await
            .map_err(LoadError::Sql)?;
        let Some(first) = rows.first() else {
            return Err(LoadError::Missing);
        };
        let relkind: String = first.get(0);
        let only = match relkind.as_str() {
            "r" => "ONLY ",
            "p" => "",
            "m" => return Err(LoadError::MaterializedView),
            "v" => return Err(LoadError::NotATable("view")),
            "f" => return Err(LoadError::NotATable("foreign table")),
            "S" => return Err(LoadError::NotATable("sequence")),
            _ => return Err(LoadError::NotATable("relation that is not a table")),
        };
        let replica_identity: String = first.get(1);
        let mut columns = Vec::with_capacity(rows.len());
        let mut key = Vec::new();
        for row in &rows {
            // A table without columns has one row of NULLs from the LEFT JOIN.
            let Some(name) = row.get::<_, Option<String>>(2) else {
                continue;
            };
            let type_oid: u32 = row.get(4);
            let deterministic: bool = row.get(8);
            let exact_equality = EXACT_EQUALITY_OIDS.contains(&type_oid)
                || (TEXT_OIDS.contains(&type_oid) && deterministic);
            if row.get::<_, bool>(7) {
                key.push(columns.len() as u16);
            }
            columns.push(ColumnMeta {
                name,
                type_sql: row.get(3),
                type_oid,
                generated: row.get(5),
                identity_always: row.get(6),
                exact_equality,
            });
        }
        let mut meta = TableMeta::new(
            table,
            only,
            replica_identity.chars().next().unwrap_or('d'),
            columns,
            key,
        );
        meta.other_unique = first.get(9);
        Ok(meta)
    }

    pub(crate) fn new(
        table: &TableName,
        only: &'static str,
        replica_identity: char,
        columns: Vec<ColumnMeta>,
        key: Vec<u16>,
    ) -> TableMeta {
        let by_name = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i as u16))
            .collect();
        TableMeta {
            sql_name: quote_table(table),
            display: display_name(table).into(),
            only,
            has_identity_always: columns.iter().any(|c| c.identity_always),
            columns,
            by_name,
            key,
            replica_identity,
            other_unique: false,
        }
    }

    /// The replica's column index of each named column into `out`, or the first name the
    /// replica lacks. Changes name their columns in the table's order, so the column after
    /// the previous one is tried before the name lookup.
    pub(crate) fn resolve_into<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
        out: &mut Vec<u16>,
    ) -> Result<(), PlanError> {
        out.clear();
        let mut next = 0;
        for name in names {
            let index = match self.columns.get(next) {
                Some(column) if column.name == name => next as u16,
                _ => *self
                    .by_name
                    .get(name)
                    .ok_or_else(|| PlanError::MissingColumn(name.to_owned()))?,
            };
            out.push(index);
            next = usize::from(index) + 1;
        }
        Ok(())
    }

    /// The stored (not generated) columns missing from `present` (column indexes).
    pub(crate) fn absent_from(&self, present: &[u16]) -> Vec<&str> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(i, c)| !c.generated && !present.contains(&(*i as u16)))
            .map(|(_, c)| c.name.as_str())
            .collect()
    }

    /// Whether the source can send UPDATEs and DELETEs of this table (the replica's
    /// definition mirrors the source's): a primary key or identity index, or FULL.
    /// The columns that may hold NaN or ±Infinity (see [`NanPolicy::affects`]).
    pub(crate) fn nan_columns(&self) -> Vec<&str> {
        self.columns
            .iter()
            .filter(|c| NanPolicy::affects(c.type_oid))
            .map(|c| c.name.as_str())
            .collect()
    }

    pub(crate) fn has_usable_identity(&self) -> bool {
        match self.replica_identity {
            'f' => true,
            'n' => false,
            _ => !self.key.is_empty(),
        }
    }

    /// `TRUNCATE` target: `ONLY "s"."t"` (or without ONLY for a partitioned table).
    pub(crate) fn truncate_target(&self) -> String {
        format!("{}{}", self.only, self.sql_name)
    }

    /// The statements for a change of `kind` whose new row holds the columns `new` and
    /// whose identity holds `old` (replica column indexes, in the change's order).
    ///
    /// Batch statements read their rows from one `text[]` parameter per column:
    ///
    /// ```text
    /// INSERT INTO t ("a", "b") SELECT u.c1::integer, u.c2::text
    ///   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(c1, c2)
    /// UPDATE ONLY t AS r SET "b" = u.c1::text
    ///   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) WITH ORDINALITY AS u(c1, c2, ord)
    ///   WHERE r."a" = u.c2::integer RETURNING u.ord
    /// DELETE FROM ONLY t AS r USING ROWS FROM (pg_catalog.unnest($1)) WITH ORDINALITY AS u(c1, ord)
    ///   WHERE r."a" = u.c1::integer RETURNING u.ord
    /// ```
    ///
    /// UPDATE and DELETE are batched only when they find their row by key (and set no
    /// identity column); their batches must not hold a key twice, so each row matches one
    /// target row and `RETURNING u.ord` names any row that found nothing.
    pub(crate) fn plan(
        &self,
        kind: ChangeKind,
        new: &[u16],
        old: &[u16],
    ) -> Result<Planned, PlanError> {
        let planned = match kind {
            ChangeKind::Insert => self.plan_insert(new),
            ChangeKind::Update => self.plan_update(new, old)?,
            ChangeKind::Delete => self.plan_delete(old)?,
            ChangeKind::Truncate => unreachable!("TRUNCATE is grouped, not planned per change"),
        };
        // The sink moves each parameter's value out of the change: no source twice.
        debug_assert!(planned
            .params
            .iter()
            .enumerate()
            .all(|(i, p)| !planned.params[..i].contains(p)));
        Ok(planned)
    }

    fn plan_insert(&self, new: &[u16]) -> Planned {
        let mut names = Vec::new();
        let mut values = Vec::new();
        let mut params = Vec::new();
        let mut overriding = "";
        for (i, &col) in new.iter().enumerate() {
            let column = &self.columns[usize::from(col)];
            if column.generated {
                continue;
            }
            if column.identity_always {
                overriding = " OVERRIDING SYSTEM VALUE";
            }
            params.push(Source::New(i));
            names.push(quote_ident(&column.name));
            values.push(column.value_expr(params.len()));
        }
        if names.is_empty() {
            return Planned {
                sql: format!("INSERT INTO {} DEFAULT VALUES", self.sql_name),
                params,
                batch_sql: None,
                key_pairs: Vec::new(),
                key_params: Vec::new(),
            };
        }
        let sql = format!(
            "INSERT INTO {} ({}){overriding} VALUES ({})",
            self.sql_name,
            names.join(", "),
            values.join(", ")
        );
        let casts: Vec<String> = params
            .iter()
            .enumerate()
            .map(|(j, source)| {
                let Source::New(i) = *source else {
                    unreachable!("INSERT takes the new row only")
                };
                self.columns[usize::from(new[i])].cast(&format!("u.c{}", j + 1))
            })
            .collect();
        let batch_sql = format!(
            "INSERT INTO {} ({}){overriding} SELECT {} FROM {}",
            self.sql_name,
            names.join(", "),
            casts.join(", "),
            rows_from(params.len(), false)
        );
        // The new key, for tracing a duplicate-key error to its row.
        let key_params = self
            .key
            .iter()
            .map(|&k| {
                params.iter().position(|source| match *source {
                    Source::New(i) => new[i] == k,
                    Source::Old(_) => false,
                })
            })
            .collect::<Option<Vec<usize>>>()
            .unwrap_or_default();
        Planned {
            sql,
            params,
            batch_sql: Some(batch_sql),
            key_pairs: Vec::new(),
            key_params,
        }
    }

    fn plan_update(&self, new: &[u16], old: &[u16]) -> Result<Planned, PlanError> {
        let mut params = Vec::new();
        let mut sets = Vec::new();
        let mut guards = Vec::new();
        for (i, &col) in new.iter().enumerate() {
            let column = &self.columns[usize::from(col)];
            if column.generated {
                continue;
            }
            if column.identity_always {
                guards.push(i);
                continue;
            }
            params.push(Source::New(i));
            sets.push(format!(
                "{} = {}",
                quote_ident(&column.name),
                column.value_expr(params.len())
            ));
        }
        let set_count = params.len();
        let mut condition = self.row_condition(old, &mut params)?;
        let key_params = self.key_params(old, &params[set_count..], set_count);
        let batchable =
            !sets.is_empty() && guards.is_empty() && !key_params.is_empty() && !self.other_unique;
        for &i in &guards {
            let column = &self.columns[usize::from(new[i])];
            params.push(Source::New(i));
            write!(
                condition,
                " AND {} IS NOT DISTINCT FROM {}",
                quote_ident(&column.name),
                column.value_expr(params.len())
            )
            .expect("writing to a String");
        }
        let sql = if sets.is_empty() {
            // Nothing to write (every present column is generated or an identity column):
            // still prove that the row exists, or the change would vanish unnoticed.
            format!(
                "SELECT 1 FROM {}{} WHERE {condition}",
                self.only, self.sql_name
            )
        } else {
            format!(
                "UPDATE {}{} SET {} WHERE {condition}",
                self.only,
                self.sql_name,
                sets.join(", ")
            )
        };
        let batch_sql = batchable.then(|| {
            let sets: Vec<String> = params[..set_count]
                .iter()
                .enumerate()
                .map(|(j, source)| {
                    let Source::New(i) = *source else {
                        unreachable!("SET takes the new row")
                    };
                    let column = &self.columns[usize::from(new[i])];
                    format!(
                        "{} = {}",
                        quote_ident(&column.name),
                        column.cast(&format!("u.c{}", j + 1))
                    )
                })
                .collect();
            format!(
                "UPDATE {}{} AS r SET {} FROM {} WHERE {} RETURNING u.ord",
                self.only,
                self.sql_name,
                sets.join(", "),
                rows_from(params.len(), true),
                self.batch_key_condition(old, &params, set_count)
            )
        });
        let key_pairs = self
            .key
            .iter()
            .filter_map(|&k| {
                let in_new = new.iter().position(|&c| c == k)?;
                let in_old = old.iter().position(|&c| c == k)?;
                Some((in_new, in_old))
            })
            .collect();
        Ok(Planned {
            sql,
            params,
            batch_sql,
            key_pairs,
            key_params,
        })
    }

    fn plan_delete(&self, old: &[u16]) -> Result<Planned, PlanError> {
        let mut params = Vec::new();
        let condition = self.row_condition(old, &mut params)?;
        let key_params = self.key_params(old, &params, 0);
        let batch_sql = (!key_params.is_empty()).then(|| {
            format!(
                "DELETE FROM {}{} AS r USING {} WHERE {} RETURNING u.ord",
                self.only,
                self.sql_name,
                rows_from(params.len(), true),
                self.batch_key_condition(old, &params, 0)
            )
        });
        Ok(Planned {
            sql: format!(
                "DELETE FROM {}{} WHERE {condition}",
                self.only, self.sql_name
            ),
            params,
            batch_sql,
            key_pairs: Vec::new(),
            key_params,
        })
    }

    /// When `row_condition` matched by key, the entries of all parameters (`condition`
    /// starts at `offset`) that hold the key; empty when it matched by scan.
    fn key_params(&self, old: &[u16], condition: &[Source], offset: usize) -> Vec<usize> {
        let by_key = !self.key.is_empty()
            && condition.len() == self.key.len()
            && condition
                .iter()
                .zip(&self.key)
                .all(|(source, &k)| matches!(*source, Source::Old(i) if old[i] == k));
        if by_key {
            (offset..offset + condition.len()).collect()
        } else {
            Vec::new()
        }
    }

    /// `r."k" = u.c3::integer AND …` for the key parameters, which follow the SET ones.
    fn batch_key_condition(&self, old: &[u16], params: &[Source], offset: usize) -> String {
        params[offset..]
            .iter()
            .enumerate()
            .map(|(j, source)| {
                let Source::Old(i) = *source else {
                    unreachable!("the key comes from the identity")
                };
                let column = &self.columns[usize::from(old[i])];
                format!(
                    "r.{} = {}",
                    quote_ident(&column.name),
                    column.cast(&format!("u.c{}", offset + j + 1))
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The WHERE condition selecting exactly one row from the identity columns `old`,
    /// appending its parameters to `params`. See the module docs.
    fn row_condition(&self, old: &[u16], params: &mut Vec<Source>) -> Result<String, PlanError> {
        let position = |col: u16| old.iter().position(|&c| c == col);
        let key_present = !self.key.is_empty() && self.key.iter().all(|&k| position(k).is_some());
        if key_present {
            let mut conds = Vec::with_capacity(self.key.len());
            for &k in &self.key {
                let column = &self.columns[usize::from(k)];
                params.push(Source::Old(position(k).expect("checked above")));
                conds.push(format!(
                    "{} = {}",
                    quote_ident(&column.name),
                    column.value_expr(params.len())
                ));
            }
            return Ok(conds.join(" AND "));
        }
        if !self.key.is_empty() && self.replica_identity != 'f' {
            let missing: Vec<&str> = self
                .key
                .iter()
                .filter(|&&k| position(k).is_none())
                .map(|&k| self.columns[usize::from(k)].name.as_str())
                .collect();
            return Err(PlanError::NoRowIdentity(format!(
                "the change's old key lacks the key column(s) {missing:?} of the replica table"
            )));
        }
        let mut conds = Vec::with_capacity(old.len());
        for (i, &col) in old.iter().enumerate() {
            let column = &self.columns[usize::from(col)];
            if column.generated {
                // Computed from the other columns: it adds nothing to the match.
                continue;
            }
            params.push(Source::Old(i));
            conds.push(column.same_value_cond(params.len()));
        }
        if conds.is_empty() {
            return Err(PlanError::NoRowIdentity(
                "the change carries no old key or row values (the table has no primary key \
                 and no replica identity on the source?)"
                    .to_owned(),
            ));
        }
        Ok(format!(
            "ctid = (SELECT ctid FROM {}{} WHERE {} LIMIT 1)",
            self.only,
            self.sql_name,
            conds.join(" AND ")
        ))
    }
}

/// `ROWS FROM (pg_catalog.unnest($1), …) [WITH ORDINALITY] AS u(c1, …[, ord])`: the rows
/// of a batch, one `text[]` parameter per column. (`unnest($1, $2)` with several arrays is
/// special syntax for the same thing that only exists unqualified.)
fn rows_from(columns: usize, ordinality: bool) -> String {
    let unnests: Vec<String> = (1..=columns)
        .map(|n| format!("pg_catalog.unnest(${n})"))
        .collect();
    let mut names: Vec<String> = (1..=columns).map(|n| format!("c{n}")).collect();
    if ordinality {
        names.push("ord".to_owned());
    }
    format!(
        "ROWS FROM ({}){} AS u({})",
        unnests.join(", "),
        if ordinality { " WITH ORDINALITY" } else { "" },
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, type_sql: &str, type_oid: u32) -> ColumnMeta {
        ColumnMeta {
            name: name.to_owned(),
            type_sql: type_sql.to_owned(),
            type_oid,
            generated: false,
            identity_always: false,
            exact_equality: EXACT_EQUALITY_OIDS.contains(&type_oid),
        }
    }

    fn table(name: &str) -> TableName {
        TableName {
            schema: "public".to_owned(),
            name: name.to_owned(),
        }
    }

    fn keyed() -> TableMeta {
        TableMeta::new(
            &table("t"),
            "ONLY ",
            'd',
            vec![
                column("id", "integer", 23),
                column("b", "bytea", 17),
                column("n", "numeric", 1700),
            ],
            vec![0],
        )
    }

    #[test]
    fn identifiers_are_quoted_whatever_they_hold() {
        assert_eq!(quote_ident("plain"), r#""plain""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_ident("Dot. Space é"), r#""Dot. Space é""#);
        let odd = TableName {
            schema: "My Schema".to_owned(),
            name: r#"t"x"#.to_owned(),
        };
        assert_eq!(quote_table(&odd), r#""My Schema"."t""x""#);
        assert_eq!(display_name(&odd), r#""My Schema"."t""x""#);
        assert_eq!(display_name(&table("orders_2")), "public.orders_2");
    }

    #[test]
    fn insert_casts_every_value_and_decodes_bytea() {
        let planned = keyed().plan(ChangeKind::Insert, &[0, 1, 2], &[]).unwrap();
        assert_eq!(
            planned.sql,
            r#"INSERT INTO "public"."t" ("id", "b", "n") VALUES ($1::integer, pg_catalog.decode($2, 'hex'), $3::numeric)"#
        );
        assert_eq!(
            planned.params,
            [Source::New(0), Source::New(1), Source::New(2)]
        );
        assert_eq!(
            planned.batch_sql.unwrap(),
            "INSERT INTO \"public\".\"t\" (\"id\", \"b\", \"n\") SELECT u.c1::integer, \
             pg_catalog.decode(u.c2, 'hex'), u.c3::numeric FROM ROWS FROM (pg_catalog.unnest($1), \
             pg_catalog.unnest($2), pg_catalog.unnest($3)) AS u(c1, c2, c3)"
        );
        assert_eq!(planned.key_params, [0]);
    }

    #[test]
    fn update_sets_present_columns_and_matches_the_old_key() {
        // Column "b" absent (unchanged TOAST), key in the identity.
        let planned = keyed().plan(ChangeKind::Update, &[0, 2], &[0]).unwrap();
        assert_eq!(
            planned.sql,
            r#"UPDATE ONLY "public"."t" SET "id" = $1::integer, "n" = $2::numeric WHERE "id" = $3::integer"#
        );
        assert_eq!(
            planned.params,
            [Source::New(0), Source::New(1), Source::Old(0)]
        );
        assert_eq!(
            planned.batch_sql.unwrap(),
            "UPDATE ONLY \"public\".\"t\" AS r SET \"id\" = u.c1::integer, \"n\" = u.c2::numeric \
             FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) \
             WITH ORDINALITY AS u(c1, c2, c3, ord) WHERE r.\"id\" = u.c3::integer RETURNING u.ord"
        );
        assert_eq!(planned.key_pairs, [(0, 0)]);
        assert_eq!(planned.key_params, [2]);
        let delete = keyed().plan(ChangeKind::Delete, &[], &[0]).unwrap();
        assert_eq!(
            delete.batch_sql.unwrap(),
            "DELETE FROM ONLY \"public\".\"t\" AS r USING ROWS FROM (pg_catalog.unnest($1)) \
             WITH ORDINALITY AS u(c1, ord) WHERE r.\"id\" = u.c1::integer RETURNING u.ord"
        );
    }

    #[test]
    fn a_missing_key_column_is_refused_unless_the_identity_is_full() {
        let err = keyed().plan(ChangeKind::Delete, &[], &[2]).unwrap_err();
        assert!(
            matches!(err, PlanError::NoRowIdentity(ref r) if r.contains("\"id\"")),
            "{err:?}"
        );
    }

    #[test]
    fn full_identity_without_key_changes_one_of_the_matching_rows() {
        let mut full = keyed();
        full.key.clear();
        full.replica_identity = 'f';
        let planned = full.plan(ChangeKind::Delete, &[], &[0, 1, 2]).unwrap();
        assert_eq!(
            planned.sql,
            "DELETE FROM ONLY \"public\".\"t\" WHERE ctid = (SELECT ctid FROM ONLY \"public\".\"t\" WHERE \
             \"id\" IS NOT DISTINCT FROM $1::integer AND \
             \"b\" IS NOT DISTINCT FROM pg_catalog.decode($2, 'hex') AND \
             CASE WHEN pg_catalog.num_nulls(\"n\") = 1 THEN NULL \
             ELSE pg_catalog.format('%s', \"n\") END COLLATE pg_catalog.\"C\" \
             IS NOT DISTINCT FROM $3 LIMIT 1)"
        );
        assert_eq!(planned.batch_sql, None, "scans are not batched");
        assert!(planned.key_params.is_empty());
    }

    #[test]
    fn generated_and_identity_always_columns_are_never_assigned() {
        let mut columns = vec![column("id", "bigint", 20), column("v", "integer", 23)];
        columns[0].identity_always = true;
        let mut g = column("g", "integer", 23);
        g.generated = true;
        columns.push(g);
        let meta = TableMeta::new(&table("g"), "ONLY ", 'd', columns, vec![0]);
        let insert = meta.plan(ChangeKind::Insert, &[0, 1, 2], &[]).unwrap();
        assert_eq!(
            insert.sql,
            r#"INSERT INTO "public"."g" ("id", "v") OVERRIDING SYSTEM VALUE VALUES ($1::bigint, $2::integer)"#
        );
        let update = meta.plan(ChangeKind::Update, &[0, 1, 2], &[0]).unwrap();
        assert_eq!(
            update.sql,
            r#"UPDATE ONLY "public"."g" SET "v" = $1::integer WHERE "id" = $2::bigint AND "id" IS NOT DISTINCT FROM $3::bigint"#
        );
        assert_eq!(
            update.params,
            [Source::New(1), Source::Old(0), Source::New(0)]
        );
        assert_eq!(update.batch_sql, None, "identity columns need their guard");
        let only_key = meta.plan(ChangeKind::Update, &[0, 2], &[0]).unwrap();
        assert!(
            only_key.sql.starts_with("SELECT 1 FROM ONLY"),
            "{}",
            only_key.sql
        );
    }

    #[test]
    fn unknown_columns_are_reported_by_name() {
        let mut out = Vec::new();
        keyed()
            .resolve_into(["id", "n"].into_iter(), &mut out)
            .unwrap();
        assert_eq!(out, [0, 2]);
        keyed()
            .resolve_into(["n", "id"].into_iter(), &mut out)
            .unwrap();
        assert_eq!(out, [2, 0]);
        let err = keyed()
            .resolve_into(["id", "gone"].into_iter(), &mut out)
            .unwrap_err();
        assert_eq!(err, PlanError::MissingColumn("gone".to_owned()));
    }
}
