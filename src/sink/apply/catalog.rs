//! The replica's catalog as the pipeline reads it around schema changes (tables without
//! identity, a table's columns), and the source table each replica table is.

use super::ReplicaSink;
use crate::change::TableName;
use crate::sink::error::SinkError;
use crate::sink::replica::setup;
use crate::sink::table::{LoadError, TableMeta};

/// A replica table's column, as [`ReplicaSink::describe`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaColumn {
    pub name: String,
    /// `format_type` with the modifier (`character varying(20)`), qualified unless in
    /// `pg_catalog`.
    pub type_sql: String,
    pub generated: bool,
}

impl ReplicaSink {
    /// Of `tables`, those the replica has (in the open transaction) without a primary key
    /// or replica identity: wal2json drops UPDATEs and DELETEs of such tables on the source.
    pub async fn tables_without_identity(
        &mut self,
        tables: &[TableName],
    ) -> Result<Vec<TableName>, SinkError> {
        self.usable()?;
        self.drain().await?;
        let mut missing = Vec::new();
        for table in tables {
            match TableMeta::load(&self.client, table).await {
                Ok(meta) if !meta.has_usable_identity() => missing.push(table.clone()),
                Ok(_)
                | Err(LoadError::Missing | LoadError::MaterializedView | LoadError::NotATable(_)) =>
                    {}
                Err(LoadError::Sql(e)) => {
                    let error = setup(&self.database, "reading the replica's catalog")(e);
                    return Err(self.earlier_error_or(error).await);
                }
            }
        }
        Ok(missing)
    }

    /// The columns of `table` in the replica (in the open transaction), with their types'
    /// modifiers; `None` when there is no such table.
    pub async fn describe(
        &mut self,
        table: &TableName,
    ) -> Result<Option<Vec<ReplicaColumn>>, SinkError> {
        const SQL: &str = "\
            SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                   a.attgenerated <> '' \
              FROM pg_catalog.pg_class c \
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              LEFT JOIN pg_catalog.pg_attribute a \
                     ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE n.nspname = $1 AND c.relname = $2 \
             ORDER BY a.attnum";
        self.usable()?;
        self.drain().await?;
        let rows = match self.client.query(SQL, &[&table.schema, &table.name]).await {
            Ok(rows) => rows,
            Err(e) => {
                let error = setup(&self.database, "reading the replica's catalog")(e);
                return Err(self.earlier_error_or(error).await);
            }
        };
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            rows.iter()
                .filter_map(|row| {
                    Some(ReplicaColumn {
                        name: row.get::<_, Option<String>>(0)?,
                        type_sql: row.get(1),
                        generated: row.get(2),
                    })
                })
                .collect(),
        ))
    }

    /// Records which source table (by OID) each replica table is, in the open transaction
    /// if there is one: `tables` created, renamed or altered, `dropped` gone.
    pub async fn record_source_tables(
        &mut self,
        tables: &[(TableName, u32)],
        dropped: &[u32],
    ) -> Result<(), SinkError> {
        self.usable()?;
        let result = self.write_source_tables(tables, dropped).await;
        self.note(result)
    }

    async fn write_source_tables(
        &mut self,
        tables: &[(TableName, u32)],
        dropped: &[u32],
    ) -> Result<(), SinkError> {
        self.drain().await?;
        let recording = || setup(&self.database, "recording the source's table OIDs");
        for oid in dropped.iter().chain(tables.iter().map(|(_, oid)| oid)) {
            self.client
                .execute(
                    "DELETE FROM tributary.source_tables WHERE source_oid = $1",
                    &[oid],
                )
                .await
                .map_err(recording())?;
        }
        for (table, oid) in tables {
            self.client
                .execute(
                    "INSERT INTO tributary.source_tables AS t VALUES ($1, $2, $3) \
                     ON CONFLICT (schema_name, table_name) DO UPDATE SET source_oid = $3",
                    &[&table.schema, &table.name, oid],
                )
                .await
                .map_err(recording())?;
        }
        Ok(())
    }
}
