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

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::change::{Change, ChangeKind, Message, TableName};
use crate::metrics::ConnectorMetrics;
use crate::pg::ConnInfo;
use crate::pipeline::ddl::{DdlStatement, DdlTracker};
use crate::pipeline::drift::Reconciler;
use crate::pipeline::notices::{self, Explainer, Verdict};
use crate::pipeline::PipelineError;
use crate::settings::PipelineSettings;
use crate::sink::{self, ReplicaSink, SinkError};
use crate::source::capture::{DdlMessage, MESSAGE_PREFIX};
use crate::source::{wal2json, AckTracker, ReplicationMessage, ReplicationStream};
use crate::types::{BranchName, Lsn};

/// How often an idle position is written to the replica and acknowledged while nothing
/// else is applied, at most.
const IDLE_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

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
}

enum Command {
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
}

impl TableFilter {
    pub fn applies(&self, table: &TableName) -> bool {
        self.schemas.contains(&table.schema)
            && (self.excluded.is_empty() || !self.excluded.contains(table))
            && self.only.as_ref().is_none_or(|only| only.contains(table))
    }
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
}

/// Copy the replica to a new database at the next source commit boundary.
pub struct CutRequest {
    pub branch: BranchName,
    /// The copy's source position and how long applying stood still, or why it failed.
    pub reply: oneshot::Sender<Result<BranchCut, String>>,
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
        commands,
        buffer: Arc::new(Semaphore::new(BUFFER_BYTES)),
        durable: durable_rx,
        in_source_tx: false,
        skipping: false,
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
        counted: Counted::default(),
        inbox,
        durable: durable_tx,
        applied,
        pending_commit: None,
        in_source_tx: false,
        batch_changes: 0,
        batch_started: None,
        ddl_tables: Vec::new(),
        ddl_in_tx: false,
        idle_candidate: None,
        last_idle_persist: None,
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

struct Reader<'a> {
    stream: ReplicationStream,
    tracker: AckTracker,
    /// The replica's applied LSN when streaming started: transactions ending at or before
    /// it are in the replica already.
    start: Lsn,
    filter: &'a TableFilter,
    ddl: DdlTracker,
    notices: Explainer,
    commands: mpsc::Sender<Command>,
    /// What is left of [`BUFFER_BYTES`].
    buffer: Arc<Semaphore>,
    durable: watch::Receiver<Lsn>,
    /// Inside a source transaction (between its B and C records).
    in_source_tx: bool,
    /// The current source transaction is in the replica already.
    skipping: bool,
    /// Changes of the current source transaction sent to the applier.
    sent_in_tx: usize,
    /// End and commit time (µs since 1970) of the transactions read and not yet durable,
    /// oldest first: the apply lag.
    unapplied: VecDeque<(Lsn, i64)>,
    oldest_unapplied: Arc<AtomicI64>,
    /// Cancelled when the shutdown grace is over: the applier is abandoned.
    abandon: CancellationToken,
    /// When the shutdown grace ends, once shutdown was asked for.
    stop_deadline: Option<Instant>,
    shutdown: CancellationToken,
    grace: Duration,
}

impl Reader<'_> {
    async fn run(
        mut self,
        settings: &PipelineSettings,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let mut result = self.read(settings, shutdown).await;
        if let Err(PipelineError::GraceExpired) = result {
            tracing::warn!(
                "shutdown grace period over inside a transaction: rolling back the open target \
                 transaction; it is applied again after restart"
            );
            self.abandon.cancel();
            result = Ok(());
        }
        // A clean stop told the applier so; otherwise dropping the sender rolls it back.
        // Either way, take its last durable position before saying goodbye to the source,
        // waiting no longer than the grace period: an applier still blocked then is
        // abandoned (see `run`).
        let deadline = self
            .stop_deadline
            .unwrap_or_else(|| Instant::now() + settings.shutdown_grace());
        let Reader {
            mut stream,
            mut durable,
            commands,
            abandon,
            ..
        } = self;
        drop(commands);
        while !abandon.is_cancelled() {
            tokio::select! {
                changed = durable.changed() => match changed {
                    Ok(()) => stream.set_flushed(*durable.borrow_and_update()),
                    Err(_) => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        "the branch store did not finish the open target transaction within \
                         the grace period: rolling it back; it is applied again after restart"
                    );
                    abandon.cancel();
                    break;
                }
            }
        }
        stream.set_flushed(*durable.borrow());
        match tokio::time::timeout(STOP_TIMEOUT, stream.stop()).await {
            Ok(Ok(client)) => client.close().await,
            Ok(Err(e)) => tracing::debug!("ending replication: {e}"),
            // Still reading the rest of a large transaction: closing is enough, the server
            // keeps the last acknowledged position.
            Err(_) => tracing::debug!("ending replication timed out; closing the connection"),
        }
        result
    }

    async fn read(
        &mut self,
        settings: &PipelineSettings,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            if self.stop_deadline.is_some() && !self.in_source_tx {
                return match self.send(Command::Stop).await {
                    Err(PipelineError::GraceExpired) => Err(PipelineError::GraceExpired),
                    // An applier that is gone has said why already.
                    _ => Ok(()),
                };
            }
            tokio::select! {
                // Shutdown first, so that a busy stream cannot delay noticing it; then the
                // grace deadline; then the applier's progress; then new WAL. Keepalive
                // answers and status updates happen inside `next()`.
                biased;
                _ = shutdown.cancelled(), if self.stop_deadline.is_none() => {
                    self.stop_deadline = Some(Instant::now() + settings.shutdown_grace());
                }
                _ = tokio::time::sleep_until(self.stop_deadline.unwrap_or(far_future)), if self.stop_deadline.is_some() => {
                    return Err(PipelineError::GraceExpired);
                }
                // The applier failed: its error is the one that counts.
                _ = self.commands.closed() => return Ok(()),
                changed = self.durable.changed() => {
                    if changed.is_ok() {
                        let durable = *self.durable.borrow_and_update();
                        self.tracker.applied(durable);
                        self.stream.set_flushed(self.tracker.flushed());
                        // Right away rather than at the next status tick: the source may
                        // recycle WAL sooner, and the slot's lag shows the replica's.
                        self.stream.send_status().await?;
                        while self.unapplied.front().is_some_and(|(end, _)| *end <= durable) {
                            self.unapplied.pop_front();
                        }
                        let oldest = self.unapplied.front().map_or(0, |(_, at)| *at);
                        self.oldest_unapplied.store(oldest, Ordering::Relaxed);
                    }
                }
                message = self.stream.next() => {
                    let Some(message) = message? else {
                        return Err(PipelineError::StreamEnded);
                    };
                    // Take what has arrived already in one go (up to a limit, so that
                    // shutdown and acknowledgements are still looked at often), rather
                    // than a `select!` per message.
                    let mut next = Some(message);
                    let mut taken = 0;
                    while let Some(message) = next.take() {
                        self.handle(message).await?;
                        taken += 1;
                        if taken < RUN_LENGTH {
                            next = self.stream.try_next()?;
                        }
                    }
                }
            }
        }
    }

    async fn handle(&mut self, message: ReplicationMessage) -> Result<(), PipelineError> {
        match message {
            ReplicationMessage::XLogData(x) => match wal2json::decode(&x.data)? {
                Message::Begin(begin) => {
                    self.in_source_tx = true;
                    self.sent_in_tx = 0;
                    self.tracker.begin();
                    // The server resumes at the slot's position, which may be before the
                    // replica's: those transactions are passed over.
                    self.skipping = begin.end_lsn.is_some_and(|end| end <= self.start);
                    if let (false, Some(end), Some(at)) = (
                        self.skipping,
                        begin.end_lsn,
                        begin.commit_time.as_deref().and_then(commit_micros),
                    ) {
                        if self.unapplied.is_empty() {
                            self.oldest_unapplied.store(at, Ordering::Relaxed);
                        }
                        self.unapplied.push_back((end, at));
                    }
                }
                Message::Change(change) => {
                    if !self.in_source_tx {
                        return Err(PipelineError::definite(
                            format!(
                                "a change to {}.{} arrived outside a transaction",
                                change.table.schema, change.table.name
                            ),
                            "report this to the tributary developers",
                        ));
                    }
                    if !self.skipping && self.filter.unlogged.contains(&change.table) {
                        return Err(self.ddl.logged_again(&change.table));
                    }
                    if !self.skipping && self.filter.applies(&change.table) {
                        self.sent_in_tx += 1;
                        let budget = self.budget(change.approx_bytes()).await?;
                        self.send(Command::Change(change, budget)).await?;
                    }
                }
                Message::Commit(commit) => {
                    self.in_source_tx = false;
                    self.ddl.end_transaction();
                    let end = commit.end_lsn.ok_or_else(|| {
                        PipelineError::definite(
                            "a COMMIT arrived without its LSN",
                            "report this to the tributary developers",
                        )
                    })?;
                    self.tracker.commit(end);
                    if self.skipping {
                        self.skipping = false;
                    } else if self.sent_in_tx > 0 {
                        self.send(Command::Commit(end)).await?;
                    } else {
                        // Nothing of it concerns the replica: an idle position.
                        self.send(Command::Idle(end)).await?;
                    }
                }
                // Capture messages are transactional; other messages are not for us
                // (wal2json is asked for this prefix only).
                Message::Logical(message)
                    if message.transactional && message.prefix == MESSAGE_PREFIX =>
                {
                    if !self.in_source_tx || self.skipping {
                        return Ok(());
                    }
                    let Some(body) = self.ddl.verify(&message.content) else {
                        tracing::warn!(
                            lsn = ?message.lsn,
                            "a schema change message without a valid signature (not emitted by \
                             tributary's capture objects, or capture is not set up for this \
                             role): not replayed"
                        );
                        return Ok(());
                    };
                    let parsed = DdlMessage::parse(body).map_err(|e| {
                        PipelineError::definite(
                            e.to_string(),
                            "upgrade tributary to the version of the source's capture objects, \
                             or report this message to the tributary developers",
                        )
                    })?;
                    if let Some(statement) = self.ddl.on_message(parsed, message.lsn)? {
                        self.sent_in_tx += 1;
                        self.send(Command::Ddl(statement)).await?;
                    }
                }
                Message::Logical(_) => {}
            },
            // Stopping here keeps this transaction's commit from the applier: nothing of it
            // or after it is applied or acknowledged (see `notices`).
            ReplicationMessage::Notice(notice) => {
                match notices::judge(&notice, |t| self.filter.applies(t)) {
                    Verdict::Log => tracing::info!(target: "tributary::source", "{notice}"),
                    Verdict::Ignore => {
                        tracing::debug!(target: "tributary::source", "not replicated: {notice}")
                    }
                    Verdict::Stop(notice) => {
                        let Some(view) = self.notices.materialized_view(&notice).await else {
                            return Err(self.notices.failure(&notice).await);
                        };
                        // Any change to a view makes the sink refresh it there.
                        let change = Change {
                            kind: ChangeKind::Delete,
                            xid: None,
                            lsn: None,
                            table: view,
                            columns: Vec::new(),
                            identity: Vec::new(),
                        };
                        if !self.skipping {
                            self.sent_in_tx += 1;
                            let budget = self.budget(change.approx_bytes()).await?;
                            self.send(Command::Change(change, budget)).await?;
                        }
                    }
                }
            }
            ReplicationMessage::Keepalive(k) => {
                if let Some(position) = self.tracker.idle_position(k.wal_end) {
                    // Best effort: a full channel means work in flight anyway.
                    let _ = self.commands.try_send(Command::Idle(position));
                }
            }
        }
        Ok(())
    }

    /// Takes `bytes` of the buffer budget, waiting (and keeping the replication connection
    /// alive) while the applier holds too much.
    async fn budget(&mut self, bytes: usize) -> Result<OwnedSemaphorePermit, PipelineError> {
        let permits = u32::try_from(bytes.clamp(1, BUFFER_BYTES)).expect("BUFFER_BYTES fits");
        if let Ok(permit) = Arc::clone(&self.buffer).try_acquire_many_owned(permits) {
            return Ok(permit);
        }
        loop {
            tokio::select! {
                permit = Arc::clone(&self.buffer).acquire_many_owned(permits) => {
                    return Ok(permit.expect("the budget is never closed"));
                }
                sent = self.stream.status_when_due() => sent?,
                stop = stopping(&self.shutdown, &mut self.stop_deadline, self.grace) => stop?,
            }
        }
    }

    /// Hands a command to the applier; if it is gone, its error explains why. While the
    /// channel is full nothing more is read from the source, but status updates go on, so
    /// a slow branch store does not cost the replication connection.
    async fn send(&mut self, command: Command) -> Result<(), PipelineError> {
        let command = match self.commands.try_send(command) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(command)) => command,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(PipelineError::definite(
                    "the applier stopped",
                    "see the applier's error",
                ))
            }
        };
        loop {
            tokio::select! {
                permit = self.commands.reserve() => {
                    let permit = permit.map_err(|_| {
                        PipelineError::definite("the applier stopped", "see the applier's error")
                    })?;
                    permit.send(command);
                    return Ok(());
                }
                sent = self.stream.status_when_due() => sent?,
                stop = stopping(&self.shutdown, &mut self.stop_deadline, self.grace) => stop?,
            }
        }
    }
}

/// While the reader waits for the applier: notes a shutdown (starting the grace period),
/// and fails with [`PipelineError::GraceExpired`] once the grace is over.
async fn stopping(
    shutdown: &CancellationToken,
    deadline: &mut Option<Instant>,
    grace: Duration,
) -> Result<(), PipelineError> {
    match *deadline {
        None => {
            shutdown.cancelled().await;
            *deadline = Some(Instant::now() + grace);
            Ok(())
        }
        Some(at) => {
            tokio::time::sleep_until(at).await;
            Err(PipelineError::GraceExpired)
        }
    }
}

/// What one target transaction applied, for the metrics.
#[derive(Default)]
struct Counted {
    by_kind: [u64; 4],
    transactions: u64,
    bytes: u64,
}

impl Counted {
    fn count(&mut self, change: &Change) {
        let kind = match change.kind {
            ChangeKind::Insert => 0,
            ChangeKind::Update => 1,
            ChangeKind::Delete => 2,
            ChangeKind::Truncate => 3,
        };
        self.by_kind[kind] += 1;
        self.bytes += change.approx_bytes() as u64;
    }

    fn add_to(self, metrics: &ConnectorMetrics) {
        let [inserts, updates, deletes, truncates] = self.by_kind;
        metrics.inserts.inc_by(inserts);
        metrics.updates.inc_by(updates);
        metrics.deletes.inc_by(deletes);
        metrics.truncates.inc_by(truncates);
        metrics.transactions.inc_by(self.transactions);
        metrics.bytes.inc_by(self.bytes);
    }
}

/// wal2json's commit time (`2024-11-21 20:12:39.02236+00`) in µs since 1970.
fn commit_micros(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.timestamp_micros())
}

fn no_session() -> PipelineError {
    PipelineError::definite(
        "the replica's session was not reopened after a branch cut",
        "restart tributary; the pipeline resumes from the replica's applied position",
    )
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Stop,
}

struct Applier {
    /// `None` only while a branch is cut (the replica must have no session then).
    sink: Option<ReplicaSink>,
    store: ConnInfo,
    cuts: mpsc::Receiver<CutRequest>,
    cuts_open: bool,
    metrics: ConnectorMetrics,
    reconciler: Reconciler,
    /// Counted in the open target transaction; added to the metrics when it commits.
    counted: Counted,
    inbox: mpsc::Receiver<Command>,
    durable: watch::Sender<Lsn>,
    /// Durable on the replica: its progress row holds this.
    applied: Lsn,
    /// End of the last source commit inside the open target transaction.
    pending_commit: Option<Lsn>,
    /// Changes received after the last commit.
    in_source_tx: bool,
    batch_changes: usize,
    batch_started: Option<Instant>,
    /// Tables that schema changes of the current source transaction created or altered.
    ddl_tables: Vec<TableName>,
    /// A schema change is in the open target transaction: it commits at the end of this
    /// source transaction (`ALTER TYPE … ADD VALUE` cannot be used before it commits).
    ddl_in_tx: bool,
    idle_candidate: Option<Lsn>,
    last_idle_persist: Option<Instant>,
}

impl Applier {
    async fn run(mut self, settings: PipelineSettings) -> Result<Lsn, PipelineError> {
        let result = self.apply(&settings).await;
        let abandon = result.is_err() || self.in_source_tx;
        if let Some(sink) = self.sink.as_mut().filter(|s| abandon && s.in_transaction()) {
            // Best effort: the server discards the transaction with the session anyway.
            let _ = sink.rollback().await;
        }
        result.map(|()| self.applied)
    }

    fn sink(&mut self) -> Result<&mut ReplicaSink, PipelineError> {
        self.sink.as_mut().ok_or_else(no_session)
    }

    /// Commits what is open, closes the replica's session, copies the replica into the
    /// branch's database, and opens a session again. A failed copy is the branch's
    /// failure, not the pipeline's.
    async fn cut(&mut self, request: CutRequest) -> Result<(), PipelineError> {
        self.commit().await?;
        let started = Instant::now();
        let (database, token, nan) = {
            let sink = self.sink()?;
            (sink.database().to_owned(), sink.token(), sink.nan_policy())
        };
        self.sink = None;
        let copied = sink::copy_database(&self.store, &database, request.branch.as_str()).await;
        match ReplicaSink::connect(&self.store, &database, token).await {
            Ok(sink) => self.sink = Some(sink.with_nan_policy(nan)),
            Err(e) => {
                // Fenced: the copy may hold a newer owner's commits, not ours at `applied`.
                if copied.is_ok() && matches!(e, SinkError::Fenced { .. }) {
                    let _ = sink::drop_database(&self.store, request.branch.as_str(), true).await;
                }
                return Err(e.into());
            }
        }
        let cut = BranchCut {
            lsn: self.applied,
            paused: started.elapsed(),
        };
        if copied.is_ok() {
            self.metrics.branch_cut.observe(cut.paused.as_secs_f64());
        }
        match &copied {
            Ok(()) => tracing::info!(
                branch = %request.branch,
                lsn = %cut.lsn,
                paused_ms = cut.paused.as_millis() as u64,
                "branch cut"
            ),
            Err(e) => tracing::warn!(branch = %request.branch, "branch cut failed: {e}"),
        }
        // The requester may have given up; the branch is recorded either way by it.
        let _ = request
            .reply
            .send(copied.map(|()| cut).map_err(|e| e.to_string()));
        Ok(())
    }

    async fn apply(&mut self, settings: &PipelineSettings) -> Result<(), PipelineError> {
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut commands = Vec::with_capacity(RUN_LENGTH);
        loop {
            let batch_due = match (self.batch_started, self.in_source_tx) {
                (Some(started), false) => started + settings.batch_max_delay(),
                _ => far_future,
            };
            // While work is in flight its commit moves the position on instead; once it
            // has, a candidate waits only for the interval since the last idle write, so
            // the end of a catch-up is acknowledged at once.
            let busy = self.in_source_tx || self.sink.as_ref().is_some_and(|s| s.in_transaction());
            let idle_due = match (self.idle_candidate, self.last_idle_persist) {
                (Some(_), _) if busy => far_future,
                (Some(_), Some(last)) => last + IDLE_PERSIST_INTERVAL,
                (Some(_), None) => Instant::now(),
                (None, _) => far_future,
            };
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(batch_due) => self.commit().await?,
                _ = tokio::time::sleep_until(idle_due) => self.persist_idle().await?,
                // Only at a source commit boundary.
                request = self.cuts.recv(), if self.cuts_open && !self.in_source_tx => match request {
                    Some(request) => self.cut(request).await?,
                    None => self.cuts_open = false,
                },
                received = self.inbox.recv_many(&mut commands, RUN_LENGTH) => {
                    if received == 0 {
                        // The reader stopped without a clean boundary: roll back (in `run`).
                        self.in_source_tx = true;
                        return Ok(());
                    }
                    for command in commands.drain(..) {
                        if self.execute(command, settings).await? == Flow::Stop {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn execute(
        &mut self,
        command: Command,
        settings: &PipelineSettings,
    ) -> Result<Flow, PipelineError> {
        match command {
            Command::Change(change, budget) => {
                self.in_source_tx = true;
                self.counted.count(&change);
                if let Some(misfit) = self.sink()?.apply(change).await? {
                    self.reconcile(misfit.change).await?;
                }
                drop(budget);
                self.batch_changes += 1;
                self.batch_started.get_or_insert_with(Instant::now);
            }
            Command::Ddl(ddl) => {
                self.in_source_tx = true;
                tracing::info!(tag = %ddl.tag, lsn = ?ddl.lsn, "replaying a schema change");
                self.sink()?
                    .execute_ddl(&ddl.sql, &ddl.search_path, &ddl.settings, &ddl.tag, ddl.lsn)
                    .await?;
                self.sink()?
                    .record_source_tables(&ddl.tables, &ddl.dropped)
                    .await?;
                self.metrics.schema_changes.inc();
                self.ddl_tables
                    .extend(ddl.tables.into_iter().map(|(table, _)| table));
                self.ddl_in_tx = true;
                self.batch_started.get_or_insert_with(Instant::now);
            }
            Command::Commit(end) => {
                self.in_source_tx = false;
                self.pending_commit = Some(end);
                self.counted.transactions += 1;
                if !self.ddl_tables.is_empty() {
                    self.check_identities(end).await?;
                }
                let full = self.batch_changes >= settings.batch_max_changes || self.ddl_in_tx;
                let old = self
                    .batch_started
                    .is_some_and(|t| t.elapsed() >= settings.batch_max_delay());
                if full || old {
                    self.commit().await?;
                }
                // A commit boundary: a waiting cut takes it, however busy the stream is.
                if self.cuts_open {
                    match self.cuts.try_recv() {
                        Ok(request) => self.cut(request).await?,
                        Err(mpsc::error::TryRecvError::Empty) => {}
                        Err(mpsc::error::TryRecvError::Disconnected) => self.cuts_open = false,
                    }
                }
            }
            Command::Idle(position) => {
                self.idle_candidate =
                    Some(self.idle_candidate.map_or(position, |c| c.max(position)));
            }
            Command::Stop => {
                self.commit().await?;
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// A change did not fit its replica table: brings the table in line with the source
    /// (in the open target transaction), then applies the change.
    async fn reconcile(&mut self, change: Change) -> Result<(), PipelineError> {
        let sink = self.sink.as_mut().ok_or_else(no_session)?;
        let statements = self.reconciler.reconcile(sink, &change).await?;
        tracing::warn!(
            table = %change.table,
            lsn = ?change.lsn,
            ?statements,
            "schema drift: the replica table was brought in line with the source"
        );
        self.metrics.schema_drift.inc();
        // Like a captured schema change: committed at the end of this source transaction.
        self.ddl_in_tx = true;
        let table = change.table.clone();
        if self.sink()?.apply(change).await?.is_some() {
            return Err(PipelineError::definite(
                format!(
                    "a change to {table} still does not fit the replica table after reconciling it"
                ),
                "take a new snapshot with `tributary connector retry-setup`; and report this to \
                 the tributary developers",
            ));
        }
        Ok(())
    }

    /// At the end of a source transaction with schema changes: every table they created
    /// or altered must still have a replica identity, or the source's UPDATEs and DELETEs
    /// of it never reach the stream (wal2json drops them without a word).
    async fn check_identities(&mut self, end: Lsn) -> Result<(), PipelineError> {
        let mut tables = std::mem::take(&mut self.ddl_tables);
        tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        tables.dedup();
        let missing = self.sink()?.tables_without_identity(&tables).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        Err(PipelineError::definite(
            format!(
                "a schema change in the source transaction ending at {end} left {} without a \
                 primary key or replica identity: the source cannot send its UPDATEs and \
                 DELETEs, so the replica would silently miss them",
                names.join(", ")
            ),
            "on the source, give the table a primary key (ALTER TABLE … ADD PRIMARY KEY) or \
             REPLICA IDENTITY FULL, then take a new snapshot with `tributary connector \
             retry-setup` (its --replica-identity-decisions can exclude the table instead)",
        ))
    }

    /// Commits the open target transaction at the last source commit.
    async fn commit(&mut self) -> Result<(), PipelineError> {
        let Some(end) = self.pending_commit.take() else {
            return Ok(());
        };
        self.sink()?.commit(end).await?;
        self.ddl_in_tx = false;
        std::mem::take(&mut self.counted).add_to(&self.metrics);
        self.applied = end;
        self.batch_changes = 0;
        self.batch_started = None;
        self.durable.send_replace(end);
        Ok(())
    }

    /// Records an idle position in the replica, then passes it on for acknowledgement.
    async fn persist_idle(&mut self) -> Result<(), PipelineError> {
        if self.in_source_tx || self.sink()?.in_transaction() {
            return Ok(()); // Not scheduled then (see `apply`); its commit moves on instead.
        }
        let Some(position) = self.idle_candidate.take() else {
            return Ok(());
        };
        self.last_idle_persist = Some(Instant::now());
        if position <= self.applied {
            return Ok(());
        }
        self.sink()?.mark_applied(position).await?;
        self.applied = position;
        self.durable.send_replace(position);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_times_as_wal2json_writes_them() {
        assert_eq!(
            commit_micros("2024-11-21 20:12:39.02236+00"),
            Some(1_732_219_959_022_360)
        );
        assert_eq!(
            commit_micros("2024-11-21 21:12:39+01"),
            Some(1_732_219_959_000_000)
        );
        assert_eq!(commit_micros("yesterday"), None);
    }
}
