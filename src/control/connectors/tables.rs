//! A connector's tables as operators see them: `connector tables` lists them, `connector
//! list` and `status` count them by state and name those not streaming, the daemon's
//! sampler exports the counts (`tributary_tables`), and snapshot progress is counted here
//! for `status`, `connector wait` and `retry-setup`. Gathered from the bookkeeping's rows
//! of the current snapshot and the operator's replica identity decisions, then judged by
//! pure functions.

use std::collections::HashMap;

use crate::bookkeeping::{
    self, Bookkeeping, Connector, TableDecision, TableStatus, TableSyncState,
};
use crate::change::TableName;
use crate::state::TableState;
use crate::types::Lsn;

/// How many of the tables not streaming `status` names; it counts the rest.
pub const NOT_STREAMING_NAMED: usize = 10;

/// [`TableStatus::decision`] of a table the snapshot copies.
const INCLUDE: &str = "include";

/// One of a connector's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub table: TableName,
    pub state: TableState,
    /// `include` for a replicated table; for an excluded one the decision that excludes
    /// it (`exclude`, `add_pk`, `replica_identity_full`) or `unlogged`.
    pub decision: String,
    /// The source position its last complete copy is exact at.
    pub copied_at: Option<Lsn>,
    /// Complete copies since its snapshot started (1 normally; more after a resync).
    pub copies: u32,
    /// Rows and bytes copied, interrupted copies included.
    pub rows_copied: u64,
    pub bytes_copied: u64,
    /// What is wrong with it (`needs_decision`, `failed`), and what the operator does.
    pub problem: Option<String>,
    pub next_step: Option<String>,
}

impl Table {
    /// A table with nothing copied and no trouble recorded.
    pub fn new(table: TableName, state: TableState, decision: &str) -> Table {
        Table {
            table,
            state,
            decision: decision.to_owned(),
            copied_at: None,
            copies: 0,
            rows_copied: 0,
            bytes_copied: 0,
            problem: None,
            next_step: None,
        }
    }
}

/// The connector's tables, ordered by schema and name.
pub async fn list(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
) -> Result<Vec<Table>, bookkeeping::Error> {
    let statuses = bookkeeping.tables(connector.id).await?;
    let decisions = bookkeeping.table_decisions(connector.id).await?;
    Ok(merge(statuses, decisions))
}

/// The table's state: its sync state when the snapshot copies it, `excluded` otherwise.
pub fn state_of(status: &TableStatus) -> TableState {
    if status.decision != INCLUDE {
        return TableState::Excluded;
    }
    match status.state {
        TableSyncState::Pending => TableState::Pending,
        TableSyncState::Copying => TableState::Copying,
        TableSyncState::Copied => TableState::Copied,
        TableSyncState::Streaming => TableState::Streaming,
        TableSyncState::NeedsDecision => TableState::NeedsDecision,
        TableSyncState::Failed => TableState::Failed,
    }
}

/// The snapshot's tables with the operator's decisions: a decided table the snapshot did
/// not include (every one before the first snapshot) is excluded by its decision as it
/// stands now; a decided table whose key or identity was fixed in time is included.
pub fn merge(statuses: Vec<TableStatus>, decisions: Vec<(TableName, TableDecision)>) -> Vec<Table> {
    let mut decided: HashMap<TableName, TableDecision> = decisions.into_iter().collect();
    let mut tables: Vec<Table> = statuses
        .into_iter()
        .map(|status| {
            let state = state_of(&status);
            let decision = decided.remove(&status.table);
            let decision = match (state, decision) {
                (TableState::Excluded, Some(now)) => now.as_str().to_owned(),
                _ => status.decision,
            };
            Table {
                table: status.table,
                state,
                decision,
                copied_at: status.copied_at,
                copies: status.copies,
                rows_copied: status.rows,
                bytes_copied: status.bytes,
                problem: status.problem,
                next_step: status.next_step,
            }
        })
        .collect();
    tables.extend(
        decided
            .into_iter()
            .map(|(table, decision)| Table::new(table, TableState::Excluded, decision.as_str())),
    );
    tables.sort_by(|a, b| (&a.table.schema, &a.table.name).cmp(&(&b.table.schema, &b.table.name)));
    tables
}

/// How many tables are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts([usize; TableState::ALL.len()]);

impl Counts {
    pub fn of(tables: &[Table]) -> Counts {
        let mut counts = Counts::default();
        for table in tables {
            counts.0[index(table.state)] += 1;
        }
        counts
    }

    pub fn get(&self, state: TableState) -> usize {
        self.0[index(state)]
    }

    /// Every state with its count, zeros included, in [`TableState::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (TableState, usize)> + '_ {
        TableState::ALL
            .into_iter()
            .map(|state| (state, self.get(state)))
    }

    /// Replicated tables that are not streaming (an excluded table never streams).
    pub fn not_streaming(&self) -> usize {
        self.iter()
            .filter(|(state, _)| !matches!(state, TableState::Streaming | TableState::Excluded))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Its place in [`TableState::ALL`], which lists the states in their declared order.
fn index(state: TableState) -> usize {
    state as usize
}

/// The replicated tables not streaming, in their order, at most `named` of them.
pub fn not_streaming(tables: &[Table], named: usize) -> Vec<&Table> {
    tables
        .iter()
        .filter(|t| !matches!(t.state, TableState::Streaming | TableState::Excluded))
        .take(named)
        .collect()
}

/// A snapshot's progress: of the tables it copies, how many are copied, and the rows and
/// bytes copied so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub copied: u64,
    pub total: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// The progress of the snapshot whose tables are `statuses`.
pub fn progress(statuses: &[TableStatus]) -> Progress {
    let included = statuses.iter().filter(|t| t.decision == INCLUDE);
    let mut progress = Progress::default();
    for table in included {
        progress.total += 1;
        progress.copied += u64::from(table.state.is_copied());
        progress.rows += table.rows;
        progress.bytes += table.bytes;
    }
    progress
}

#[cfg(test)]
#[path = "tables_tests.rs"]
mod tests;
