//! What the source's catalog says about the tables a connector replicates.
//!
//! Read these inside a transaction on the slot's exported snapshot
//! (`BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '…'`), so that the
//! list is the one the snapshot copies. Sizes are estimates from the moment of the call:
//! they plan the copy, nothing relies on them being exact.

use std::collections::{HashMap, HashSet};
use std::fmt;

use tokio_postgres::Client;

use super::identity::{self, FACTS_SQL};
pub use super::identity::{Missing, ReplicaIdentity};
use crate::change::TableName;
use crate::pg::retry::{self, ErrorKind, NextStep};

/// One table whose rows the snapshot copies and the stream keeps in sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTable {
    pub name: TableName,
    pub identity: ReplicaIdentity,
    /// The stored (non-generated) columns in `attnum` order: the column list of the COPY.
    /// The replica computes generated columns itself.
    pub columns: Vec<String>,
    /// `pg_relation_size`: the heap's size on disk, without TOAST and indexes.
    pub estimated_bytes: u64,
    /// Heap pages (`pg_relation_size / block_size`): the unit of ctid ranges.
    pub pages: u64,
    /// Whether `COPY … (FORMAT binary)` can carry the table to another server safely.
    /// Composite values and arrays name their column or element type OIDs in binary
    /// form, and types created after `initdb` (enums, domains, extension types) have
    /// other OIDs on the replica: older servers reject the mismatch ("wrong element
    /// type"); recent releases (15.18 accepts it) only check built-in OIDs. Types without
    /// binary I/O functions cannot go binary at all. Object references (`regclass`, …)
    /// are raw OIDs in binary form, naming other objects on the replica, and an empty
    /// `tsquery` has a binary form no server reads back. Such tables are copied as text,
    /// which every version reads back exactly (see [`TextReason`]).
    pub binary_copy: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "reading the source's catalog ({what}): {}",
        crate::pg::error_message(source)
    )]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl CatalogError {
    /// Retry or stop ([`crate::pg::retry`]): a lost connection or a restarting server may
    /// pass; a query the server rejects is rejected again.
    pub fn kind(&self) -> ErrorKind {
        let CatalogError::Query { source, .. } = self;
        ErrorKind::of(retry::postgres(source), NextStep::FixCause)
    }
}

/// The first OID handed to user objects (`FirstNormalObjectId`): types below it are built
/// in and have the same OID on every server of every version.
const FIRST_NORMAL_OID: u32 = 16384;

/// Tables are ordinary, permanent (`relkind 'r'`, `relpersistence 'p'`): leaf partitions
/// are included, partitioned parents, views, foreign tables, temporary and unlogged tables
/// are not (unlogged tables write no WAL, so no change of theirs could ever be streamed).
fn tables_sql() -> String {
    format!(
        "
SELECT n.nspname,
       c.relname,
       {FACTS_SQL},
       pg_catalog.pg_relation_size(c.oid) AS bytes,
       pg_catalog.pg_relation_size(c.oid)
         / pg_catalog.current_setting('block_size')::int8 AS pages,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attgenerated = ''
              ORDER BY a.attnum) AS columns,
       ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                AND a.attgenerated = ''
              ORDER BY a.attnum) AS column_types,
       ARRAY(SELECT an.nspname::text
               FROM pg_catalog.pg_partition_ancestors(c.oid) WITH ORDINALITY p(relid, o)
               JOIN pg_catalog.pg_class ac ON ac.oid = p.relid
               JOIN pg_catalog.pg_namespace an ON an.oid = ac.relnamespace
              WHERE p.relid <> c.oid ORDER BY p.o) AS ancestor_schemas,
       ARRAY(SELECT ac.relname::text
               FROM pg_catalog.pg_partition_ancestors(c.oid) WITH ORDINALITY p(relid, o)
               JOIN pg_catalog.pg_class ac ON ac.oid = p.relid
              WHERE p.relid <> c.oid ORDER BY p.o) AS ancestor_names
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND n.nspname = ANY($1)
 ORDER BY n.nspname, c.relname"
    )
}

/// The unlogged tables of `schemas` (leaf or not partitioned): the snapshot restores their
/// definitions but no rows, since no change of theirs is ever in the WAL.
pub async fn unlogged_tables(
    client: &Client,
    schemas: &[String],
) -> Result<Vec<TableName>, CatalogError> {
    const SQL: &str = "
        SELECT n.nspname::text, c.relname::text
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND c.relpersistence = 'u' AND n.nspname = ANY($1)
         ORDER BY 1, 2";
    relation_names(client, SQL, &[&schemas], "the unlogged tables").await
}

/// The `(schema, name)` rows of `sql` as table names.
async fn relation_names(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &'static str,
) -> Result<Vec<TableName>, CatalogError> {
    let rows = client
        .query(sql, params)
        .await
        .map_err(|source| CatalogError::Query { what, source })?;
    Ok(rows
        .iter()
        .map(|row| TableName {
            schema: row.get(0),
            name: row.get(1),
        })
        .collect())
}

/// The OID of every table in `schemas` (ordinary and partitioned): a table dropped and
/// re-created under the same name has another.
pub async fn table_oids(
    client: &Client,
    schemas: &[String],
) -> Result<Vec<(TableName, u32)>, CatalogError> {
    const SQL: &str = "
        SELECT n.nspname::text, c.relname::text, c.oid
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1)";
    let rows = client
        .query(SQL, &[&schemas])
        .await
        .map_err(|source| CatalogError::Query {
            what: "the tables' OIDs",
            source,
        })?;
    Ok(rows
        .iter()
        .map(|row| {
            let name = TableName {
                schema: row.get(0),
                name: row.get(1),
            };
            (name, row.get(2))
        })
        .collect())
}

/// The materialized views of `schemas`; with `populated`, only those that hold data on
/// the source (`REFRESH`ed, not `WITH NO DATA`).
pub async fn materialized_views(
    client: &Client,
    schemas: &[String],
    populated: bool,
) -> Result<Vec<TableName>, CatalogError> {
    const SQL: &str = "
        SELECT n.nspname::text, c.relname::text
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'm' AND (c.relispopulated OR NOT $2) AND n.nspname = ANY($1)
         ORDER BY c.oid";
    relation_names(
        client,
        SQL,
        &[&schemas, &populated],
        "the materialized views",
    )
    .await
}

/// Every column's type (`format_type` with the modifier) of the tables in `schemas`, as
/// `(table, column, type)`. Works on any server; the session's `search_path` must be empty
/// for types outside `pg_catalog` to come out qualified.
pub async fn column_types(
    client: &Client,
    schemas: &[String],
) -> Result<Vec<(TableName, String, String)>, CatalogError> {
    const SQL: &str = "
        SELECT n.nspname::text, c.relname::text, a.attname::text,
               pg_catalog.format_type(a.atttypid, a.atttypmod)
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_catalog.pg_attribute a
            ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1)";
    let rows = client
        .query(SQL, &[&schemas])
        .await
        .map_err(|source| CatalogError::Query {
            what: "the tables' column types",
            source,
        })?;
    Ok(rows
        .iter()
        .map(|row| {
            let table = TableName {
                schema: row.get(0),
                name: row.get(1),
            };
            (table, row.get(2), row.get(3))
        })
        .collect())
}

/// One column of a source table as it is now, for bringing a replica table in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    pub name: String,
    /// `format_type` with the modifier, qualified unless in `pg_catalog`.
    pub type_sql: String,
    pub not_null: bool,
    /// The default expression, `pg_get_expr` of it.
    pub default: Option<String>,
    /// Whether the default calls a volatile function (`nextval`, `random`, …).
    pub volatile_default: bool,
    /// The value rows written before the column was added read (`attmissingval`), as text:
    /// set when it was added with a non-volatile default and the table not rewritten since.
    pub missing_value: Option<String>,
    pub generated: bool,
}

/// The live columns of `table` in `attnum` order; `None` when there is no such table.
/// The session's `search_path` must be empty, so that `format_type` qualifies names.
pub async fn table_columns(
    client: &Client,
    table: &TableName,
) -> Result<Option<Vec<SourceColumn>>, CatalogError> {
    const SQL: &str = "
        SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_catalog.pg_get_expr(d.adbin, d.adrelid),
               coalesce((SELECT bool_or(p.provolatile = 'v') FROM pg_catalog.pg_depend dep
                          JOIN pg_catalog.pg_proc p ON p.oid = dep.refobjid
                         WHERE dep.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                           AND dep.objid = d.oid
                           AND dep.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass), false),
               CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END,
               a.attgenerated <> ''
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_catalog.pg_attribute a
                 ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
         ORDER BY a.attnum";
    let rows = client
        .query(SQL, &[&table.schema, &table.name])
        .await
        .map_err(|source| CatalogError::Query {
            what: "a table's columns",
            source,
        })?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.iter()
            // A table without columns has one row of NULLs from the LEFT JOIN.
            .filter_map(|row| {
                Some(SourceColumn {
                    name: row.get::<_, Option<String>>(0)?,
                    type_sql: row.get(1),
                    not_null: row.get(2),
                    default: row.get(3),
                    volatile_default: row.get(4),
                    missing_value: row.get(5),
                    generated: row.get(6),
                })
            })
            .collect(),
    ))
}

/// Every type the given types are built from: domains' base types and arrays' elements,
/// transitively. `UNION` (not `ALL`) ends the recursion once no new type appears.
const TYPES: &str = "
WITH RECURSIVE closure(oid) AS (
    SELECT unnest($1::oid[])
    UNION
    SELECT x.oid FROM closure
      JOIN pg_catalog.pg_type t ON t.oid = closure.oid
     CROSS JOIN LATERAL (VALUES (t.typbasetype), (t.typelem)) x(oid)
     WHERE x.oid <> 0
)
SELECT t.oid, t.typtype::text, t.typbasetype, t.typelem,
       t.typlen = -1 AND t.typelem <> 0 AS is_array,
       t.typsend <> 0 AND t.typreceive <> 0 AS binary_io
  FROM closure JOIN pg_catalog.pg_type t ON t.oid = closure.oid";

/// Ordinary tables and leaf partitions in `schemas` (not partitioned parents, views or
/// foreign tables), minus `exclude`. Excluding a partitioned table excludes its partitions.
/// Sorted by schema and name.
pub async fn list_tables(
    client: &Client,
    schemas: &[String],
    exclude: &[TableName],
) -> Result<Vec<SourceTable>, CatalogError> {
    let rows = client
        .query(&tables_sql(), &[&schemas])
        .await
        .map_err(|source| CatalogError::Query {
            what: "tables",
            source,
        })?;
    let excluded: HashSet<&TableName> = exclude.iter().collect();

    let mut tables = Vec::with_capacity(rows.len());
    let mut column_types: Vec<Vec<u32>> = Vec::with_capacity(rows.len());
    for row in &rows {
        let name = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        let ancestor_schemas: Vec<String> = row.get(10);
        let ancestor_names: Vec<String> = row.get(11);
        let ancestor_excluded = ancestor_schemas
            .into_iter()
            .zip(ancestor_names)
            .any(|(schema, name)| excluded.contains(&TableName { schema, name }));
        if excluded.contains(&name) || ancestor_excluded {
            continue;
        }
        let identity = identity::classify(
            row.get::<_, String>(2).as_str(),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        let size = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        tables.push(SourceTable {
            name,
            identity,
            columns: row.get(8),
            estimated_bytes: size(6),
            pages: size(7),
            binary_copy: true,
        });
        column_types.push(row.get(9));
    }

    let all_types: Vec<u32> = column_types
        .iter()
        .flatten()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let types = client
        .query(TYPES, &[&all_types])
        .await
        .map_err(|source| CatalogError::Query {
            what: "column types",
            source,
        })?
        .iter()
        .map(|row| {
            let info = TypeInfo {
                kind: row.get::<_, String>(1).bytes().next().unwrap_or(b'b'),
                base: row.get(2),
                element: row.get(3),
                is_array: row.get(4),
                binary_io: row.get(5),
            };
            (row.get::<_, u32>(0), info)
        })
        .collect::<HashMap<_, _>>();
    for (table, oids) in tables.iter_mut().zip(&column_types) {
        let text = table
            .columns
            .iter()
            .zip(oids)
            .find_map(|(column, &oid)| Some((column, text_reason(&types, oid, 0)?)));
        if let Some((column, reason)) = text {
            tracing::debug!(table = %table.name, column = %column, "copied as text: {reason}");
            table.binary_copy = false;
        }
    }
    Ok(tables)
}

/// A foreign key of a table in the selected schemas. One whose referenced table is not
/// replicated (excluded, or outside the selected schemas) cannot be restored on the replica
/// and is left out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// `pg_constraint.oid`: how pg_dump's table of contents names the constraint.
    pub oid: u32,
    pub name: String,
    pub table: TableName,
    pub references: TableName,
}

impl ForeignKey {
    /// Whether restoring it needs a table that the replica will not have.
    pub fn dangles(&self, schemas: &[String], excluded: &[TableName]) -> bool {
        !excluded.contains(&self.table)
            && (excluded.contains(&self.references) || !schemas.contains(&self.references.schema))
    }
}

/// The foreign keys declared on tables of `schemas` (an SQL expression of type `text[]`),
/// without the copies partitions inherit from their parent's. Columns: oid, name, table
/// schema and name, referenced schema and name.
pub fn foreign_keys_query(schemas: &str) -> String {
    format!(
        "SELECT k.oid, k.conname::text, n.nspname::text, c.relname::text,
                rn.nspname::text, r.relname::text
           FROM pg_catalog.pg_constraint k
           JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_class r ON r.oid = k.confrelid
           JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
          WHERE k.contype = 'f' AND k.conparentid = 0 AND n.nspname = ANY ({schemas})
          ORDER BY 3, 4, 2"
    )
}

pub async fn foreign_keys(
    client: &Client,
    schemas: &[String],
) -> Result<Vec<ForeignKey>, CatalogError> {
    let rows = client
        .query(&foreign_keys_query("$1::text[]"), &[&schemas])
        .await
        .map_err(|source| CatalogError::Query {
            what: "foreign keys",
            source,
        })?;
    Ok(rows
        .iter()
        .map(|row| ForeignKey {
            oid: row.get(0),
            name: row.get(1),
            table: TableName {
                schema: row.get(2),
                name: row.get(3),
            },
            references: TableName {
                schema: row.get(4),
                name: row.get(5),
            },
        })
        .collect())
}

/// The parts of `pg_type` that decide whether a value's binary form travels.
#[derive(Debug, Clone, Copy)]
struct TypeInfo {
    /// `typtype`: b base, c composite, d domain, e enum, p pseudo, r range, m multirange.
    kind: u8,
    base: u32,
    element: u32,
    is_array: bool,
    binary_io: bool,
}

/// Why values of a type are copied as text rather than binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextReason {
    /// No binary send or receive function (or a type the catalog did not describe).
    NoBinaryIo,
    /// A composite's binary form names its columns' type OIDs.
    Composite,
    /// An array's binary form names its element type's OID, which differs on the replica
    /// for types created after `initdb`.
    ArrayOfCreatedType,
    /// `regclass`, `regtype`, …: binary sends the raw OID, which names another object (or
    /// none) on the replica; text names the object.
    ObjectReference,
    /// `tsquery`: an empty query (`to_tsquery('english', 'the')`) is sent in a binary form
    /// that the receiving side rejects ("malformed tsquery").
    NoBinaryRoundTrip,
}

impl fmt::Display for TextReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextReason::NoBinaryIo => "its type has no binary form",
            TextReason::Composite => "a composite's binary form names type OIDs",
            TextReason::ArrayOfCreatedType => "the binary form names the element type's OID",
            TextReason::ObjectReference => "a reg* type's binary form is the source's raw OID",
            TextReason::NoBinaryRoundTrip => "an empty tsquery's binary form is not read back",
        })
    }
}

/// Built-in types whose values are OIDs of other objects: `regproc`, `regprocedure`,
/// `regoper`, `regoperator`, `regclass`, `regtype`, `regconfig`, `regdictionary`,
/// `regnamespace`, `regrole`, `regcollation`. Built-in OIDs are the same on every server.
const OBJECT_REFERENCE_TYPES: [u32; 11] = [
    24, 2202, 2203, 2204, 2205, 2206, 3734, 3769, 4089, 4096, 4191,
];
/// `tsquery`.
const TSQUERY: u32 = 3615;

/// Why values of type `oid` must go as text; `None` when their binary form means the same
/// on another server. See [`SourceTable::binary_copy`].
fn text_reason(types: &HashMap<u32, TypeInfo>, oid: u32, depth: u32) -> Option<TextReason> {
    let Some(info) = types.get(&oid) else {
        return Some(TextReason::NoBinaryIo); // Unknown: be safe.
    };
    if !info.binary_io || depth > 16 {
        return Some(TextReason::NoBinaryIo);
    }
    if OBJECT_REFERENCE_TYPES.contains(&oid) {
        return Some(TextReason::ObjectReference);
    }
    if oid == TSQUERY {
        return Some(TextReason::NoBinaryRoundTrip);
    }
    match info.kind {
        b'd' => text_reason(types, info.base, depth + 1),
        b'c' => Some(TextReason::Composite),
        _ if info.is_array => text_reason(types, info.element, depth + 1)
            .or((info.element >= FIRST_NORMAL_OID).then_some(TextReason::ArrayOfCreatedType)),
        _ => None,
    }
}

/// The identity `table` has on the source now; `None` when there is no such table.
pub async fn replica_identity(
    client: &Client,
    table: &TableName,
) -> Result<Option<ReplicaIdentity>, CatalogError> {
    let sql = format!(
        "SELECT {FACTS_SQL}
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'r'"
    );
    let row = client
        .query_opt(&sql, &[&table.schema, &table.name])
        .await
        .map_err(|source| CatalogError::Query {
            what: "a table's replica identity",
            source,
        })?;
    Ok(row.map(|row| {
        identity::classify(
            row.get::<_, String>(0).as_str(),
            row.get(1),
            row.get(2),
            row.get(3),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(kind: u8, base: u32, element: u32, is_array: bool) -> TypeInfo {
        TypeInfo {
            kind,
            base,
            element,
            is_array,
            binary_io: true,
        }
    }

    #[test]
    fn text_copy_follows_domains_and_arrays() {
        use TextReason::*;
        let mut types = HashMap::new();
        types.insert(23, ty(b'b', 0, 0, false)); // int4
        types.insert(1007, ty(b'b', 0, 23, true)); // int4[]
        types.insert(2205, ty(b'b', 0, 0, false)); // regclass
        types.insert(2210, ty(b'b', 0, 2205, true)); // regclass[]
        types.insert(4096, ty(b'b', 0, 0, false)); // regrole
        types.insert(3734, ty(b'b', 0, 0, false)); // regconfig
        types.insert(3615, ty(b'b', 0, 0, false)); // tsquery
        types.insert(3645, ty(b'b', 0, 3615, true)); // tsquery[]
        types.insert(3614, ty(b'b', 0, 0, false)); // tsvector
        types.insert(20000, ty(b'e', 0, 0, false)); // an enum
        types.insert(20001, ty(b'b', 0, 20000, true)); // its array
        types.insert(20002, ty(b'd', 1007, 0, false)); // domain over int4[]
        types.insert(20003, ty(b'd', 20001, 0, false)); // domain over enum[]
        types.insert(20004, ty(b'c', 0, 0, false)); // a composite
        types.insert(20005, ty(b'b', 0, 0, false)); // extension base type
        let mut no_io = ty(b'b', 0, 0, false);
        no_io.binary_io = false;
        types.insert(20006, no_io);
        types.insert(20007, ty(b'd', 2205, 0, false)); // domain over regclass
        types.insert(20008, ty(b'd', 3615, 0, false)); // domain over tsquery

        for (oid, reason) in [
            (23, None),
            (1007, None),
            (3614, None),
            (20000, None),
            (20002, None),
            (20005, None),
            (2205, Some(ObjectReference)),
            (2210, Some(ObjectReference)),
            (4096, Some(ObjectReference)),
            (3734, Some(ObjectReference)),
            (20007, Some(ObjectReference)),
            (3615, Some(NoBinaryRoundTrip)),
            (3645, Some(NoBinaryRoundTrip)),
            (20008, Some(NoBinaryRoundTrip)),
            (20001, Some(ArrayOfCreatedType)),
            (20003, Some(ArrayOfCreatedType)),
            (20004, Some(Composite)),
            (20006, Some(NoBinaryIo)),
            (99999, Some(NoBinaryIo)),
        ] {
            assert_eq!(text_reason(&types, oid, 0), reason, "type {oid}");
        }
    }
}
