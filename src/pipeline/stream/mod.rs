//! Streaming: replication messages in, target transactions out, acknowledgements back.
//!
//! ```text
//!   reader: ReplicationStream ─► decode ─► filter ──(bounded channel)──► applier: ReplicaSink
//!              ▲                                                              │
//!              └──── set_flushed(durable) ◄───(watch: durable LSN)────────────┘
//! ```
//!
//! The applier is a task of its own, so that reading and decoding the next transactions
//! runs on another core while the applier builds statements and waits for the branch
//! store. The source connection is drained promptly, which matters most over a unix
//! socket, whose small buffer would otherwise stall the walsender. Neither outlives `run`:
//! the applier's handle aborts it when dropped.
//!
//! The applier groups many source transactions into one target transaction, always ending
//! at a source commit; its last statement records that commit's end as the replica's
//! applied LSN. Only after that commit returns does the position go back to the reader,
//! which alone acknowledges to the source. So a crash anywhere leaves the replica at some
//! source commit and the slot at or before it: on restart, streaming resumes from the
//! applied LSN and nothing is lost or applied twice.
//!
//! Idle positions from keepalives (and from transactions with nothing for the replica) are
//! written to the progress row before they are acknowledged too, so the slot's confirmed
//! position never runs ahead of the replica's applied LSN; that is what lets the pipeline
//! check, after START_REPLICATION, that the server has not skipped anything.
//!
//! Shutdown: the reader stops at the next source commit (or when the grace period ends)
//! and tells the applier how: `Stop` commits what is complete, anything else (the grace
//! period over, an error, the reader gone) rolls the open target transaction back.

mod applier;
mod reader;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::change::{Change, TableName};
use crate::metrics::ConnectorMetrics;
use crate::pg::ConnInfo;
use crate::pipeline::ddl::{DdlStatement, DdlTracker};
use crate::pipeline::drift::Reconciler;
use crate::pipeline::notices::Explainer;
use crate::pipeline::PipelineError;
use crate::settings::PipelineSettings;
use crate::sink::ReplicaSink;
use crate::source::{AckTracker, ReplicationStream};
use crate::types::{BranchName, Lsn};
use applier::{Applier, Counted};
use reader::Reader;

/// How often an idle position is written to the replica and acknowledged while nothing
/// else is applied, at most.
const IDLE_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// How long the pipeline stands still, at most, for a held cut's requester to name its
/// position (`tributary verify` takes a source snapshot meanwhile; its `--timeout` is at
/// most 60 s, under this).
pub const HOLD_LIMIT: Duration = Duration::from_secs(75);

/// Commands between reader and applier: enough to overlap a few source transactions
/// without holding much in memory.
const CHANNEL_CAPACITY: usize = 1024;

/// Bytes of decoded changes between reader and applier, at most: with wide rows the
/// command count alone would let a large transaction pile up in memory. A single change
/// larger than this waits until nothing else is buffered, then goes alone.
const BUFFER_BYTES: usize = 32 << 20;

/// Messages the reader takes from its receive buffer before looking at shutdown and
/// acknowledgements again; the applier takes commands in runs of the same length.
const RUN_LENGTH: usize = 256;

/// How long the polite end of streaming (final status update, CopyDone) may take before
/// the connection is simply dropped.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a pipeline ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Shutdown was requested and the last target transaction is committed and acknowledged.
    Stopped { applied: Lsn },
    /// Shutdown was requested before streaming started; an unfinished snapshot is
    /// discarded and starts over next time.
    Interrupted,
    /// A definite error of one table's ended the run (its target transaction rolled
    /// back): that table is held out now, and the next run, at once, streams the others
    /// from the replica's applied position.
    HeldOut(TableName),
}

enum Command {
    /// A source transaction whose changes follow; its commit record is at this position
    /// (a held cut stops before the first transaction at or after its position).
    Begin(Lsn),
    /// A change, with its share of [`BUFFER_BYTES`], given back when it is applied.
    Change(Change, OwnedSemaphorePermit),
    /// The end of a source transaction whose changes were sent.
    Commit(Lsn),
    /// A captured schema change, in its place among the changes.
    Ddl(DdlStatement),
    /// A position with nothing in flight before it.
    Idle(Lsn),
    /// Commit what is complete and finish (the reader stopped at a commit boundary).
    Stop,
}

/// Which tables' changes are applied: wal2json sends the whole database.
#[derive(Debug, Default)]
pub struct TableFilter {
    /// The connector's schemas.
    pub schemas: Vec<String>,
    /// Left out of the snapshot by a replica identity decision.
    pub excluded: HashSet<TableName>,
    /// With `include_new_tables` off: the snapshot's tables, and no other.
    pub only: Option<HashSet<TableName>>,
    /// Unlogged when the snapshot ran, so the replica has none of their rows: a change of
    /// one means it is logged now, and the replica cannot catch up without a new snapshot.
    pub unlogged: HashSet<TableName>,
    /// Tables whose copy is exact at a position the stream has not reached yet (see
    /// `pipeline/sync.rs`): a change is theirs only from a transaction whose commit record
    /// is at or after it, as the earlier ones are in the copy.
    pub copied_at: HashMap<TableName, Lsn>,
}

impl TableFilter {
    /// Whether the changes of a transaction whose commit record is at `commit` are new to
    /// `table`: not in its copy.
    pub fn after_copy(&self, table: &TableName, commit: Lsn) -> bool {
        self.copied_at.get(table).is_none_or(|at| commit >= *at)
    }

    /// Where every table is at the same source position: from there on the replica is
    /// one instant of the source, and branches may be cut.
    pub fn in_sync_at(&self, applied: Lsn) -> Lsn {
        self.copied_at.values().copied().fold(applied, Lsn::max)
    }

    pub fn applies(&self, table: &TableName) -> bool {
        self.schemas.contains(&table.schema)
            && (self.excluded.is_empty() || !self.excluded.contains(table))
            && self.only.as_ref().is_none_or(|only| only.contains(table))
    }
}

/// A table's own trouble, noticed while streaming, for the pipeline to record: one
/// table's problem stays with that table while the others stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableEvent {
    /// A schema change left the table without a usable replica identity: its INSERTs
    /// still apply, an UPDATE or DELETE of it would be lost (and stop it).
    NoIdentity { table: TableName, problem: String },
    /// A later schema change gave it one before any change of it was lost.
    IdentityBack(TableName),
    /// A change of it was lost (wal2json said so): it is held out of the stream from here
    /// on, until copied again.
    Stopped {
        table: TableName,
        problem: String,
        next_step: String,
    },
}

/// Where the changes go: the replica's apply session, and what a branch cut needs.
pub struct Target<'a> {
    pub sink: ReplicaSink,
    /// The branch store's control database, for `CREATE DATABASE`.
    pub store: &'a ConnInfo,
    /// Branches to cut from the replica between two target transactions.
    pub cuts: mpsc::Receiver<CutRequest>,
    pub metrics: ConnectorMetrics,
    /// Brings a replica table in line when a change no longer fits it.
    pub reconciler: Reconciler,
    /// Says what a notice that stops the pipeline means (the reader uses it).
    pub notices: Explainer,
    /// Where a table's own trouble is reported.
    pub table_events: mpsc::UnboundedSender<TableEvent>,
}

/// Copy the replica to a new database at a source commit boundary.
pub struct CutRequest {
    pub branch: BranchName,
    pub at: CutAt,
    /// The copy's source position and how long applying stood still, or why it failed.
    pub reply: oneshot::Sender<Result<BranchCut, String>>,
}

/// Which source commit boundary a cut takes.
pub enum CutAt {
    /// The next one.
    Next,
    /// Stand still at the next one and say where (`held`); then, given a position L
    /// (`target`), stream on and cut where every source transaction committed before L
    /// is applied and none after: the replica is then exactly what a snapshot exported at
    /// L sees. Dropping `target` gives the cut up.
    Held {
        held: oneshot::Sender<Lsn>,
        target: oneshot::Receiver<Lsn>,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct BranchCut {
    pub lsn: Lsn,
    pub paused: Duration,
}

/// Streams from `stream` into `target` until `shutdown`, starting at `applied` (the
/// replica's applied LSN), the changes to the tables `filter` lets through and the schema
/// changes `ddl` picks.
pub async fn run(
    stream: ReplicationStream,
    target: Target<'_>,
    applied: Lsn,
    filter: &TableFilter,
    ddl: DdlTracker,
    settings: &PipelineSettings,
    shutdown: &CancellationToken,
) -> Result<StreamEnd, PipelineError> {
    let (commands, inbox) = mpsc::channel(CHANNEL_CAPACITY);
    let (durable_tx, durable_rx) = watch::channel(applied);
    let reader = Reader {
        stream,
        tracker: AckTracker::new(applied),
        start: applied,
        filter,
        ddl,
        notices: target.notices,
        table_events: target.table_events.clone(),
        stopped: HashSet::new(),
        commands,
        buffer: Arc::new(Semaphore::new(BUFFER_BYTES)),
        durable: durable_rx,
        in_source_tx: false,
        skipping: false,
        tx_commit: applied,
        sent_in_tx: 0,
        unapplied: VecDeque::new(),
        oldest_unapplied: target.metrics.oldest_unapplied.clone(),
        abandon: CancellationToken::new(),
        stop_deadline: None,
        shutdown: shutdown.clone(),
        grace: settings.shutdown_grace(),
    };
    let applier = Applier {
        sink: Some(target.sink),
        store: target.store.clone(),
        cuts: target.cuts,
        cuts_open: true,
        metrics: target.metrics,
        reconciler: target.reconciler,
        table_events: target.table_events,
        without_identity: HashSet::new(),
        counted: Counted::default(),
        inbox,
        durable: durable_tx,
        applied,
        in_sync_at: filter.in_sync_at(applied),
        pending_commit: None,
        in_source_tx: false,
        batch_changes: 0,
        batch_started: None,
        ddl_tables: Vec::new(),
        ddl_in_tx: false,
        idle_candidate: None,
        last_idle_persist: None,
        held_cut: None,
    };
    // When the shutdown grace is over, an applier still waiting on the branch store is
    // dropped: its session closes, the server rolls its open transaction back, and the
    // replica keeps its last durable position (which the reader has).
    let abandon = reader.abandon.clone();
    let last_durable = reader.durable.clone();
    let applying = {
        let settings = settings.clone();
        async move {
            tokio::select! {
                applied = applier.run(settings) => applied,
                _ = abandon.cancelled() => Ok(*last_durable.borrow()),
            }
        }
    };
    // Its own task (see the module doc); dropping the handle with this future aborts it.
    let applying = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        applying.instrument(tracing::Span::current()),
    ));
    let (read, apply) = tokio::join!(reader.run(settings, shutdown), applying);
    // The applier's error is the cause when both failed: the reader only saw it go away.
    let applied = apply.map_err(PipelineError::from_join)??;
    read?;
    Ok(StreamEnd::Stopped { applied })
}
