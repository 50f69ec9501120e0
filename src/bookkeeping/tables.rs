//! A connector's tables: the replica identity decisions the operator took, and per table
//! of the current snapshot its sync state and copy counters (`tributary.table_decisions`,
//! `tributary.snapshot_tables`). Written under the connector's lease, like its state.

use std::fmt;

use sqlx::Row;

use super::leases::{hold_lease, LEASE_HELD};
use super::{counter, Bookkeeping, Error};
use crate::change::TableName;
use crate::types::{ConnectorId, FencingToken, Lsn};

/// Where one table of a snapshot is. Stored as its lower-case name.
///
/// ```text
///  pending ──► copying ──► copied at L ──► streaming (the replica's applied position ≥ L)
///     ▲           ▲            │                 │
///     │           └────────────┘ interrupted     ├──► needs_decision: no usable replica
///     │                                          │    identity (its INSERTs still apply;
///     │                                          │    back to streaming once it has one)
///     └── `connector resync` ◄── failed ◄────────┘    a change of it was lost: held out
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableSyncState {
    /// Waiting for its copy.
    Pending,
    /// Being copied; an interruption copies it again from the start.
    Copying,
    /// Copied, exact at its copy position; the stream has not passed that position yet,
    /// so the table is ahead of the others.
    Copied,
    /// Kept in sync by the stream.
    Streaming,
    /// Streaming, but without a usable replica identity: an UPDATE or DELETE of it would
    /// be lost (and then the table fails).
    NeedsDecision,
    /// Held out of the stream: a change of it could not be replicated. Copied again by
    /// `connector resync`.
    Failed,
}

impl TableSyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            TableSyncState::Pending => "pending",
            TableSyncState::Copying => "copying",
            TableSyncState::Copied => "copied",
            TableSyncState::Streaming => "streaming",
            TableSyncState::NeedsDecision => "needs_decision",
            TableSyncState::Failed => "failed",
        }
    }

    /// Whether the table's copy is complete and still holds: copied, or streaming (with a
    /// usable replica identity or not). Snapshot progress counts these. A failed table
    /// lost a change since its copy: it is copied again.
    pub fn is_copied(self) -> bool {
        match self {
            TableSyncState::Copied | TableSyncState::Streaming | TableSyncState::NeedsDecision => {
                true
            }
            TableSyncState::Pending | TableSyncState::Copying | TableSyncState::Failed => false,
        }
    }

    fn from_db(text: &str) -> Result<TableSyncState, Error> {
        [
            TableSyncState::Pending,
            TableSyncState::Copying,
            TableSyncState::Copied,
            TableSyncState::Streaming,
            TableSyncState::NeedsDecision,
            TableSyncState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| Error::Corrupt(format!("table sync state {text:?}")))
    }
}

impl fmt::Display for TableSyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator decided about a table without a usable replica identity (see
/// `migrations/0002_table_decisions.sql`). Stored as [`TableDecision::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableDecision {
    /// Never replicated.
    Exclude,
    /// The operator will add a primary key; excluded until then.
    AddPk,
    /// The operator sets `REPLICA IDENTITY FULL` on the source; excluded from a snapshot
    /// that starts before they did.
    ReplicaIdentityFull,
}

impl TableDecision {
    pub const ALL: [TableDecision; 3] = [
        TableDecision::Exclude,
        TableDecision::AddPk,
        TableDecision::ReplicaIdentityFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TableDecision::Exclude => "exclude",
            TableDecision::AddPk => "add_pk",
            TableDecision::ReplicaIdentityFull => "replica_identity_full",
        }
    }

    /// The decision spelled `text`, as in a decisions file.
    pub fn parse(text: &str) -> Option<TableDecision> {
        TableDecision::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

impl fmt::Display for TableDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// [`TableStatus::decision`] of an unlogged table: its definition is in the replica, its
/// rows never are (no change of an unlogged table is in the WAL).
pub const UNLOGGED_TABLE: &str = "unlogged";

/// One table of a connector's current snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatus {
    pub table: TableName,
    /// `include` for every table a snapshot copies; for a table it left out, the
    /// [`TableDecision`] that excluded it, or [`UNLOGGED_TABLE`].
    pub decision: String,
    pub state: TableSyncState,
    /// Counters of the copies of the table, interrupted ones included.
    pub rows: u64,
    pub bytes: u64,
    /// The source position its last complete copy is exact at.
    pub copied_at: Option<Lsn>,
    /// Complete copies of the table since its snapshot started: 1 once copied, more only
    /// when it was copied again (a resync).
    pub copies: u32,
    /// What is wrong with it (`needs_decision`, `failed`), and what the operator should do.
    pub problem: Option<String>,
    pub next_step: Option<String>,
}

impl Bookkeeping {
    /// Replaces the connector's table rows with `tables`, for a new snapshot: each
    /// `include`d, `pending`, with zero counters. Under the lease, like
    /// [`Bookkeeping::set_state`].
    pub async fn set_snapshot_tables(
        &self,
        id: ConnectorId,
        lease: FencingToken,
        tables: &[TableName],
    ) -> Result<(), Error> {
        let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        // Also locks the connector against a concurrent delete while its rows are replaced.
        hold_lease(&mut tx, id, lease).await?;
        sqlx::query("DELETE FROM tributary.connector_tables WHERE connector_id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO tributary.connector_tables
                 (connector_id, schema_name, table_name, decision, sync_state)
             SELECT $1, t.schema_name, t.table_name, 'include', 'pending'
             FROM unnest($2::text[], $3::text[]) AS t (schema_name, table_name)",
        )
        .bind(id.0)
        .bind(&schemas)
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The operator's decisions about the connector's tables without a usable replica
    /// identity, ordered by schema and name.
    pub async fn table_decisions(
        &self,
        id: ConnectorId,
    ) -> Result<Vec<(TableName, TableDecision)>, Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT schema_name, table_name, decision FROM tributary.table_decisions
             WHERE connector_id = $1
             ORDER BY schema_name, table_name",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(schema, name, decision)| {
                let decision = TableDecision::parse(&decision)
                    .ok_or_else(|| Error::Corrupt(format!("table decision {decision:?}")))?;
                Ok((TableName { schema, name }, decision))
            })
            .collect()
    }

    /// Adds the tables the current snapshot leaves out to its table rows (after
    /// [`Bookkeeping::set_snapshot_tables`]), each with the decision that excluded it, and
    /// its unlogged tables as [`UNLOGGED_TABLE`]. Under the lease.
    pub async fn set_excluded_tables(
        &self,
        id: ConnectorId,
        lease: FencingToken,
        excluded: &[(TableName, TableDecision)],
        unlogged: &[TableName],
    ) -> Result<(), Error> {
        let (mut schemas, mut names, mut decided) = decision_columns(excluded);
        for table in unlogged {
            schemas.push(table.schema.as_str());
            names.push(table.name.as_str());
            decided.push(UNLOGGED_TABLE);
        }
        let mut tx = self.pool.begin().await?;
        hold_lease(&mut tx, id, lease).await?;
        sqlx::query(
            "INSERT INTO tributary.connector_tables
                 (connector_id, schema_name, table_name, decision, sync_state)
             SELECT $1, t.schema_name, t.table_name, t.decision, 'pending'
             FROM unnest($2::text[], $3::text[], $4::text[])
                  AS t (schema_name, table_name, decision)",
        )
        .bind(id.0)
        .bind(&schemas)
        .bind(&names)
        .bind(&decided)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds `rows` and `bytes` (increments, not totals) to the table's counters and sets
    /// its state; under the lease.
    pub async fn table_progress(
        &self,
        id: ConnectorId,
        lease: FencingToken,
        table: &TableName,
        rows: u64,
        bytes: u64,
        state: TableSyncState,
    ) -> Result<(), Error> {
        let updated = sqlx::query(&format!(
            "UPDATE tributary.connector_tables
             SET rows_copied = rows_copied + $5, bytes_copied = bytes_copied + $6,
                 sync_state = $7
             WHERE connector_id = $1 AND schema_name = $3 AND table_name = $4
               AND {LEASE_HELD}"
        ))
        .bind(id.0)
        .bind(lease.0)
        .bind(&table.schema)
        .bind(&table.name)
        .bind(counter(rows))
        .bind(counter(bytes))
        .bind(state.as_str())
        .execute(&self.pool)
        .await?;
        self.fenced_write(id, lease, table, updated.rows_affected())
            .await
    }

    /// Records that the table's copy completed, exact at source position `at` (the
    /// replica recorded it first, in the copy's own transaction); under the lease.
    pub async fn table_copied(
        &self,
        id: ConnectorId,
        lease: FencingToken,
        table: &TableName,
        at: Lsn,
        copies: u32,
    ) -> Result<(), Error> {
        let updated = sqlx::query(&format!(
            "UPDATE tributary.connector_tables
             SET sync_state = 'copied', copied_lsn = $5::text::pg_lsn, copies = $6
             WHERE connector_id = $1 AND schema_name = $3 AND table_name = $4
               AND {LEASE_HELD}"
        ))
        .bind(id.0)
        .bind(lease.0)
        .bind(&table.schema)
        .bind(&table.name)
        .bind(at.to_string())
        .bind(i32::try_from(copies).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await?;
        self.fenced_write(id, lease, table, updated.rows_affected())
            .await
    }

    /// After a write under [`LEASE_HELD`] that changed `rows`: none means the lease is
    /// gone, or the table is not the connector's.
    async fn fenced_write(
        &self,
        id: ConnectorId,
        lease: FencingToken,
        table: &TableName,
        rows: u64,
    ) -> Result<(), Error> {
        if rows > 0 {
            return Ok(());
        }
        let held: bool = sqlx::query_scalar(&format!("SELECT {LEASE_HELD}"))
            .bind(id.0)
            .bind(lease.0)
            .fetch_one(&self.pool)
            .await?;
        if !held {
            return Err(Error::LeaseLost(id));
        }
        Err(Error::UnknownTable {
            connector: id,
            table: format!("{}.{}", table.schema, table.name),
        })
    }

    /// Marks `streaming` every copied table whose copy position the replica's applied
    /// position `applied` has reached; returns how many changed.
    pub async fn tables_streaming(&self, id: ConnectorId, applied: Lsn) -> Result<u64, Error> {
        let updated = sqlx::query(
            "UPDATE tributary.connector_tables SET sync_state = 'streaming'
             WHERE connector_id = $1 AND sync_state = 'copied'
               AND copied_lsn <= $2::text::pg_lsn",
        )
        .bind(id.0)
        .bind(applied.to_string())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected())
    }

    /// Records that `table` is in trouble on its own (`needs_decision` or `failed`, with the
    /// problem and the next step), or out of it again (`streaming`). A table created on
    /// the source since the snapshot gets its row here, and one the snapshot left out by a
    /// decision is included from now on (every state here is a replicated table's).
    pub async fn set_table_state(
        &self,
        id: ConnectorId,
        lease: FencingToken,
        table: &TableName,
        state: TableSyncState,
        problem: Option<(&str, &str)>,
    ) -> Result<(), Error> {
        let written = sqlx::query(&format!(
            "INSERT INTO tributary.connector_tables AS t
                 (connector_id, schema_name, table_name, decision, sync_state, problem, next_step)
             SELECT $1, $3, $4, 'include', $5, $6, $7 WHERE {LEASE_HELD}
             ON CONFLICT (connector_id, schema_name, table_name) DO UPDATE
             SET sync_state = EXCLUDED.sync_state, problem = EXCLUDED.problem,
                 next_step = EXCLUDED.next_step, decision = 'include'"
        ))
        .bind(id.0)
        .bind(lease.0)
        .bind(&table.schema)
        .bind(&table.name)
        .bind(state.as_str())
        .bind(problem.map(|(p, _)| p))
        .bind(problem.map(|(_, n)| n))
        .execute(&self.pool)
        .await?;
        self.fenced_write(id, lease, table, written.rows_affected())
            .await
    }

    /// Sets every included table that is not copied back to `pending` (its copy was
    /// interrupted and starts again), keeping its counters.
    pub async fn tables_unfinished(
        &self,
        id: ConnectorId,
        lease: FencingToken,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        hold_lease(&mut tx, id, lease).await?;
        sqlx::query(
            "UPDATE tributary.connector_tables SET sync_state = 'pending'
             WHERE connector_id = $1 AND sync_state = 'copying'",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The connector's tables held out of the stream (`failed`): a branch would hold them
    /// as they were before a lost change.
    pub async fn held_out_tables(&self, id: ConnectorId) -> Result<Vec<TableName>, Error> {
        Ok(self
            .tables(id)
            .await?
            .into_iter()
            .filter(|t| t.state == TableSyncState::Failed)
            .map(|t| t.table)
            .collect())
    }

    /// The tables of the connector's current snapshot, ordered by schema and name.
    pub async fn tables(&self, id: ConnectorId) -> Result<Vec<TableStatus>, Error> {
        let rows = sqlx::query(
            "SELECT schema_name, table_name, decision, sync_state, rows_copied, bytes_copied,
                    copied_lsn::text AS copied_lsn, copies, problem, next_step
             FROM tributary.connector_tables
             WHERE connector_id = $1
             ORDER BY schema_name, table_name",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(table_status).collect()
    }
}

/// One row of `tributary.connector_tables`.
fn table_status(row: &sqlx::postgres::PgRow) -> Result<TableStatus, Error> {
    let count = |column: &str| -> Result<u64, Error> {
        let n: i64 = row.try_get(column)?;
        u64::try_from(n).map_err(|_| Error::Corrupt(format!("negative counter {n}")))
    };
    let copied_at: Option<String> = row.try_get("copied_lsn")?;
    let copies: i32 = row.try_get("copies")?;
    Ok(TableStatus {
        table: TableName {
            schema: row.try_get("schema_name")?,
            name: row.try_get("table_name")?,
        },
        decision: row.try_get("decision")?,
        state: TableSyncState::from_db(row.try_get("sync_state")?)?,
        rows: count("rows_copied")?,
        bytes: count("bytes_copied")?,
        copied_at: copied_at
            .map(|lsn| {
                lsn.parse()
                    .map_err(|e| Error::Corrupt(format!("copy position {lsn:?}: {e}")))
            })
            .transpose()?,
        copies: u32::try_from(copies)
            .map_err(|_| Error::Corrupt(format!("negative copy count {copies}")))?,
        problem: row.try_get("problem")?,
        next_step: row.try_get("next_step")?,
    })
}

/// Within `tx`: records the connector's decisions.
pub(super) async fn insert_decisions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: ConnectorId,
    decisions: &[(TableName, TableDecision)],
) -> Result<(), Error> {
    let (schemas, names, decided) = decision_columns(decisions);
    sqlx::query(
        "INSERT INTO tributary.table_decisions
             (connector_id, schema_name, table_name, decision)
         SELECT $1, d.schema_name, d.table_name, d.decision
         FROM unnest($2::text[], $3::text[], $4::text[])
              AS d (schema_name, table_name, decision)",
    )
    .bind(id.0)
    .bind(&schemas)
    .bind(&names)
    .bind(&decided)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Decisions as the three parallel arrays an `unnest` insert binds.
fn decision_columns(
    decisions: &[(TableName, TableDecision)],
) -> (Vec<&str>, Vec<&str>, Vec<&'static str>) {
    let schemas = decisions.iter().map(|(t, _)| t.schema.as_str()).collect();
    let names = decisions.iter().map(|(t, _)| t.name.as_str()).collect();
    let decided = decisions.iter().map(|(_, d)| d.as_str()).collect();
    (schemas, names, decided)
}

#[cfg(test)]
mod tests {
    use super::TableSyncState::{self, *};

    #[test]
    fn a_table_past_its_copy_counts_as_copied() {
        let cases: [(TableSyncState, bool); 6] = [
            (Pending, false),
            (Copying, false),
            (Copied, true),
            // Streaming tables were copied first: progress must not fall back once the
            // stream reaches their copy position.
            (Streaming, true),
            (NeedsDecision, true),
            // Its copy lost a change: it is copied again.
            (Failed, false),
        ];
        for (state, copied) in cases {
            assert_eq!(state.is_copied(), copied, "{state}");
        }
    }
}
