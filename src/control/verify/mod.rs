//! `tributary verify`: the source and the replica compared exactly, at one source position.
//!
//! ```text
//!  held branch requested ──► the pipeline stands still at a commit boundary P
//!  temporary slot on the source, snapshot exported at L ≥ P; the workers' source
//!    sessions import it; the slot goes with its connection
//!  L named ──► the pipeline streams on and cuts a branch before the first source
//!              transaction committed at or after L: the branch is the source at L
//!  every table's key ranges summarized on both (count, sum of row hashes), in parallel;
//!    a differing range read row by row ──► report; the branch dropped
//! ```
//!
//! The pipeline stands still only from P until L is named (the slot's creation, which
//! waits for the transactions running on the source) and for the cut itself. No row or
//! catalog of the source is written: the slot is temporary and the sessions are read-only.
//!
//! - `plan.rs`: the queries, the ranges and the row comparison (pure, table-tested).
//! - `compare.rs`: the workers.

mod compare;
mod plan;

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use crate::bookkeeping::{self, Bookkeeping, BranchState, Connector};
use crate::control::branches::{self, BranchError};
use crate::control::connectors::resync::{find_table, ResyncError};
use crate::pg::{self, quote_literal, ConnInfo, PgClient};
use crate::source::{self, ReplicationClient, SnapshotAction};
use crate::types::{BranchName, ConnectorName, Lsn, SlotName, TableName};

pub use compare::ROWS_SHOWN;
pub use plan::{show_key, Range, RowDifference, RowKind};

/// Names of the branches verify cuts: `tributary_verify_` and 16 hex digits.
const BRANCH_PREFIX: &str = "tributary_verify_";

/// How often verify looks at its branch's record while the pipeline holds or cuts.
const POLL: Duration = Duration::from_millis(20);

/// What `tributary verify` asks for.
pub struct VerifyRequest {
    /// Tables to compare, as `connector resync --table` takes them; empty for all.
    pub tables: Vec<String>,
    /// How long the pipeline may take to stand still, and the source to give a snapshot.
    pub timeout: Duration,
    /// Sessions on each server.
    pub jobs: usize,
}

/// What a person waiting may want to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A branch left by an interrupted verify was dropped.
    CleanedUp(BranchName),
    /// Waiting for the pipeline to stand still at a source commit boundary.
    Holding,
    /// The pipeline stands still; a snapshot of the source is being taken.
    Snapshot {
        held_at: Lsn,
    },
    /// The pipeline streams on to the snapshot's position and cuts there.
    Cutting {
        at: Lsn,
    },
    /// The comparison starts.
    Planned {
        tables: usize,
        ranges: usize,
    },
    Compared {
        done: usize,
        total: usize,
    },
}

/// Which server a query failed on, or a table is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Source,
    Replica,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "the source",
            Side::Replica => "the replica's branch",
        })
    }
}

/// One table compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: TableName,
    /// A table on one side only: which.
    pub only_in: Option<Side>,
    /// Whether it has a key (else one range, rows told apart by content).
    pub keyed: bool,
    pub ranges: usize,
    pub source_rows: u64,
    pub replica_rows: u64,
    /// Key ranges whose rows differ.
    pub differing_ranges: Vec<Range>,
    /// Rows that differ, at most [`ROWS_SHOWN`] of them; `more_rows` beyond.
    pub rows: Vec<RowDifference>,
    pub more_rows: usize,
}

impl TableReport {
    pub fn equal(&self) -> bool {
        self.only_in.is_none()
            && self.source_rows == self.replica_rows
            && self.differing_ranges.is_empty()
            && self.rows.is_empty()
    }
}

/// The comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub connector: ConnectorName,
    /// The source position compared at: the snapshot's.
    pub position: Lsn,
    /// The replica's applied position in the branch compared (the last source commit
    /// before `position`, or an idle position after it).
    pub branch_lsn: Lsn,
    /// How long the pipeline stood still.
    pub paused: Duration,
    pub tables: Vec<TableReport>,
    pub took: Duration,
}

impl Report {
    pub fn equal(&self) -> bool {
        self.tables.iter().all(TableReport::equal)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(transparent)]
    Branch(#[from] BranchError),
    #[error(transparent)]
    Table(#[from] ResyncError),
    #[error(
        "connector {connector} is not streamed by a running daemon, so no pipeline can stop \
         at the source position verify compares at: start `tributary run` (or enable the \
         connector) and run verify again"
    )]
    NotStreamed { connector: ConnectorName },
    #[error(
        "the pipeline of {connector} did not stand still at a source commit boundary within \
         {timeout:?} (it may be copying a snapshot, or busy with a long source transaction): \
         see `tributary status`, or give verify more time with --timeout"
    )]
    NotHeld {
        connector: ConnectorName,
        timeout: Duration,
    },
    #[error(
        "the source gave no snapshot within {timeout:?}: creating its temporary replication \
         slot waits for every transaction running on the source to end. Look for old open \
         transactions (SELECT pid, xact_start, state FROM pg_stat_activity WHERE xact_start \
         < now() - interval '1 minute'), or give verify more time with --timeout"
    )]
    SnapshotTimeout { timeout: Duration },
    #[error("taking a snapshot of the source: {0}")]
    Snapshot(#[source] source::Error),
    #[error(
        "the pipeline could not cut the replica at the snapshot's position: {reason}; run \
         verify again"
    )]
    CutFailed { reason: String },
    #[error("{0}; run verify again")]
    Gone(String),
    #[error("connecting to {side}: {error}")]
    Connect { side: Side, error: pg::ConnectError },
    #[error(
        "comparing {table}: {side} refused a query: {error}. A table the replica lacks, or \
         whose columns differ, is not the source's: `tributary connector tables` and \
         `status` say why"
    )]
    Query {
        side: Side,
        table: TableName,
        error: String,
    },
    #[error(
        "the source database is encoded in {on_source} and the replica in {replica}: verify \
         compares rows by the hash of their text as stored, which differs between encodings \
         for every character outside ASCII, so it cannot compare them"
    )]
    Encoding { on_source: String, replica: String },
    #[error("setting up a session on {side}: {error}")]
    Session { side: Side, error: String },
}

impl VerifyError {
    fn query(side: Side, table: &TableName, error: tokio_postgres::Error) -> VerifyError {
        VerifyError::Query {
            side,
            table: table.clone(),
            error: pg::error_message(&error),
        }
    }

    /// Whether the command line was at fault (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, VerifyError::Table(e) if e.is_usage())
    }
}

/// Compares the connector's tables (or those asked for) on the source and in the replica
/// at one source position; see the module doc.
pub async fn verify(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    request: VerifyRequest,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let tables = chosen_tables(bookkeeping, connector, &request.tables).await?;
    clean_up(bookkeeping, store, connector, progress).await?;
    if !branches::cut_by_pipeline(bookkeeping, store, connector).await? {
        return Err(VerifyError::NotStreamed {
            connector: connector.name.clone(),
        });
    }
    let name = BranchName::new(format!("{BRANCH_PREFIX}{:016x}", rand::random::<u64>()))
        .expect("a valid branch name");
    let making = bookkeeping.try_lock_branch_making(&name).await?;
    let compared = at_cut(
        bookkeeping,
        store,
        connector,
        &name,
        &tables,
        &request,
        progress,
    )
    .await;
    // Free first: a pipeline holding for it then sees it gone and streams on.
    drop(making);
    let removed = remove(bookkeeping, store, &name).await;
    let mut report = compared?;
    removed?;
    report.took = started.elapsed();
    Ok(report)
}

/// The tables the connector replicates, or those of `given`: the recorded ones it
/// includes, and (with new tables included) those created on the source since.
async fn chosen_tables(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    given: &[String],
) -> Result<Vec<TableName>, VerifyError> {
    let recorded = bookkeeping.tables(connector.id).await?;
    let mut new = Vec::new();
    if connector.include_new_tables {
        let source = bookkeeping.source(connector).await?;
        let client = pg::connect(&source)
            .await
            .map_err(|error| VerifyError::Connect {
                side: Side::Source,
                error,
            })?;
        let rows = client
            .query(plan::tables_sql(), &[&connector.schemas])
            .await
            .map_err(|e| VerifyError::Session {
                side: Side::Source,
                error: pg::error_message(&e),
            })?;
        new = rows
            .iter()
            .map(|r| TableName {
                schema: r.get(0),
                name: r.get(1),
            })
            .filter(|t| !recorded.iter().any(|r| &r.table == t))
            .collect();
    }
    if given.is_empty() {
        let included = recorded
            .into_iter()
            .filter(|t| t.decision == "include")
            .map(|t| t.table);
        return Ok(included.chain(new).collect());
    }
    let mut chosen: Vec<TableName> = Vec::new();
    for given in given {
        let table = match find_table(connector.name.as_str(), &recorded, given) {
            Ok(found) => found.table.clone(),
            Err(unknown @ ResyncError::UnknownTable { .. }) => {
                plan::named(&new, given).ok_or(unknown)?
            }
            Err(e) => return Err(e.into()),
        };
        if !chosen.contains(&table) {
            chosen.push(table);
        }
    }
    Ok(chosen)
}

async fn at_cut(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    name: &BranchName,
    tables: &[TableName],
    request: &VerifyRequest,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, VerifyError> {
    // Connected before the pipeline is asked to stand still: it waits for less.
    let source = bookkeeping.source(connector).await?;
    let mut slot = SnapshotSlot::connect(&source).await?;
    bookkeeping
        .request_held_branch(name, connector.id, connector.name.as_str())
        .await?;
    progress(Progress::Holding);
    let held_at = held(bookkeeping, connector, name, request.timeout).await?;
    progress(Progress::Snapshot { held_at });
    let (position, snapshot) = slot.create(request.timeout).await?;
    bookkeeping.cut_held_branch_at(name, position).await?;
    progress(Progress::Cutting { at: position });
    // The sessions import the snapshot while the slot's connection stays idle; the slot
    // goes with that connection.
    let jobs = request.jobs.max(1);
    let sources =
        try_join_all((0..jobs).map(|_| session(&slot.source, Side::Source, Some(&snapshot)))).await;
    slot.client.close().await;
    let sources = sources?;
    let (branch_lsn, paused) = cut(bookkeeping, name).await?;
    let branch = store.with_dbname(name.as_str());
    let branches = try_join_all((0..jobs).map(|_| session(&branch, Side::Replica, None))).await?;
    same_encoding(&sources[0], &branches[0]).await?;
    let planned = compare::plan(&sources[0], &branches[0], tables).await?;
    progress(Progress::Planned {
        tables: planned.len(),
        ranges: compare::range_count(&planned),
    });
    let workers = sources
        .into_iter()
        .zip(branches)
        .map(|(source, branch)| compare::Sessions { source, branch })
        .collect();
    let tables = compare::compare(&planned, workers, progress).await?;
    Ok(Report {
        connector: connector.name.clone(),
        position,
        branch_lsn,
        paused,
        tables,
        took: Duration::ZERO,
    })
}

/// Row texts are hashed as the databases store them: two encodings would make every row
/// with a character outside ASCII differ.
async fn same_encoding(source: &PgClient, branch: &PgClient) -> Result<(), VerifyError> {
    let (source, replica) = (
        encoding(source, Side::Source).await?,
        encoding(branch, Side::Replica).await?,
    );
    if source == replica {
        Ok(())
    } else {
        Err(VerifyError::Encoding {
            on_source: source,
            replica,
        })
    }
}

async fn encoding(client: &PgClient, side: Side) -> Result<String, VerifyError> {
    client
        .query_one("SELECT pg_catalog.current_setting('server_encoding')", &[])
        .await
        .map(|row| row.get(0))
        .map_err(|e| VerifyError::Session {
            side,
            error: pg::error_message(&e),
        })
}

/// Waits for the pipeline to stand still; returns where.
async fn held(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    name: &BranchName,
    timeout: Duration,
) -> Result<Lsn, VerifyError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(at) = bookkeeping.branch_hold(name).await?.and_then(|h| h.held_at) {
            return Ok(at);
        }
        let branch = bookkeeping.branch(name).await?;
        match branch {
            None => return Err(VerifyError::Gone(format!("branch {name} was deleted"))),
            Some(b) if b.state == BranchState::Failed => {
                return Err(VerifyError::CutFailed {
                    reason: b.error.unwrap_or_default(),
                })
            }
            // Claimed or not: the pipeline lets go of it once verify's lock is free.
            Some(_) if Instant::now() >= deadline => {
                return Err(VerifyError::NotHeld {
                    connector: connector.name.clone(),
                    timeout,
                });
            }
            Some(_) => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A replication connection to the source, for a temporary slot with an exported
/// snapshot; the slot and the export go with the connection.
struct SnapshotSlot {
    client: ReplicationClient,
    /// The source, pinned to the server the connection reached.
    source: ConnInfo,
    /// The walsender's process, to cancel a slot creation that waits too long.
    pid: Option<String>,
}

impl SnapshotSlot {
    async fn connect(source: &ConnInfo) -> Result<SnapshotSlot, VerifyError> {
        let mut client = ReplicationClient::connect(source)
            .await
            .map_err(VerifyError::Snapshot)?;
        let source = source.pinned(client.endpoint());
        let pid = client
            .simple_query("SELECT pg_catalog.pg_backend_pid()")
            .await
            .map_err(VerifyError::Snapshot)?
            .first()
            .and_then(|row| row.first().cloned().flatten());
        Ok(SnapshotSlot {
            client,
            source,
            pid,
        })
    }

    /// Creates the slot; returns its position and the name of its exported snapshot.
    async fn create(&mut self, timeout: Duration) -> Result<(Lsn, String), VerifyError> {
        let slot = SlotName::temporary("verify");
        let created = tokio::time::timeout(
            timeout,
            self.client.create_slot(&slot, true, SnapshotAction::Export),
        )
        .await;
        let created = match created {
            Ok(created) => created.map_err(VerifyError::Snapshot)?,
            Err(_) => {
                // The walsender would wait on: cancel its command (its own role may).
                if let (Some(pid), Ok(sql)) = (&self.pid, pg::connect(&self.source).await) {
                    let _ = sql
                        .batch_execute(&format!(
                            "SELECT pg_catalog.pg_cancel_backend({})",
                            quote_literal(pid)
                        ))
                        .await;
                }
                return Err(VerifyError::SnapshotTimeout { timeout });
            }
        };
        let snapshot = created
            .snapshot_name
            .ok_or_else(|| VerifyError::Gone("the source exported no snapshot".to_owned()))?;
        Ok((created.consistent_point, snapshot))
    }
}

/// A session with [`plan::SESSION_SETTINGS`]; on the source, in a read-only transaction on
/// `snapshot`.
async fn session(
    info: &ConnInfo,
    side: Side,
    snapshot: Option<&str>,
) -> Result<PgClient, VerifyError> {
    let client = pg::connect(info)
        .await
        .map_err(|error| VerifyError::Connect { side, error })?;
    // Two messages: statements before a BEGIN in one message would be part of its
    // transaction, and SET TRANSACTION SNAPSHOT must come first in it.
    let mut setup = vec![plan::SESSION_SETTINGS.to_owned()];
    if let Some(snapshot) = snapshot {
        setup.push(format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ));
    }
    for statements in setup {
        client
            .batch_execute(&statements)
            .await
            .map_err(|e| VerifyError::Session {
                side,
                error: pg::error_message(&e),
            })?;
    }
    Ok(client)
}

/// Waits for the pipeline to cut the branch; returns its position and the pause.
async fn cut(bookkeeping: &Bookkeeping, name: &BranchName) -> Result<(Lsn, Duration), VerifyError> {
    let mut looked = Instant::now();
    loop {
        let Some(branch) = bookkeeping.branch(name).await? else {
            return Err(VerifyError::Gone(format!("branch {name} was deleted")));
        };
        match branch.state {
            BranchState::Copied | BranchState::Ready => {
                let lsn = branch
                    .lsn
                    .ok_or_else(|| VerifyError::Gone(format!("branch {name} has no position")))?;
                return Ok((lsn, branch.pause.unwrap_or_default()));
            }
            BranchState::Failed => {
                return Err(VerifyError::CutFailed {
                    reason: branch.error.unwrap_or_default(),
                })
            }
            // Being cut: the pipeline streams on to the position, however long it takes,
            // as long as a pipeline holds the cut's lock (looked at every second).
            BranchState::Cutting if looked.elapsed() >= Duration::from_secs(1) => {
                looked = Instant::now();
                if bookkeeping.try_lock_branch(name).await?.is_some() {
                    return Err(VerifyError::Gone(
                        "the pipeline stopped before it cut the replica at the snapshot's \
                         position"
                            .to_owned(),
                    ));
                }
            }
            BranchState::Requested | BranchState::Cutting => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Drops verify's branch, waiting while the pipeline still holds or cuts it (it lets go
/// once verify's making lock is free).
async fn remove(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    name: &BranchName,
) -> Result<(), VerifyError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match branches::delete(bookkeeping, store, name.as_str(), true, &|_| {}).await {
            Ok(_) | Err(BranchError::NoSuchBranch { .. }) => return Ok(()),
            Err(BranchError::BeingCut { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Drops the branches of earlier verify runs of the connector that ended without (killed):
/// those whose making lock is free.
async fn clean_up(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), VerifyError> {
    for branch in bookkeeping.branches(Some(connector.id)).await? {
        // Verify's branches are never made ready: a ready one of the name is a user's.
        if !branch.name.as_str().starts_with(BRANCH_PREFIX) || branch.state == BranchState::Ready {
            continue;
        }
        let Some(lock) = bookkeeping.try_lock_branch_making(&branch.name).await? else {
            continue; // another verify's, running
        };
        match branches::delete(bookkeeping, store, branch.name.as_str(), true, &|_| {}).await {
            Ok(_) => progress(Progress::CleanedUp(branch.name.clone())),
            // Its pipeline is letting go of it: the next run takes it.
            Err(BranchError::BeingCut { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        drop(lock);
    }
    Ok(())
}
