//! The supervisor: one pipeline task per enabled connector, kept in line with the
//! bookkeeping.
//!
//! It owns every pipeline task (a `JoinSet`) and a cancellation token per pipeline, children
//! of its own. It reconciles when the bookkeeping notifies a change (LISTEN/NOTIFY) and on a
//! periodic poll (notifications are lost while the listener reconnects). A pipeline that
//! ends with a transient error is restarted after a capped exponential backoff; one that
//! ends with a definite error is left in `failed` until the operator changes the connector
//! or restarts the daemon.
//! On shutdown every pipeline is cancelled, finishes its current target transaction, and
//! is awaited.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bookkeeping::{Bookkeeping, Connector, BRANCH_CHANNEL};
use crate::metrics::{Readiness, METRICS};
use crate::pipeline::{self, PipelineContext, PipelineError, PipelineState};
use crate::settings::Settings;
use crate::types::{ConnectorId, ConnectorName};

/// A pipeline that runs long enough is healthy again: its next failure starts the backoff anew.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

struct Running {
    cancel: CancellationToken,
    /// The connector row the pipeline was started with: a request for setup (state back to
    /// `pending`) or another table filter restarts it.
    updated_at: chrono::DateTime<chrono::Utc>,
    include_new_tables: bool,
    /// Tells the pipeline that branches were requested.
    branch_poke: mpsc::Sender<()>,
}

#[derive(Default)]
struct Retry {
    failures: u32,
    not_before: Option<Instant>,
}

pub struct Supervisor {
    bookkeeping: Arc<Bookkeeping>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
    readiness: Readiness,
    tasks: JoinSet<Result<(), PipelineError>>,
    /// Which connector each task runs, and since when; also for tasks that panicked.
    task_owners: HashMap<tokio::task::Id, (ConnectorId, ConnectorName, Instant)>,
    running: HashMap<ConnectorId, Running>,
    retries: HashMap<ConnectorId, Retry>,
    /// Connectors that failed definitively in this process: left alone until the operator
    /// changes their state. A new process tries each failed connector once more, which is
    /// what "fix the cause, then restart tributary" relies on.
    given_up: HashSet<ConnectorId>,
}

impl Supervisor {
    pub fn new(
        bookkeeping: Arc<Bookkeeping>,
        settings: Arc<Settings>,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> Supervisor {
        Supervisor {
            bookkeeping,
            settings,
            shutdown,
            readiness,
            tasks: JoinSet::new(),
            task_owners: HashMap::new(),
            running: HashMap::new(),
            retries: HashMap::new(),
            given_up: HashSet::new(),
        }
    }

    /// Runs until the shutdown token is cancelled and every pipeline has stopped.
    pub async fn run(mut self) -> Result<(), crate::bookkeeping::Error> {
        let mut listener = self.bookkeeping.listen().await?;
        let mut poll = tokio::time::interval(Duration::from_secs(
            self.settings.supervisor.poll_interval_secs.max(1),
        ));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.readiness.set_running(true);
        loop {
            let next_retry = self
                .retries
                .values()
                .filter_map(|r| r.not_before)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(done) = self.tasks.join_next_with_id() => {
                    self.finished(done).await;
                    // A pipeline stopped for a changed connector starts again at once.
                    self.reconcile().await;
                }
                notification = listener.recv() => {
                    if let Ok(notification) = &notification {
                        if notification.channel() == BRANCH_CHANNEL {
                            self.poke(notification.payload());
                            continue;
                        }
                    }
                    if let Err(e) = notification {
                        tracing::warn!("bookkeeping notifications interrupted: {e}; polling until they resume");
                        // A new session takes the daemon lock again; the old one would
                        // reconnect without it.
                        match self.bookkeeping.listen().await {
                            Ok(fresh) => listener = fresh,
                            Err(e) => tracing::warn!("listening again: {e}"),
                        }
                    }
                    self.reconcile().await;
                }
                _ = poll.tick() => self.reconcile().await,
                _ = tokio::time::sleep_until(next_retry) => self.reconcile().await,
            }
        }
        self.readiness.set_running(false);
        tracing::info!(
            pipelines = self.running.len(),
            "shutting down: stopping pipelines"
        );
        for running in self.running.values() {
            running.cancel.cancel();
        }
        while let Some(done) = self.tasks.join_next_with_id().await {
            self.finished(done).await;
        }
        Ok(())
    }

    async fn reconcile(&mut self) {
        let connectors = match self.bookkeeping.connectors().await {
            Ok(connectors) => connectors,
            Err(e) => {
                tracing::warn!("reading connectors: {e}");
                return;
            }
        };
        let wanted: HashMap<ConnectorId, &Connector> = connectors
            .iter()
            .filter(|c| c.enabled)
            .map(|c| (c.id, c))
            .collect();

        // Stop pipelines whose connector went away, was disabled or changed (to restart).
        for (id, running) in &self.running {
            let stale = match wanted.get(id) {
                None => true,
                Some(c) => {
                    c.updated_at != running.updated_at && c.state == PipelineState::Pending
                        || c.state == PipelineState::Streaming
                            && c.include_new_tables != running.include_new_tables
                }
            };
            if stale {
                running.cancel.cancel();
            }
        }

        // Disabled connectors whose pipeline has ended are `stopped`: what `connector
        // delete` waits for before it drops the slot.
        for connector in connectors.iter().filter(|c| !c.enabled) {
            if connector.state != PipelineState::Stopped
                && !self.running.contains_key(&connector.id)
            {
                if let Err(e) = self
                    .bookkeeping
                    .set_state(connector.id, PipelineState::Stopped, None)
                    .await
                {
                    tracing::warn!(connector = %connector.name, "recording the stop: {e}");
                }
            }
        }

        let now = Instant::now();
        for connector in wanted.values() {
            if self.running.contains_key(&connector.id) {
                continue;
            }
            if connector.state != PipelineState::Failed {
                self.given_up.remove(&connector.id);
            }
            if self.given_up.contains(&connector.id) || connector.state == PipelineState::Stopped {
                continue;
            }
            let retry = self.retries.entry(connector.id).or_default();
            if retry.not_before.is_some_and(|t| t > now) {
                continue;
            }
            retry.not_before = None;
            self.start((*connector).clone());
        }
    }

    /// Tells the pipeline of connector `id` (the notification's payload) that branches were
    /// requested; a full channel has a poke pending already.
    fn poke(&self, id: &str) {
        let running = id
            .parse()
            .ok()
            .and_then(|id| self.running.get(&ConnectorId(id)));
        if let Some(running) = running {
            let _ = running.branch_poke.try_send(());
        }
    }

    fn start(&mut self, connector: Connector) {
        let cancel = self.shutdown.child_token();
        let (branch_poke, branch_pokes) = mpsc::channel(1);
        self.running.insert(
            connector.id,
            Running {
                cancel: cancel.clone(),
                updated_at: connector.updated_at,
                include_new_tables: connector.include_new_tables,
                branch_poke,
            },
        );
        let (id, name) = (connector.id, connector.name.clone());
        METRICS.pipeline_started(name.as_str());
        let span = tracing::info_span!("connector", name = %connector.name);
        let ctx = PipelineContext {
            bookkeeping: self.bookkeeping.clone(),
            settings: self.settings.clone(),
            connector,
        };
        let task = self.tasks.spawn(
            async move { pipeline::run(&ctx, &cancel, branch_pokes).await.map(drop) }
                .instrument(span),
        );
        self.task_owners
            .insert(task.id(), (id, name, Instant::now()));
    }

    async fn finished(
        &mut self,
        done: Result<(tokio::task::Id, Result<(), PipelineError>), tokio::task::JoinError>,
    ) {
        let (task, result) = match done {
            Ok((task, result)) => (task, result),
            // A panic is a bug in tributary; the pipeline is retried like after a transient
            // failure, since its progress is safe in the replica.
            Err(e) => (
                e.id(),
                Err(PipelineError::Panicked(
                    e.try_into_panic()
                        .ok()
                        .and_then(|p| {
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        })
                        .unwrap_or_else(|| "cancelled".into()),
                )),
            ),
        };
        let Some((id, name, started)) = self.task_owners.remove(&task) else {
            return;
        };
        METRICS.pipeline_stopped(name.as_str());
        self.running.remove(&id);
        let Err(error) = result else {
            self.retries.remove(&id);
            return;
        };
        let failure = error.failure();
        METRICS.pipeline_ended(name.as_str(), error.is_transient());
        let retry = self.retries.entry(id).or_default();
        if started.elapsed() > HEALTHY_AFTER {
            retry.failures = 0;
        }
        if self.shutdown.is_cancelled() && error.is_transient() {
            // Connections cut by the shutdown itself: not the connector's fault.
            let _ = self.bookkeeping.record_error(id, &failure).await;
            return;
        }
        let state = if error.is_transient() {
            retry.failures += 1;
            let supervisor = &self.settings.supervisor;
            let delay = backoff(
                Duration::from_millis(supervisor.backoff_initial_ms),
                Duration::from_secs(supervisor.backoff_max_secs),
                retry.failures,
            );
            retry.not_before = Some(Instant::now() + delay);
            tracing::warn!(connector = %id, retry_in = ?delay, "pipeline failed, will retry: {error}");
            None
        } else {
            self.retries.remove(&id);
            self.given_up.insert(id);
            tracing::error!(connector = %id, next_step = %failure.next_step, "pipeline failed: {error}");
            Some(PipelineState::Failed)
        };
        let record = match state {
            Some(state) => self.bookkeeping.set_state(id, state, Some(&failure)).await,
            None => self.bookkeeping.record_error(id, &failure).await,
        };
        if let Err(e) = record {
            tracing::warn!(connector = %id, "recording the failure: {e}");
        }
    }
}

/// `initial · 2^(failures-1)`, capped at `max`.
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(ms(500), cap, 1), ms(500));
        assert_eq!(backoff(ms(500), cap, 2), ms(1000));
        assert_eq!(backoff(ms(500), cap, 4), ms(4000));
        assert_eq!(backoff(ms(500), cap, 40), cap);
    }
}
