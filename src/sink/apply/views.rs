//! Relations the replica computes instead of writing: materialized views, populated after
//! a snapshot and refreshed where the source refreshed its own; and changes whose relation
//! a command of their own transaction creates only after them (`CREATE MATERIALIZED VIEW`
//! writes its rows first), held until it does or the transaction fails.

use std::sync::Arc;

use super::queue::{Op, Outcome, Request};
use super::tables::Relation;
use super::{ReplicaSink, ROW_BYTES};
use crate::change::TableName;
use crate::pg::quote_table;
use crate::sink::error::SinkError;
use crate::sink::table::display_name;
use crate::types::Lsn;

impl ReplicaSink {
    /// Computes the replica's materialized `views` (a snapshot restores them empty: a
    /// materialized view cannot be loaded, only refreshed), outside any target transaction.
    /// One may read another, so each round refreshes what it can until all are done.
    pub async fn populate_materialized_views(
        &mut self,
        views: &[TableName],
    ) -> Result<(), SinkError> {
        if self.in_transaction() {
            return Err(SinkError::Misuse(
                "materialized views are populated outside a target transaction",
            ));
        }
        // A view created on the source during the copy is not in the replica's schema.
        let mut left = Vec::new();
        for view in views {
            if let Relation::MaterializedView = self.relation(view, None).await? {
                left.push(view);
            }
        }
        while !left.is_empty() {
            let mut failed = Vec::new();
            for view in &left {
                let sql = format!("REFRESH MATERIALIZED VIEW {}", quote_table(view));
                if let Err(source) = self.client.batch_execute(&sql).await {
                    failed.push((*view, source));
                }
            }
            if failed.len() == left.len() {
                let (view, source) = failed.swap_remove(0);
                return Err(SinkError::Refresh {
                    view: display_name(view),
                    lsn: None,
                    source,
                });
            }
            left = failed.into_iter().map(|(view, _)| view).collect();
        }
        Ok(())
    }

    /// After a `CREATE MATERIALIZED VIEW`: forgets the unplaced changes of relations that
    /// are materialized views now, whose rows the command computed.
    pub(super) async fn place_unplaced(&mut self) -> Result<(), SinkError> {
        let mut left = Vec::new();
        for (table, lsn) in std::mem::take(&mut self.unplaced) {
            match self.relation(&table, lsn).await? {
                Relation::MaterializedView => {}
                Relation::Table(_) | Relation::Missing => left.push((table, lsn)),
            }
        }
        self.unplaced = left;
        Ok(())
    }

    /// The error for changes that found no relation by the end of their transaction.
    pub(super) async fn check_placed(&mut self) -> Result<(), SinkError> {
        let Some((table, lsn)) = self.unplaced.first().cloned() else {
            return Ok(());
        };
        self.drain().await?;
        Err(match self.relation(&table, lsn).await? {
            Relation::Missing => self.missing(&table, lsn),
            _ => SinkError::Unplaced {
                table: display_name(&table),
                lsn,
            },
        })
    }

    /// A change to a materialized view: the source refreshed it (`CONCURRENTLY` writes its
    /// difference as row changes). The replica refreshes its own at the same place, from
    /// tables that are then exactly as the source's were, once for the run of changes.
    pub(super) async fn refresh(
        &mut self,
        view: &TableName,
        lsn: Option<Lsn>,
    ) -> Result<(), SinkError> {
        if self.refreshed.as_ref() == Some(view) {
            return Ok(());
        }
        // Everything before the refresh goes first: the view is computed from it.
        self.flush_truncate().await?;
        self.flush_batches().await?;
        let sql = format!("REFRESH MATERIALIZED VIEW {}", quote_table(view));
        let client = Arc::clone(&self.client);
        let bytes = ROW_BYTES + sql.len();
        let request: Request =
            Box::pin(async move { client.batch_execute(&sql).await.map(|()| Outcome::Rows(0)) });
        let op = Op::Refresh {
            view: display_name(view),
            lsn,
        };
        self.push(request, op, bytes).await?;
        self.refreshed = Some(view.clone());
        Ok(())
    }
}
