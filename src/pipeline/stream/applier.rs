//! The applier: commands from the reader applied in target transactions that end at
//! source commits, each recording its position; branches cut between them.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{
    BranchCut, Command, CutAt, CutRequest, TableEvent, HOLD_LIMIT, IDLE_PERSIST_INTERVAL,
    RUN_LENGTH,
};
use crate::change::{Change, ChangeKind, TableName};
use crate::metrics::ConnectorMetrics;
use crate::pg::ConnInfo;
use crate::pipeline::drift::Reconciler;
use crate::pipeline::PipelineError;
use crate::settings::PipelineSettings;
use crate::sink::{self, ReplicaSink, SinkError};
use crate::types::{BranchName, Lsn};

/// What one target transaction applied, for the metrics.
#[derive(Default)]
pub(super) struct Counted {
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

pub(super) struct Applier {
    /// `None` only while a branch is cut (the replica must have no session then).
    pub(super) sink: Option<ReplicaSink>,
    pub(super) store: ConnInfo,
    pub(super) cuts: mpsc::Receiver<CutRequest>,
    pub(super) cuts_open: bool,
    pub(super) metrics: ConnectorMetrics,
    pub(super) reconciler: Reconciler,
    pub(super) table_events: mpsc::UnboundedSender<TableEvent>,
    /// Tables a schema change left without a usable replica identity (see
    /// `check_identities`).
    pub(super) without_identity: HashSet<TableName>,
    /// Counted in the open target transaction; added to the metrics when it commits.
    pub(super) counted: Counted,
    pub(super) inbox: mpsc::Receiver<Command>,
    pub(super) durable: watch::Sender<Lsn>,
    /// Durable on the replica: its progress row holds this.
    pub(super) applied: Lsn,
    /// No branch is cut before `applied` reaches it: until then some tables' copies are
    /// ahead of the others (`TableFilter::in_sync_at`).
    pub(super) in_sync_at: Lsn,
    /// End of the last source commit inside the open target transaction.
    pub(super) pending_commit: Option<Lsn>,
    /// Changes received after the last commit.
    pub(super) in_source_tx: bool,
    pub(super) batch_changes: usize,
    pub(super) batch_started: Option<Instant>,
    /// Tables that schema changes of the current source transaction created or altered.
    pub(super) ddl_tables: Vec<TableName>,
    /// A schema change is in the open target transaction: it commits at the end of this
    /// source transaction (`ALTER TYPE … ADD VALUE` cannot be used before it commits).
    pub(super) ddl_in_tx: bool,
    pub(super) idle_candidate: Option<Lsn>,
    pub(super) last_idle_persist: Option<Instant>,
    /// A held cut given its position, waiting for the stream to reach it; no other cut is
    /// taken meanwhile.
    pub(super) held_cut: Option<HeldCut>,
}

/// A cut at the boundary before the first source transaction committed at or after `at`.
pub(super) struct HeldCut {
    branch: BranchName,
    at: Lsn,
    reply: oneshot::Sender<Result<BranchCut, String>>,
    /// How long applying stood still while the requester looked for its position.
    held: Duration,
}

impl Applier {
    pub(super) async fn run(mut self, settings: PipelineSettings) -> Result<Lsn, PipelineError> {
        let result = self.apply(&settings).await;
        let abandon = result.is_err() || self.in_source_tx;
        if let Some(sink) = self.sink.as_mut().filter(|s| abandon && s.in_transaction()) {
            // Best effort: the server discards the transaction with the session anyway.
            let _ = sink.rollback().await;
        }
        result.map(|()| self.applied)
    }

    /// Whether the replica is one instant of the source (see [`Applier::in_sync_at`]).
    fn in_sync(&self) -> bool {
        self.applied >= self.in_sync_at
    }

    /// Whether a cut request may be taken now: at a source commit boundary, with the
    /// replica one instant of the source, and no held cut under way.
    fn takes_cuts(&self) -> bool {
        self.cuts_open && !self.in_source_tx && self.in_sync() && self.held_cut.is_none()
    }

    fn sink(&mut self) -> Result<&mut ReplicaSink, PipelineError> {
        self.sink.as_mut().ok_or_else(no_session)
    }

    /// Takes a cut request at a source commit boundary: cuts now, or holds for a held
    /// cut's position (see [`CutAt::Held`]).
    async fn take(&mut self, request: CutRequest) -> Result<(), PipelineError> {
        let CutRequest { branch, at, reply } = request;
        let CutAt::Held { held, target } = at else {
            return self.cut(branch, reply, Duration::ZERO).await;
        };
        self.commit().await?;
        let started = Instant::now();
        let _ = held.send(self.applied);
        // Bounded by the requester's side (`watchers::cut_branches`), which drops
        // `target` when the requester is gone or takes too long; and here too.
        let named = match tokio::time::timeout(HOLD_LIMIT + Duration::from_secs(5), target).await {
            Ok(Ok(at)) => Ok(at),
            Ok(Err(_)) => Err("the requester gave up before naming a position".to_owned()),
            Err(_) => Err("no position was named in time".to_owned()),
        };
        let refused = match named {
            Ok(at) if at >= self.applied => {
                self.held_cut = Some(HeldCut {
                    branch,
                    at,
                    reply,
                    held: started.elapsed(),
                });
                // A position with nothing in flight before it may be known already.
                if let Some(idle) = self.idle_candidate {
                    self.reached(idle).await?;
                }
                return Ok(());
            }
            Ok(at) => format!(
                "the replica had applied the source up to {} already, past the position \
                 asked for ({at})",
                self.applied
            ),
            Err(reason) => reason,
        };
        tracing::info!(%branch, "held cut not made: {refused}");
        let _ = reply.send(Err(refused));
        Ok(())
    }

    /// The stream is at `position` with every source transaction committed before it
    /// applied and none after: a held cut whose position this is, or is past, is cut now.
    async fn reached(&mut self, position: Lsn) -> Result<(), PipelineError> {
        if self.held_cut.as_ref().is_some_and(|cut| position >= cut.at) {
            let cut = self.held_cut.take().expect("checked above");
            self.cut(cut.branch, cut.reply, cut.held).await?;
        }
        Ok(())
    }

    /// Commits what is open, closes the replica's session, copies the replica into the
    /// branch's database, and opens a session again. A failed copy is the branch's
    /// failure, not the pipeline's. `held`: how long applying stood still before.
    async fn cut(
        &mut self,
        branch: BranchName,
        reply: oneshot::Sender<Result<BranchCut, String>>,
        held: Duration,
    ) -> Result<(), PipelineError> {
        self.commit().await?;
        let started = Instant::now();
        let (database, token, nan) = {
            let sink = self.sink()?;
            (sink.database().to_owned(), sink.token(), sink.nan_policy())
        };
        self.sink = None;
        let copied = sink::copy_database(&self.store, &database, branch.as_str()).await;
        match ReplicaSink::connect(&self.store, &database, token).await {
            Ok(sink) => self.sink = Some(sink.with_nan_policy(nan)),
            Err(e) => {
                // Fenced: the copy may hold a newer owner's commits, not ours at `applied`.
                if copied.is_ok() && matches!(e, SinkError::Fenced { .. }) {
                    let _ = sink::drop_database(&self.store, branch.as_str(), true).await;
                }
                return Err(e.into());
            }
        }
        let cut = BranchCut {
            lsn: self.applied,
            paused: held + started.elapsed(),
        };
        if copied.is_ok() {
            self.metrics.branch_cut.observe(cut.paused.as_secs_f64());
        }
        match &copied {
            Ok(()) => tracing::info!(
                %branch,
                lsn = %cut.lsn,
                paused_ms = cut.paused.as_millis() as u64,
                "branch cut"
            ),
            Err(e) => tracing::warn!(%branch, "branch cut failed: {e}"),
        }
        // The requester may have given up; the branch is recorded either way by it.
        let _ = reply.send(copied.map(|()| cut).map_err(|e| e.to_string()));
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
                request = self.cuts.recv(), if self.takes_cuts() => match request {
                    Some(request) => self.take(request).await?,
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
            Command::Begin(commit) => self.reached(commit).await?,
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
                tracing::info!(tag = %ddl.tag, lsn = %ddl.lsn, "replaying a schema change");
                self.sink()?
                    .execute_ddl(
                        &ddl.sql,
                        &ddl.search_path,
                        &ddl.settings,
                        &ddl.tag,
                        Some(ddl.lsn),
                    )
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
                if self.takes_cuts() {
                    match self.cuts.try_recv() {
                        Ok(request) => self.take(request).await?,
                        Err(mpsc::error::TryRecvError::Empty) => {}
                        Err(mpsc::error::TryRecvError::Disconnected) => self.cuts_open = false,
                    }
                }
            }
            Command::Idle(position) => {
                self.idle_candidate =
                    Some(self.idle_candidate.map_or(position, |c| c.max(position)));
                self.reached(position).await?;
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
            lsn = %change.lsn,
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

    /// At the end of a source transaction with schema changes: a table they created or
    /// altered without a usable replica identity needs the operator's decision, since the
    /// source cannot send its UPDATEs and DELETEs (wal2json leaves them out with a warning,
    /// which then stops that table). Its INSERTs still apply, and it is fine again once a
    /// later schema change gives it an identity: reported either way, never an error for
    /// the other tables. A key added in the same transaction is no problem at all.
    async fn check_identities(&mut self, end: Lsn) -> Result<(), PipelineError> {
        let mut tables = std::mem::take(&mut self.ddl_tables);
        tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        tables.dedup();
        let missing = self.sink()?.tables_without_identity(&tables).await?;
        for table in tables {
            let lacks = missing.contains(&table);
            if lacks && self.without_identity.insert(table.clone()) {
                let problem = format!(
                    "a schema change in the source transaction ending at {end} left {table} \
                     without a primary key or replica identity: the source cannot send its \
                     UPDATEs and DELETEs (its INSERTs are replicated)"
                );
                tracing::warn!(%table, "{problem}");
                let _ = self
                    .table_events
                    .send(TableEvent::NoIdentity { table, problem });
            } else if !lacks && self.without_identity.remove(&table) {
                tracing::info!(%table, "the table has a usable replica identity again");
                let _ = self.table_events.send(TableEvent::IdentityBack(table));
            }
        }
        Ok(())
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
