//! Schema drift: a change that no longer fits its replica table, because the source's
//! schema changed and nothing captured it (no capture objects on the source, or DDL run
//! before they were installed).
//!
//! The change itself says what it holds (its column names, in WAL order); the source's
//! catalog says what the table is *now*, which may be later than the change. So only what
//! both agree on is reconciled, and anything ambiguous stops the pipeline with the
//! statement that would fix it:
//!
//! - A column the change has and the replica lacks, and the source has: added, with the
//!   value rows written before it read (`attmissingval`, the ADD COLUMN's default), then
//!   the source's current default and NOT NULL. A column added with a volatile default
//!   rewrote the table, and the old rows' values were never in the WAL: a new snapshot.
//! - A stored column an INSERT lacks and the source no longer has: dropped.
//! - Both at once may be a rename, or a drop and an add: the pipeline stops, naming the
//!   `RENAME COLUMN` to run on the replica if it was a rename.
//! - Column types that differ from the source's are changed with a cast
//!   (`USING col::type`), as the source's plain `ALTER COLUMN … TYPE` would.
//! - A table the source no longer has (dropped, or dropped and re-created under another
//!   name) cannot be reconciled: a new snapshot.

use crate::change::{Change, ChangeKind, TableName};
use crate::pg::{self, quote_ident, quote_literal, quote_table, ConnInfo, PgClient};
use crate::pipeline::PipelineError;
use crate::sink::{ReplicaColumn, ReplicaSink};
use crate::source::catalog::{self, SourceColumn};

/// Brings replica tables in line with the source when a change does not fit.
pub struct Reconciler {
    source: ConnInfo,
    /// Opened on first use: most pipelines never need it.
    client: Option<PgClient>,
    retry_setup: String,
}

impl Reconciler {
    pub fn new(source: ConnInfo, retry_setup: String) -> Reconciler {
        Reconciler {
            source,
            client: None,
            retry_setup,
        }
    }

    /// Alters the replica table of `change` (inside the sink's open transaction) so that the
    /// change fits; returns the statements run.
    pub async fn reconcile(
        &mut self,
        sink: &mut ReplicaSink,
        change: &Change,
    ) -> Result<Vec<String>, PipelineError> {
        let table = &change.table;
        let replica = sink.describe(table).await?.unwrap_or_default();
        let source = match self.source_columns(table).await {
            Ok(columns) => columns,
            Err(e) => {
                // The next attempt connects again.
                self.client = None;
                return Err(e);
            }
        };
        let Some(source) = source else {
            return Err(PipelineError::definite(
                format!(
                    "a change to {table} does not fit the replica table, and the source has no \
                     table {table} any more (dropped, renamed, or dropped and re-created since)"
                ),
                self.retry_setup.clone(),
            ));
        };
        let statements = plan(table, &replica, &source, change).map_err(|why| {
            PipelineError::definite(
                format!("{table} changed on the source in a way tributary cannot reconcile: {why}"),
                self.retry_setup.clone(),
            )
        })?;
        for statement in &statements {
            sink.execute_ddl(statement, &[], &[], "schema drift", Some(change.lsn))
                .await?;
        }
        Ok(statements)
    }

    async fn source_columns(
        &mut self,
        table: &TableName,
    ) -> Result<Option<Vec<SourceColumn>>, PipelineError> {
        if self.client.is_none() {
            self.client = Some(catalog_session(&self.source).await?);
        }
        let client = self.client.as_ref().expect("connected above");
        Ok(catalog::table_columns(client, table).await?)
    }
}

/// A session whose `format_type` qualifies every type outside `pg_catalog`, as the
/// replica's apply session does: type names from both compare as text.
pub async fn catalog_session(server: &ConnInfo) -> Result<PgClient, PipelineError> {
    let client = pg::connect(server).await?;
    client
        .batch_execute("SET search_path = ''")
        .await
        .map_err(|source| catalog::CatalogError::Query {
            what: "setting up a catalog session",
            source,
        })?;
    Ok(client)
}

/// The statements that make `replica` fit `change`, given what `source` has now; or why
/// that cannot be done safely (with the statement to run if the operator knows better).
pub fn plan(
    table: &TableName,
    replica: &[ReplicaColumn],
    source: &[SourceColumn],
    change: &Change,
) -> Result<Vec<String>, String> {
    let target = quote_table(table);
    let in_replica = |name: &str| replica.iter().any(|c| c.name == name);
    let in_source = |name: &str| source.iter().find(|c| c.name == name);
    let mut unknown: Vec<&str> = Vec::new();
    for column in change.columns.iter().chain(&change.identity) {
        if !in_replica(&column.name) && !unknown.contains(&column.name.as_str()) {
            unknown.push(&column.name);
        }
    }
    let absent: Vec<&str> = if change.kind == ChangeKind::Insert {
        replica
            .iter()
            .filter(|c| !c.generated && !change.columns.iter().any(|n| n.name == c.name))
            .map(|c| c.name.as_str())
            .collect()
    } else {
        Vec::new()
    };
    if let ([old], [new]) = (&absent[..], &unknown[..]) {
        if in_source(old).is_none() {
            return Err(format!(
                "column {old:?} is gone and {new:?} is new, which may be a rename; if it was, run \
                 ALTER TABLE {target} RENAME COLUMN {} TO {} in the replica database, then \
                 restart the connector with `tributary connector retry-setup`",
                quote_ident(old),
                quote_ident(new)
            ));
        }
    }
    if !absent.is_empty() && !unknown.is_empty() {
        return Err(format!(
            "columns {absent:?} are gone and {unknown:?} are new (renames, or drops and adds)"
        ));
    }

    let mut statements = Vec::new();
    for name in &absent {
        if in_source(name).is_some() {
            return Err(format!(
                "an INSERT lacks column {name:?}, which the source still has"
            ));
        }
        statements.push(format!(
            "ALTER TABLE {target} DROP COLUMN {}",
            quote_ident(name)
        ));
    }
    for name in &unknown {
        let Some(column) = in_source(name) else {
            return Err(format!(
                "the change has column {name:?}, which the source no longer has (renamed or \
                 dropped again since)"
            ));
        };
        // Without `attmissingval`, rows older than the column either read NULL (added
        // without a default, one set later) or got values from a table rewrite that never
        // reached the WAL (a volatile default such as nextval or gen_random_uuid, whose
        // volatility the catalog does not always record). Only the first is safe to assume,
        // and only when the column has no default at all.
        if column.missing_value.is_none() && column.default.is_some() {
            return Err(format!(
                "column {name:?} has a default ({}) but no value recorded for older rows: it \
                 was added with a volatile default, or the table was rewritten since, and the \
                 values older rows got never reached the WAL",
                column.default.as_deref().unwrap_or("?")
            ));
        }
        let column_sql = quote_ident(name);
        let mut add = format!(
            "ALTER TABLE {target} ADD COLUMN {column_sql} {}",
            column.type_sql
        );
        if let Some(value) = &column.missing_value {
            // Rows written before the column was added read this value on the source.
            add.push_str(&format!(
                " DEFAULT {}::{}",
                quote_literal(value),
                column.type_sql
            ));
            if column.not_null {
                add.push_str(" NOT NULL");
            }
        }
        statements.push(add);
        match (&column.default, &column.missing_value) {
            (Some(default), _) => statements.push(format!(
                "ALTER TABLE {target} ALTER COLUMN {column_sql} SET DEFAULT {default}"
            )),
            (None, Some(_)) => statements.push(format!(
                "ALTER TABLE {target} ALTER COLUMN {column_sql} DROP DEFAULT"
            )),
            (None, None) => {}
        }
    }
    for column in replica {
        if let Some(wanted) = in_source(&column.name) {
            if !wanted.generated && wanted.type_sql != column.type_sql {
                let column_sql = quote_ident(&column.name);
                statements.push(format!(
                    "ALTER TABLE {target} ALTER COLUMN {column_sql} TYPE {ty} USING {column_sql}::{ty}",
                    ty = wanted.type_sql
                ));
            }
        }
    }
    if statements.is_empty() {
        return Err("its columns and the replica's already agree".to_owned());
    }
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Column, Value};
    use crate::types::Lsn;

    fn table() -> TableName {
        TableName {
            schema: "app".into(),
            name: "t".into(),
        }
    }

    fn replica(columns: &[(&str, &str)]) -> Vec<ReplicaColumn> {
        columns
            .iter()
            .map(|(name, ty)| ReplicaColumn {
                name: (*name).into(),
                type_sql: (*ty).into(),
                generated: false,
            })
            .collect()
    }

    fn source(name: &str, ty: &str) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            type_sql: ty.into(),
            not_null: false,
            default: None,
            volatile_default: false,
            missing_value: None,
            generated: false,
        }
    }

    fn insert(columns: &[&str]) -> Change {
        Change {
            kind: ChangeKind::Insert,
            lsn: Lsn::new(0x16),
            table: table(),
            columns: columns
                .iter()
                .map(|name| Column {
                    name: (*name).into(),
                    value: Value::Number("1".into()),
                })
                .collect(),
            identity: Vec::new(),
        }
    }

    #[test]
    fn added_columns_take_the_value_old_rows_read_then_the_current_default() {
        let mut status = source("status", "text");
        status.missing_value = Some("it's open".into());
        status.not_null = true;
        status.default = Some("'new'::text".into());
        let plan = plan(
            &table(),
            &replica(&[("id", "integer")]),
            &[source("id", "integer"), status],
            &insert(&["id", "status"]),
        )
        .unwrap();
        assert_eq!(
            plan,
            [
                r#"ALTER TABLE "app"."t" ADD COLUMN "status" text DEFAULT 'it''s open'::text NOT NULL"#,
                r#"ALTER TABLE "app"."t" ALTER COLUMN "status" SET DEFAULT 'new'::text"#,
            ]
        );
    }

    #[test]
    fn dropped_and_retyped_columns_follow_the_source() {
        let plan = plan(
            &table(),
            &replica(&[("id", "integer"), ("gone", "text"), ("n", "integer")]),
            &[source("id", "integer"), source("n", "bigint")],
            &insert(&["id", "n"]),
        )
        .unwrap();
        assert_eq!(
            plan,
            [
                r#"ALTER TABLE "app"."t" DROP COLUMN "gone""#,
                r#"ALTER TABLE "app"."t" ALTER COLUMN "n" TYPE bigint USING "n"::bigint"#,
            ]
        );
    }

    #[test]
    fn ambiguous_or_lossy_changes_are_refused_with_the_fix() {
        let rename = plan(
            &table(),
            &replica(&[("id", "integer"), ("old", "text")]),
            &[source("id", "integer"), source("new", "text")],
            &insert(&["id", "new"]),
        )
        .unwrap_err();
        assert!(
            rename.contains(r#"RENAME COLUMN "old" TO "new""#),
            "{rename}"
        );
        let mut serial = source("seq", "integer");
        serial.volatile_default = true;
        serial.default = Some("nextval('s'::regclass)".into());
        let volatile = plan(
            &table(),
            &replica(&[("id", "integer")]),
            &[source("id", "integer"), serial],
            &insert(&["id", "seq"]),
        )
        .unwrap_err();
        assert!(volatile.contains("volatile"), "{volatile}");
        let gone = plan(
            &table(),
            &replica(&[("id", "integer")]),
            &[source("id", "integer")],
            &insert(&["id", "later_dropped"]),
        )
        .unwrap_err();
        assert!(gone.contains("no longer has"), "{gone}");
    }
}
