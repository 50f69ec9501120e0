//! The replica's relations a change can be for, each table's metadata loaded on first use
//! and forgotten at a schema change.

use std::collections::HashMap;
use std::sync::Arc;

use super::batch::Batch;
use super::shapes::{Shape, ShapeKey};
use super::ReplicaSink;
use crate::change::{NanPolicy, TableName};
use crate::sink::error::SinkError;
use crate::sink::replica::setup;
use crate::sink::table::{display_name, LoadError, TableMeta};
use crate::types::Lsn;

pub(super) struct TableEntry {
    pub(super) name: TableName,
    pub(super) meta: Arc<TableMeta>,
    pub(super) shapes: HashMap<ShapeKey, Arc<Shape>>,
    /// The shape of the previous change to this table.
    pub(super) last_shape: Option<Arc<Shape>>,
    pub(super) open: Option<Batch>,
}

/// What a change's relation is on the replica.
pub(super) enum Relation {
    Table(usize),
    /// Its rows are the replica's to compute.
    MaterializedView,
    /// Not (yet) there: `CREATE MATERIALIZED VIEW` writes its rows before the command's
    /// capture message creates it on the replica.
    Missing,
}

impl ReplicaSink {
    /// The index of the table in `self.tables`, loading its metadata on first use.
    pub(super) async fn table(
        &mut self,
        name: &TableName,
        lsn: Option<Lsn>,
    ) -> Result<usize, SinkError> {
        match self.relation(name, lsn).await? {
            Relation::Table(index) => Ok(index),
            Relation::MaterializedView => Err(SinkError::NotATable {
                table: display_name(name),
                what: "materialized view",
                lsn,
                database: self.database.clone(),
            }),
            Relation::Missing => Err(self.missing(name, lsn)),
        }
    }

    pub(super) fn missing(&self, name: &TableName, lsn: Option<Lsn>) -> SinkError {
        SinkError::MissingTable {
            table: display_name(name),
            lsn,
            database: self.database.clone(),
        }
    }

    /// What the change's relation is, loading a table's metadata on first use.
    pub(super) async fn relation(
        &mut self,
        name: &TableName,
        lsn: Option<Lsn>,
    ) -> Result<Relation, SinkError> {
        if let Some(index) = self.last_table {
            if self.tables[index].name == *name {
                return Ok(Relation::Table(index));
            }
        }
        if let Some(&index) = self.table_index.get(name) {
            self.last_table = Some(index);
            return Ok(Relation::Table(index));
        }
        if self.materialized_views.contains(name) {
            return Ok(Relation::MaterializedView);
        }
        if self.missing.contains(name) {
            return Ok(Relation::Missing);
        }
        // tokio-postgres stops reading the socket while an earlier reply waits unread, so a
        // new request must not be awaited with replies in flight.
        self.drain().await?;
        let meta = match TableMeta::load(&self.client, name).await {
            Ok(meta) if self.nan == NanPolicy::Refuse && !meta.nan_columns().is_empty() => {
                return Err(SinkError::NanAsNull {
                    table: display_name(name),
                    columns: meta.nan_columns().join(", "),
                    lsn,
                });
            }
            Ok(meta) => meta,
            Err(LoadError::MaterializedView) => {
                self.materialized_views.insert(name.clone());
                return Ok(Relation::MaterializedView);
            }
            Err(LoadError::Missing) => {
                self.missing.insert(name.clone());
                return Ok(Relation::Missing);
            }
            Err(LoadError::NotATable(what)) => {
                return Err(SinkError::NotATable {
                    table: display_name(name),
                    what,
                    lsn,
                    database: self.database.clone(),
                })
            }
            Err(LoadError::Sql(e)) => {
                let error = setup(&self.database, "reading the replica's catalog")(e);
                return Err(self.earlier_error_or(error).await);
            }
        };
        let index = self.tables.len();
        self.tables.push(TableEntry {
            name: name.clone(),
            meta: Arc::new(meta),
            shapes: HashMap::new(),
            last_shape: None,
            open: None,
        });
        self.table_index.insert(name.clone(), index);
        self.last_table = Some(index);
        Ok(Relation::Table(index))
    }

    /// Forgets every table's definition and statements (after a schema change).
    pub(super) fn forget_tables(&mut self) {
        debug_assert!(self.open_batches.is_empty() && self.in_flight.is_empty());
        self.tables.clear();
        self.table_index.clear();
        self.materialized_views.clear();
        self.missing.clear();
        self.refreshed = None;
        self.last_table = None;
    }
}
