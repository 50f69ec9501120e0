//! Applying changes to the replica: target transactions, pipelining, and exactly-once.
//!
//! [`ReplicaSink`] takes a change through these parts, one job per file:
//!
//! - `tables.rs`: which relation of the replica the change is for (a table, a materialized
//!   view, or none yet), each table's metadata loaded once (until a schema change).
//! - `shapes.rs`: the statements for the change's shape (kind and column set), prepared once
//!   per table and shape.
//! - `batch.rs`: changes of one shape to one table sent as one statement, or a change alone.
//! - `truncate.rs`: the TRUNCATE records of one source TRUNCATE sent as one statement.
//! - `queue.rs`: statements pipelined on the connection, their replies taken in order.
//! - `replies.rs`: each reply checked against what its statement had to do; a failure named
//!   by table, LSN and statement kind.
//! - `progress.rs`: the target transaction's ends: BEGIN with the progress row locked and
//!   the fencing token checked, the progress recorded and COMMIT.
//! - `transaction.rs`: the target transaction's state (idle, open, failed) and rollback.
//! - `ddl.rs`: captured schema changes, run at their place in the target transaction;
//!   `catalog.rs`: the replica's catalog read and recorded around them.
//! - `views.rs`: materialized views, computed instead of written.
//!
//! # Grouping and exactly-once
//!
//! The pipeline groups many source transactions into one *target transaction*, which always
//! ends at a source commit. [`ReplicaSink::commit`] writes that commit's end LSN into
//! `tributary.applied` inside the same transaction as the changes, then commits:
//!
//! ```text
//! BEGIN ─ SELECT progress FOR UPDATE ─ change ─ change ─ … ─┬─ (all results checked)
//!                                                           └─ UPDATE progress ─ COMMIT
//! ```
//!
//! So the replica's data and its applied LSN are one atomic fact: after a crash anywhere, the
//! replica equals the source at exactly the LSN it records, and the pipeline resumes there.
//! The position acknowledged to the source is only ever one `commit` returned for. The
//! progress row never moves backwards: a transaction whose end is not past the recorded
//! LSN would apply changes twice and is refused (an empty one is skipped).
//!
//! # Nothing is skipped
//!
//! Each INSERT, UPDATE and DELETE must change exactly one row (a batch of n changes,
//! n rows). A statement that errors, or a change that finds no row (which is no SQL error:
//! the server would happily commit without it), fails the target transaction.
//! COMMIT is only sent after every result of the transaction was received and checked, so
//! a transaction with a missing change is never committed. A failed transaction stays
//! failed ([`ReplicaSink::in_transaction`] is still true) until it is rolled back.
//!
//! Session settings are described in `replica.rs`, statement shapes in `table.rs`.

mod batch;
mod catalog;
mod ddl;
mod progress;
mod queue;
mod replies;
mod shapes;
mod tables;
mod transaction;
mod truncate;
mod views;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::change::{Change, ChangeKind, NanPolicy, TableName};
use crate::pg::{ConnInfo, PgClient};
use crate::types::{FencingToken, Lsn};

use super::error::SinkError;
use super::replica::{claim, open_session};
use progress::ProgressStatements;
use queue::InFlight;
use tables::{Relation, TableEntry};
use transaction::TxState;
use truncate::TruncateGroup;

pub use catalog::ReplicaColumn;
pub use queue::{MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES};

/// Per-row and per-statement overhead counted against the byte limits.
const ROW_BYTES: usize = 64;

/// A change whose columns do not match its replica table (a schema change on the source
/// that was not replayed): it names a column the table lacks, or it is an INSERT without
/// one of the table's stored columns. Nothing of it was applied.
pub struct Misfit {
    pub change: Change,
}

/// Applies changes to one replica database; see the module docs.
///
/// The methods are not cancel-safe: when a call is dropped before it completes (a
/// `select!` branch, a task abort), whether its statements ran is unknown, so drop the sink
/// too; a new one resumes from [`ReplicaSink::applied_lsn`]. After an error from `apply`,
/// call [`ReplicaSink::rollback`]; `commit` and `mark_applied` roll back by themselves.
pub struct ReplicaSink {
    /// Shared with the requests in flight, which outlive the call that sent them.
    client: Arc<PgClient>,
    database: String,
    /// The fencing token this session claimed the replica with.
    token: FencingToken,
    tables: Vec<TableEntry>,
    table_index: HashMap<TableName, usize>,
    /// The table of the previous change: consecutive changes mostly share one.
    last_table: Option<usize>,
    /// Tables with an open batch.
    open_batches: Vec<usize>,
    buffered_bytes: usize,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    /// Consecutive TRUNCATE records of one source TRUNCATE, sent as one statement.
    truncate: Option<TruncateGroup>,
    /// Relations of the replica known to be materialized views.
    materialized_views: HashSet<TableName>,
    /// Relations known to be missing from the replica (until the next schema change).
    missing: HashSet<TableName>,
    /// The materialized view refreshed for the run of changes being applied.
    refreshed: Option<TableName>,
    /// Relations missing on the replica that changes of the open target transaction were
    /// for, with the first change's LSN: placed when a replayed command creates them as a
    /// materialized view (which computes those rows), else the transaction fails.
    unplaced: Vec<(TableName, Option<Lsn>)>,
    nan: NanPolicy,
    state: TxState,
    /// What the progress row held when this transaction locked it; set once that reply is
    /// checked (always before anything else of the transaction).
    locked_progress: Option<Option<Lsn>>,
    progress: Option<ProgressStatements>,
    /// Reused buffers for a change's column indexes.
    scratch_new: Vec<u16>,
    scratch_old: Vec<u16>,
}

impl ReplicaSink {
    /// Connects to the replica database; the session runs with
    /// `session_replication_role = replica` (no triggers or foreign-key checks fire on
    /// apply, as with native logical replication).
    ///
    /// It claims the replica for `token` first (see `replica.rs`): [`SinkError::Fenced`]
    /// when a newer owner did, and then for every transaction after a newer owner's claim.
    pub async fn connect(
        store: &ConnInfo,
        database: &str,
        token: FencingToken,
    ) -> Result<ReplicaSink, SinkError> {
        let client = open_session(store, database).await?;
        claim(&client, database, token).await?;
        Ok(ReplicaSink {
            client: Arc::new(client),
            database: database.to_owned(),
            token,
            tables: Vec::new(),
            table_index: HashMap::new(),
            last_table: None,
            open_batches: Vec::new(),
            buffered_bytes: 0,
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT + 1),
            in_flight_bytes: 0,
            truncate: None,
            materialized_views: HashSet::new(),
            missing: HashSet::new(),
            refreshed: None,
            unplaced: Vec::new(),
            nan: NanPolicy::Exact,
            state: TxState::Idle,
            locked_progress: None,
            progress: None,
            scratch_new: Vec::new(),
            scratch_old: Vec::new(),
        })
    }

    /// The replica database this session applies to.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// How NaN and ±Infinity arrive from this source ([`NanPolicy::Exact`] unless set):
    /// under [`NanPolicy::Refuse`], a change to a table with a column that may hold them
    /// fails ([`SinkError::NanAsNull`]).
    pub fn with_nan_policy(self, nan: NanPolicy) -> ReplicaSink {
        ReplicaSink { nan, ..self }
    }

    pub fn nan_policy(&self) -> NanPolicy {
        self.nan
    }

    /// The fencing token this session claimed the replica with.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Applies one change inside the open target transaction (BEGIN on first use).
    ///
    /// Changes are batched and pipelined (see the module docs): an error may therefore
    /// surface on a later `apply()` or on `commit()`, naming the change that failed. After
    /// an error the transaction is failed and must be rolled back. A change that does not
    /// fit its table is given back untouched ([`Misfit`]); the transaction goes on.
    pub async fn apply(&mut self, change: Change) -> Result<Option<Misfit>, SinkError> {
        self.usable()?;
        let result = self.apply_change(change).await;
        self.note(result)
    }

    async fn apply_change(&mut self, change: Change) -> Result<Option<Misfit>, SinkError> {
        self.begin().await?;
        self.count_change();
        if change.kind == ChangeKind::Truncate {
            self.refreshed = None;
            return self.truncate(&change).await.map(|()| None);
        }
        self.flush_truncate().await?;

        let table = match self.relation(&change.table, Some(change.lsn)).await? {
            Relation::Table(table) => table,
            Relation::MaterializedView => {
                return self
                    .refresh(&change.table, Some(change.lsn))
                    .await
                    .map(|()| None);
            }
            Relation::Missing => {
                if !self.unplaced.iter().any(|(t, _)| *t == change.table) {
                    self.unplaced.push((change.table, Some(change.lsn)));
                }
                return Ok(None);
            }
        };
        self.refreshed = None;
        let Some(shape) = self.shape(table, &change).await? else {
            return Ok(Some(Misfit { change }));
        };
        self.send(table, shape, change).await.map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_and_its_errors_can_cross_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ReplicaSink>();
        send_sync::<SinkError>();
    }
}
