//! The streaming loop: replication messages in, target transactions out, acknowledgements
//! back.
//!
//! ```text
//!   ReplicationStream ──► decode ──► ReplicaSink::apply ─┐
//!          ▲                                              │ at a source COMMIT, when the
//!          │                                              │ batch is full or old enough:
//!          └── set_flushed(end) ◄── AckTracker ◄── ReplicaSink::commit(end)
//! ```
//!
//! Many source transactions share one target transaction; it always ends at a source
//! commit, and its last statement records that commit's end as the replica's applied LSN.
//! Only after that commit returns is the position acknowledged, so a crash anywhere leaves
//! the replica at some source commit and the slot at or before it: on restart, the stream
//! resumes from the applied LSN and nothing is lost or applied twice.
//!
//! Idle positions from keepalives are written to the progress row before they are
//! acknowledged too, so the slot's confirmed position never runs ahead of the replica's
//! applied LSN; that is what lets the pipeline check, after START_REPLICATION, that the
//! server has not skipped anything.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::change::Message;
use crate::pipeline::PipelineError;
use crate::settings::PipelineSettings;
use crate::sink::ReplicaSink;
use crate::source::{wal2json, AckTracker, ReplicationMessage, ReplicationStream};
use crate::types::Lsn;

/// How often an idle position is written to the replica and acknowledged, at most.
const IDLE_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// Why a pipeline ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Shutdown was requested and the last target transaction is committed and acknowledged.
    Stopped { applied: Lsn },
    /// Shutdown was requested before streaming started; an unfinished snapshot is
    /// discarded and starts over next time.
    Interrupted,
}

/// How long the polite end of streaming (final status update, CopyDone) may take before
/// the connection is simply dropped.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams from `stream` into `sink` until `shutdown`, starting at `applied` (the replica's
/// applied LSN). Only changes to tables in `schemas` are applied: wal2json sends the whole
/// database.
pub async fn run(
    stream: ReplicationStream,
    sink: &mut ReplicaSink,
    applied: Lsn,
    schemas: &[String],
    settings: &PipelineSettings,
    shutdown: &CancellationToken,
) -> Result<StreamEnd, PipelineError> {
    let mut state = Loop {
        schemas,
        stream,
        tracker: AckTracker::new(applied),
        applied,
        in_source_tx: false,
        skipping: false,
        batch_changes: 0,
        batch_started: None,
        pending_commit: None,
        idle_candidate: None,
        stop_deadline: None,
    };
    let result = state.run(sink, settings, shutdown).await;
    if result.is_err() && sink.in_transaction() {
        // The error may be the sink's own connection; the rollback is best effort, the
        // server discards the transaction with the session anyway.
        let _ = sink.rollback().await;
    }
    let end = result?;
    match tokio::time::timeout(STOP_TIMEOUT, state.stream.stop()).await {
        Ok(Ok(client)) => client.close().await,
        Ok(Err(e)) => tracing::debug!("ending replication: {e}"),
        // Still reading the rest of a large transaction: closing is enough, the server
        // keeps the last acknowledged position.
        Err(_) => tracing::debug!("ending replication timed out; closing the connection"),
    }
    Ok(end)
}

struct Loop<'a> {
    schemas: &'a [String],
    stream: ReplicationStream,
    tracker: AckTracker,
    /// Durable on the replica: its progress row holds this.
    applied: Lsn,
    /// Between a source BEGIN and its COMMIT.
    in_source_tx: bool,
    /// The current source transaction is already in the replica (its end ≤ `applied`).
    skipping: bool,
    /// Changes in the open target transaction.
    batch_changes: usize,
    batch_started: Option<Instant>,
    /// End of the last source commit inside the open target transaction.
    pending_commit: Option<Lsn>,
    /// A keepalive position that may be persisted and acknowledged.
    idle_candidate: Option<Lsn>,
    /// Set at shutdown: finish the current source transaction by then, or give up on it.
    stop_deadline: Option<Instant>,
}

impl Loop<'_> {
    async fn run(
        &mut self,
        sink: &mut ReplicaSink,
        settings: &PipelineSettings,
        shutdown: &CancellationToken,
    ) -> Result<StreamEnd, PipelineError> {
        let mut idle_timer = tokio::time::interval(IDLE_PERSIST_INTERVAL);
        idle_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            // A stop at a commit boundary is immediate: commit what is open and leave.
            if self.stop_deadline.is_some() && !self.in_source_tx {
                self.commit(sink).await?;
                return Ok(StreamEnd::Stopped {
                    applied: self.applied,
                });
            }
            let batch_due = match (self.batch_started, self.in_source_tx) {
                (Some(started), false) => started + settings.batch_max_delay(),
                _ => far_future,
            };
            let stop_due = self.stop_deadline.unwrap_or(far_future);

            tokio::select! {
                // Shutdown first, so that a busy stream cannot delay noticing it; then
                // the deadlines; then new WAL. Keepalive answers and status updates
                // happen inside `next()`.
                biased;
                _ = shutdown.cancelled(), if self.stop_deadline.is_none() => {
                    self.stop_deadline = Some(Instant::now() + settings.shutdown_grace());
                }
                _ = tokio::time::sleep_until(stop_due), if self.stop_deadline.is_some() => {
                    tracing::warn!(
                        "shutdown grace period over inside a source transaction: rolling back \
                         the open target transaction; it is applied again after restart"
                    );
                    if sink.in_transaction() {
                        sink.rollback().await?;
                    }
                    return Ok(StreamEnd::Stopped { applied: self.applied });
                }
                _ = tokio::time::sleep_until(batch_due) => self.commit(sink).await?,
                _ = idle_timer.tick() => self.persist_idle(sink).await?,
                message = self.stream.next() => {
                    match message? {
                        Some(ReplicationMessage::XLogData(x)) => {
                            let message = wal2json::decode(&x.data)?;
                            self.handle(message, sink, settings).await?;
                        }
                        Some(ReplicationMessage::Keepalive(k)) => {
                            if !sink.in_transaction() {
                                if let Some(position) = self.tracker.idle_position(k.wal_end) {
                                    self.idle_candidate = Some(position);
                                }
                            }
                        }
                        None => return Err(PipelineError::StreamEnded),
                    }
                }
            }
        }
    }

    async fn handle(
        &mut self,
        message: Message,
        sink: &mut ReplicaSink,
        settings: &PipelineSettings,
    ) -> Result<(), PipelineError> {
        match message {
            Message::Begin(begin) => {
                self.in_source_tx = true;
                self.idle_candidate = None;
                self.tracker.begin();
                // The server resumes at the slot's position, which may be before the
                // replica's; transactions already applied are recognised and passed over.
                self.skipping = begin.end_lsn.is_some_and(|end| end <= self.applied);
            }
            Message::Change(change) => {
                if self.skipping || !self.schemas.contains(&change.table.schema) {
                    return Ok(());
                }
                if !self.in_source_tx {
                    return Err(PipelineError::definite(
                        format!(
                            "a change to {}.{} arrived outside a transaction",
                            change.table.schema, change.table.name
                        ),
                        "report this to the tributary developers",
                    ));
                }
                sink.apply(&change).await?;
                self.batch_changes += 1;
                self.batch_started.get_or_insert_with(Instant::now);
            }
            Message::Commit(commit) => {
                self.in_source_tx = false;
                let end = commit.end_lsn.ok_or_else(|| {
                    PipelineError::definite(
                        "a COMMIT arrived without its LSN",
                        "report this to the tributary developers",
                    )
                })?;
                self.tracker.commit(end);
                if self.skipping {
                    self.skipping = false;
                    return Ok(());
                }
                if sink.in_transaction() {
                    self.pending_commit = Some(end);
                    let full = self.batch_changes >= settings.batch_max_changes;
                    let old = self
                        .batch_started
                        .is_some_and(|t| t.elapsed() >= settings.batch_max_delay());
                    if full || old || self.stop_deadline.is_some() {
                        self.commit(sink).await?;
                    }
                } else {
                    // Nothing of this transaction concerns the replica: its end is an idle
                    // position like a keepalive's.
                    self.idle_candidate = Some(end);
                }
            }
            // Transactional messages carry DDL for schema-change capture (not yet used);
            // others are not for us.
            Message::Logical(_) => {}
        }
        Ok(())
    }

    /// Commits the open target transaction at the last source commit and acknowledges it.
    async fn commit(&mut self, sink: &mut ReplicaSink) -> Result<(), PipelineError> {
        let Some(end) = self.pending_commit.take() else {
            return Ok(());
        };
        sink.commit(end).await?;
        self.applied = end;
        self.batch_changes = 0;
        self.batch_started = None;
        self.tracker.applied(end);
        self.stream.set_flushed(self.tracker.flushed());
        Ok(())
    }

    /// Records an idle position in the replica, then acknowledges it.
    async fn persist_idle(&mut self, sink: &mut ReplicaSink) -> Result<(), PipelineError> {
        if self.in_source_tx || sink.in_transaction() {
            return Ok(());
        }
        let Some(position) = self.idle_candidate.take() else {
            return Ok(());
        };
        if position <= self.applied {
            return Ok(());
        }
        sink.mark_applied(position).await?;
        self.applied = position;
        self.tracker.applied(position);
        self.stream.set_flushed(self.tracker.flushed());
        Ok(())
    }
}
