//! TRUNCATE: the records of one source TRUNCATE sent together as one statement.

use std::sync::Arc;

use super::queue::{Op, Outcome, Request};
use super::{ReplicaSink, ROW_BYTES};
use crate::change::Change;
use crate::sink::error::SinkError;
use crate::sink::table::TableMeta;
use crate::types::Lsn;

pub(super) struct TruncateGroup {
    pub(super) lsn: Option<Lsn>,
    pub(super) tables: Vec<Arc<TableMeta>>,
}

impl ReplicaSink {
    /// Adds a TRUNCATE record to the group of its source TRUNCATE (same LSN, consecutive),
    /// sending the previous group if this one starts a new one. Tables truncated together
    /// on the source must be truncated together here: foreign keys between them forbid
    /// anything else.
    pub(super) async fn truncate(&mut self, change: &Change) -> Result<(), SinkError> {
        let table = self.table(&change.table, Some(change.lsn)).await?;
        let meta = Arc::clone(&self.tables[table].meta);
        if let Some(group) = &mut self.truncate {
            if group.lsn == Some(change.lsn) {
                if !group.tables.iter().any(|t| Arc::ptr_eq(t, &meta)) {
                    group.tables.push(meta);
                }
                return Ok(());
            }
        }
        self.flush_truncate().await?;
        // Everything before the TRUNCATE goes first.
        self.flush_batches().await?;
        self.truncate = Some(TruncateGroup {
            lsn: Some(change.lsn),
            tables: vec![meta],
        });
        Ok(())
    }

    pub(super) async fn flush_truncate(&mut self) -> Result<(), SinkError> {
        let Some(group) = self.truncate.take() else {
            return Ok(());
        };
        let targets: Vec<String> = group.tables.iter().map(|t| t.truncate_target()).collect();
        let names: Vec<&str> = group.tables.iter().map(|t| &*t.display).collect();
        let sql = format!("TRUNCATE {}", targets.join(", "));
        let client = Arc::clone(&self.client);
        let bytes = ROW_BYTES + sql.len();
        let request: Request =
            Box::pin(async move { client.batch_execute(&sql).await.map(|()| Outcome::Rows(0)) });
        let op = Op::Truncate {
            tables: names.join(", "),
            lsn: group.lsn,
        };
        self.push(request, op, bytes).await
    }
}
