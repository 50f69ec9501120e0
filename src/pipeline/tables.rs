//! The tables of a new snapshot: listed inside its exported snapshot, split by the
//! operator's replica identity decisions as `plan.rs` decides, and recorded.

use super::plan::{self, Excluded, Why};
use super::PipelineError;
use crate::bookkeeping::{Bookkeeping, Connector, TableDecision};
use crate::change::TableName;
use crate::pg::{self, ConnInfo, PgClient};
use crate::source::catalog;
use crate::types::FencingToken;

/// The tables of a snapshot, as seen in it.
pub(super) struct SnapshotTables {
    /// Copied.
    pub tables: Vec<catalog::SourceTable>,
    /// Left out by a decision.
    pub excluded: Vec<(TableName, TableDecision)>,
}

/// Lists the tables in the exported snapshot `snapshot_name` (so that the list matches the
/// rows copied), splits them by the operator's decisions (`plan::split_tables`) and
/// records the split; unlogged tables are recorded as such (definitions without rows).
pub(super) async fn snapshot_tables(
    (bookkeeping, connector, lease): (&Bookkeeping, &Connector, FencingToken),
    source: &ConnInfo,
    snapshot_name: &str,
) -> Result<SnapshotTables, PipelineError> {
    let source_sql = open_snapshot(source, snapshot_name).await?;
    let listed = catalog::list_tables(&source_sql, &connector.schemas, &[]).await?;
    let unlogged = catalog::unlogged_tables(&source_sql, &connector.schemas).await?;
    drop(source_sql);
    let decisions = bookkeeping.table_decisions(connector.id).await?;
    let (tables, excluded) = apply_decisions(listed, &decisions);
    let names: Vec<TableName> = tables.iter().map(|t| t.name.clone()).collect();
    bookkeeping
        .set_snapshot_tables(connector.id, lease, &names)
        .await?;
    bookkeeping
        .set_excluded_tables(connector.id, lease, &excluded, &unlogged)
        .await?;
    if !unlogged.is_empty() {
        let names: Vec<String> = unlogged.iter().map(ToString::to_string).collect();
        tracing::warn!(
            tables = %names.join(", "),
            "unlogged tables are not replicated (their changes are not in the WAL): the \
             replica gets their definitions without rows"
        );
    }
    Ok(SnapshotTables { tables, excluded })
}

/// The tables of `schemas` as the exported snapshot `snapshot_name` sees them.
pub(super) async fn list_in_snapshot(
    source: &ConnInfo,
    snapshot_name: &str,
    schemas: &[String],
) -> Result<Vec<catalog::SourceTable>, PipelineError> {
    let source_sql = open_snapshot(source, snapshot_name).await?;
    Ok(catalog::list_tables(&source_sql, schemas, &[]).await?)
}

/// A source session in a transaction on the exported snapshot `snapshot_name`.
async fn open_snapshot(source: &ConnInfo, snapshot_name: &str) -> Result<PgClient, PipelineError> {
    let source_sql = pg::connect(source).await?;
    source_sql
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            pg::quote_literal(snapshot_name)
        ))
        .await
        .map_err(|source| catalog::CatalogError::Query {
            what: "opening a transaction on the exported snapshot",
            source,
        })?;
    Ok(source_sql)
}

/// Splits the snapshot's tables as the plan decides ([`plan::split_tables`]), saying so
/// in the log.
fn apply_decisions(
    listed: Vec<catalog::SourceTable>,
    decisions: &[(TableName, TableDecision)],
) -> (Vec<catalog::SourceTable>, Vec<(TableName, TableDecision)>) {
    let identities: Vec<(TableName, bool)> = listed
        .iter()
        .map(|t| (t.name.clone(), t.identity.is_usable()))
        .collect();
    let split = plan::split_tables(&identities, decisions);
    for table in &split.fixed {
        tracing::info!(table = %table, "table has a usable replica identity now: included");
    }
    for Excluded {
        table,
        decision,
        why,
        ..
    } in &split.excluded
    {
        match why {
            Why::NotFullYet => tracing::warn!(
                table = %table,
                "decided replica_identity_full, but the table's replica identity on the \
                 source is not FULL yet: it is excluded from this snapshot until fixed (run \
                 ALTER TABLE … REPLICA IDENTITY FULL on the source, then take a new snapshot)"
            ),
            Why::Decided => tracing::info!(table = %table, %decision, "table excluded"),
        }
    }
    let tables = listed
        .into_iter()
        .filter(|t| split.copied.contains(&t.name))
        .collect();
    let excluded = split
        .excluded
        .into_iter()
        .map(|e| (e.table, e.decision))
        .collect();
    (tables, excluded)
}
