//! The reader: the replication stream's decoded messages filtered into commands for the
//! applier, acknowledgements of what it made durable sent back to the source (the module
//! doc of `stream` has the picture).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Command, TableEvent, TableFilter, BUFFER_BYTES, RUN_LENGTH, STOP_TIMEOUT};
use crate::change::{Change, ChangeKind, LogicalMessage, Message, TableName};
use crate::pipeline::ddl::DdlTracker;
use crate::pipeline::notices::{self, Explainer, Verdict};
use crate::pipeline::PipelineError;
use crate::settings::PipelineSettings;
use crate::source::capture::{DdlMessage, MESSAGE_PREFIX};
use crate::source::{AckTracker, ReplicationStream, ServerError, StreamEvent};
use crate::types::Lsn;

pub(super) struct Reader<'a> {
    pub(super) stream: ReplicationStream,
    pub(super) tracker: AckTracker,
    /// The replica's applied LSN when streaming started: transactions ending at or before
    /// it are in the replica already.
    pub(super) start: Lsn,
    pub(super) filter: &'a TableFilter,
    pub(super) ddl: DdlTracker,
    pub(super) notices: Explainer,
    pub(super) table_events: mpsc::UnboundedSender<TableEvent>,
    /// Tables held out of the stream since a change of them was lost.
    pub(super) stopped: HashSet<TableName>,
    pub(super) commands: mpsc::Sender<Command>,
    /// What is left of [`BUFFER_BYTES`].
    pub(super) buffer: Arc<Semaphore>,
    pub(super) durable: watch::Receiver<Lsn>,
    /// Inside a source transaction (between its B and C records).
    pub(super) in_source_tx: bool,
    /// The current source transaction is in the replica already.
    pub(super) skipping: bool,
    /// Where the current source transaction's commit record is: the place of a change the
    /// reader makes itself (a materialized view's refresh).
    pub(super) tx_commit: Lsn,
    /// Changes of the current source transaction sent to the applier.
    pub(super) sent_in_tx: usize,
    /// End and commit time (µs since 1970) of the transactions read and not yet durable,
    /// oldest first: the apply lag.
    pub(super) unapplied: VecDeque<(Lsn, i64)>,
    pub(super) oldest_unapplied: Arc<AtomicI64>,
    /// Cancelled when the shutdown grace is over: the applier is abandoned.
    pub(super) abandon: CancellationToken,
    /// When the shutdown grace ends, once shutdown was asked for.
    pub(super) stop_deadline: Option<Instant>,
    pub(super) shutdown: CancellationToken,
    pub(super) grace: Duration,
}

impl Reader<'_> {
    pub(super) async fn run(
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

    async fn handle(&mut self, event: StreamEvent) -> Result<(), PipelineError> {
        match event {
            StreamEvent::Message(message) => self.on_message(message).await,
            StreamEvent::Notice(notice) => self.on_notice(notice).await,
            StreamEvent::Keepalive(k) => {
                if let Some(position) = self.tracker.idle_position(k.wal_end) {
                    // Best effort: a full channel means work in flight anyway.
                    let _ = self.commands.try_send(Command::Idle(position));
                }
                Ok(())
            }
        }
    }

    async fn on_message(&mut self, message: Message) -> Result<(), PipelineError> {
        match message {
            Message::Begin(begin) => {
                self.in_source_tx = true;
                self.sent_in_tx = 0;
                self.tx_commit = begin.commit_lsn;
                self.tracker.begin();
                // The server resumes at the slot's position, which may be before the
                // replica's: those transactions are passed over.
                self.skipping = begin.end_lsn <= self.start;
                if !self.skipping {
                    let at = begin.commit_time.timestamp_micros();
                    if self.unapplied.is_empty() {
                        self.oldest_unapplied.store(at, Ordering::Relaxed);
                    }
                    self.unapplied.push_back((begin.end_lsn, at));
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
                if !self.skipping
                    && self.filter.applies(&change.table)
                    && self.filter.after_copy(&change.table, self.tx_commit)
                    && !self.stopped.contains(&change.table)
                {
                    self.send_change(change).await?;
                }
            }
            Message::Commit(commit) => {
                self.in_source_tx = false;
                self.ddl.end_transaction();
                let end = commit.end_lsn;
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
                if self.in_source_tx && !self.skipping {
                    self.on_capture(message).await?;
                }
            }
            Message::Logical(_) => {}
        }
        Ok(())
    }

    /// A schema change message of tributary's capture objects, in its transaction.
    async fn on_capture(&mut self, message: LogicalMessage) -> Result<(), PipelineError> {
        let Some(body) = self.ddl.verify(&message.content) else {
            tracing::warn!(
                lsn = %message.lsn,
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
        if let Some(statement) = self.ddl.on_message(parsed, message.lsn, self.tx_commit)? {
            self.open_transaction().await?;
            self.sent_in_tx += 1;
            self.send(Command::Ddl(statement)).await?;
        }
        Ok(())
    }

    /// Stopping here keeps this transaction's commit from the applier: nothing of it or
    /// after it is applied or acknowledged (see `notices`).
    async fn on_notice(&mut self, notice: ServerError) -> Result<(), PipelineError> {
        let stopped = &self.stopped;
        match notices::judge(&notice, |t| self.filter.applies(t) && !stopped.contains(t)) {
            Verdict::Log => tracing::info!(target: "tributary::source", "{notice}"),
            Verdict::Ignore => {
                tracing::debug!(target: "tributary::source", "not replicated: {notice}")
            }
            Verdict::Stop(notice) => {
                let Some(view) = self.notices.materialized_view(&notice).await else {
                    let failure = self.notices.failure(&notice).await;
                    return match (notice.table(), failure) {
                        // About one table: that table stops, the others stream on.
                        (Some(table), PipelineError::Definite { error, next_step }) => {
                            self.stop_table(table.clone(), error, next_step);
                            Ok(())
                        }
                        (_, failure) => Err(failure),
                    };
                };
                // Any change to a view makes the sink refresh it there.
                let change = Change {
                    kind: ChangeKind::Delete,
                    lsn: self.tx_commit,
                    table: view,
                    columns: Vec::new(),
                    identity: Vec::new(),
                };
                if !self.skipping {
                    self.send_change(change).await?;
                }
            }
        }
        Ok(())
    }

    /// Holds `table` out of the stream from here on (in the replica it stays as it was
    /// before the lost change), and reports it.
    fn stop_table(&mut self, table: TableName, problem: String, next_step: String) {
        tracing::error!(%table, next_step, "table held out of the stream: {problem}");
        self.stopped.insert(table.clone());
        let _ = self.table_events.send(TableEvent::Stopped {
            table,
            problem,
            next_step,
        });
    }

    async fn send_change(&mut self, change: Change) -> Result<(), PipelineError> {
        self.open_transaction().await?;
        self.sent_in_tx += 1;
        let budget = self.budget(change.approx_bytes()).await?;
        self.send(Command::Change(change, budget)).await
    }

    /// Before the first command of a source transaction: where its commit record is.
    async fn open_transaction(&mut self) -> Result<(), PipelineError> {
        if self.sent_in_tx == 0 {
            self.send(Command::Begin(self.tx_commit)).await?;
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
