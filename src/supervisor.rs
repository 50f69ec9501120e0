//! The supervisor: one pipeline task per enabled connector whose lease this daemon holds,
//! kept in line with the bookkeeping.
//!
//! It owns every pipeline task (a `JoinSet`) and a cancellation token per pipeline, children
//! of its own. It reconciles when the bookkeeping notifies a change (LISTEN/NOTIFY) and on a
//! periodic poll (notifications are lost while the listener reconnects). A pipeline that
//! ends with a transient error is restarted after a capped exponential backoff; one that
//! ends with a definite error is left in `failed` until the operator changes the connector
//! or restarts the daemon.
//! On shutdown every pipeline is cancelled, finishes its current target transaction, and
//! is awaited; then the leases are released.
//!
//! Leases (`bookkeeping/leases.rs`): several daemons may share one bookkeeping. Each takes
//! free connectors up to its fair share (connectors ÷ daemons seen alive within a TTL,
//! rounded up), hands one back per poll while it holds more than that, and keeps the leases it holds (also of failed
//! connectors and those waiting for a retry) renewed every quarter of the TTL. When no
//! renewal succeeded for three quarters of it, the daemon can no longer be sure the leases
//! are its own: it aborts every pipeline at once (the server rolls back their open
//! transactions) before the leases expire and another daemon takes them. A pipeline that
//! finds its replica claimed by a newer token has lost the connector the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgNotification};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bookkeeping::{Bookkeeping, Connector, BRANCH_CHANNEL};
use crate::metrics::METRICS;
use crate::monitor::Readiness;
use crate::pipeline::{self, PipelineContext, PipelineError, PipelineState};
use crate::settings::Settings;
use crate::types::{ConnectorId, ConnectorName, FencingToken};

/// A pipeline that runs long enough is healthy again: its next failure starts the backoff anew.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// What woke the supervisor up.
enum Event {
    Finished(Result<(tokio::task::Id, Result<(), PipelineError>), tokio::task::JoinError>),
    Notification(Result<PgNotification, sqlx::Error>),
    Renew,
    Reconcile,
    LeaseDeadline,
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

struct Running {
    cancel: CancellationToken,
    /// For losing the lease: stops at once, without finishing the target transaction.
    abort: tokio::task::AbortHandle,
    /// The connector row the pipeline was started with: a request for setup (state back to
    /// `pending`) or another table filter restarts it.
    updated_at: chrono::DateTime<chrono::Utc>,
    include_new_tables: bool,
    /// `Connector::nan_as_null` as the pipeline was started with.
    nan_as_null: bool,
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
    /// This daemon, as the bookkeeping's leases name their holder: `host:pid`.
    owner: String,
    /// The leases held, by connector.
    leases: HashMap<ConnectorId, FencingToken>,
    /// When the leases may no longer be taken as held: three quarters of the TTL after
    /// the last renewal (or acquisition) was sent.
    lease_deadline: Option<Instant>,
    /// How many daemons share the connectors, as of the last heartbeat.
    daemons: usize,
    /// Pipelines stopped to hand their connector to a daemon with fewer.
    handing_off: HashSet<ConnectorId>,
    /// Pipelines aborted because their lease was lost: another daemon runs the connector,
    /// so nothing about how they ended is recorded.
    lost: HashSet<ConnectorId>,
    /// The listening session was lost and not yet replaced (the bookkeeping was down): the
    /// old one reconnects by itself but without the daemon's locks, so this daemon would
    /// look gone to `status` and to other daemons until a new one takes them.
    listener_stale: bool,
}

impl Supervisor {
    pub fn new(
        bookkeeping: Arc<Bookkeeping>,
        settings: Arc<Settings>,
        shutdown: CancellationToken,
        readiness: Readiness,
    ) -> Supervisor {
        Supervisor {
            owner: readiness.daemon().to_owned(),
            bookkeeping,
            settings,
            shutdown,
            readiness,
            tasks: JoinSet::new(),
            task_owners: HashMap::new(),
            running: HashMap::new(),
            retries: HashMap::new(),
            given_up: HashSet::new(),
            leases: HashMap::new(),
            lease_deadline: None,
            handing_off: HashSet::new(),
            lost: HashSet::new(),
            listener_stale: false,
            daemons: 1,
        }
    }

    /// Runs until the shutdown token is cancelled and every pipeline has stopped.
    pub async fn run(mut self) -> Result<(), crate::bookkeeping::Error> {
        let mut listener = self.bookkeeping.listen(&self.owner).await?;
        let mut poll = tokio::time::interval(Duration::from_secs(
            self.settings.supervisor.poll_interval_secs.max(1),
        ));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(self.settings.supervisor.lease_ttl() / 4);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.readiness.set_running(true);
        tracing::info!(daemon = %self.owner, "supervising connectors");
        // Counted among the daemons before taking any connector.
        renew.tick().await;
        self.renew().await;
        loop {
            let next_retry = self
                .retries
                .values()
                .filter_map(|r| r.not_before)
                .min()
                .unwrap_or_else(far_future);
            let deadline = self.deadline();
            let event = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => Event::LeaseDeadline,
                Some(done) = self.tasks.join_next_with_id() => Event::Finished(done),
                notification = listener.recv() => Event::Notification(notification),
                _ = renew.tick() => Event::Renew,
                _ = poll.tick() => Event::Reconcile,
                _ = tokio::time::sleep_until(next_retry) => Event::Reconcile,
            };
            if matches!(event, Event::LeaseDeadline) {
                self.lose_all();
                continue;
            }
            // Every step waits on the bookkeeping: a hung one must not keep the pipelines
            // running past the leases' deadline.
            let step = self.handle(event, &mut listener);
            if tokio::time::timeout_at(deadline, step).await.is_err() {
                self.lose_all();
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
        // The leases stay renewed while the pipelines finish their transactions.
        loop {
            let deadline = self.deadline();
            tokio::select! {
                done = self.tasks.join_next_with_id() => match done {
                    Some(done) => self.finished(done).await,
                    None => break,
                },
                _ = renew.tick() => self.renew().await,
                _ = tokio::time::sleep_until(deadline) => self.lose_all(),
            }
        }
        for (id, token) in std::mem::take(&mut self.leases) {
            METRICS.unexport(id);
            if let Err(e) = self.bookkeeping.release_lease(id, token).await {
                tracing::warn!(connector = %id, "releasing the lease: {e} (it expires by itself)");
            }
        }
        if let Err(e) = self.bookkeeping.sign_off(&self.owner).await {
            tracing::warn!("removing this daemon from the bookkeeping: {e}");
        }
        tracing::info!(daemon = %self.owner, "pipelines stopped, leases released");
        Ok(())
    }

    async fn handle(&mut self, event: Event, listener: &mut PgListener) {
        if self.listener_stale && !matches!(event, Event::Notification(Err(_))) {
            self.listen_again(listener).await;
        }
        match event {
            Event::Finished(done) => {
                self.finished(done).await;
                // A pipeline stopped for a changed connector starts again at once.
                self.reconcile().await;
            }
            Event::Notification(Ok(notification)) if notification.channel() == BRANCH_CHANNEL => {
                self.poke(notification.payload());
            }
            Event::Notification(notification) => {
                if let Err(e) = notification {
                    tracing::warn!(
                        "bookkeeping notifications interrupted: {e}; polling until they resume"
                    );
                    // Without this session, other daemons may take the leases at once.
                    self.lose_all();
                    self.listener_stale = true;
                    self.listen_again(listener).await;
                }
                self.reconcile().await;
            }
            Event::Renew => {
                // After a bookkeeping restart the listener came back without the locks.
                if let Err(e) = self
                    .bookkeeping
                    .hold_daemon_locks(listener, &self.owner)
                    .await
                {
                    tracing::warn!("taking the daemon's locks again: {e}");
                    self.listener_stale = true;
                }
                self.renew().await
            }
            Event::Reconcile => self.reconcile().await,
            Event::LeaseDeadline => self.lose_all(),
        }
    }

    /// Replaces the listening session by a new one, which takes the daemon's locks again
    /// (the old one would reconnect without them); tried again at every later event while
    /// the bookkeeping cannot be reached.
    async fn listen_again(&mut self, listener: &mut PgListener) {
        match self.bookkeeping.listen(&self.owner).await {
            Ok(fresh) => {
                *listener = fresh;
                if std::mem::take(&mut self.listener_stale) {
                    tracing::info!("bookkeeping notifications resumed");
                }
            }
            Err(e) => tracing::warn!("listening again: {e}; trying again at the next poll"),
        }
    }

    /// When the leases may no longer be taken as held; far away without leases.
    fn deadline(&self) -> Instant {
        self.lease_deadline
            .filter(|_| !self.leases.is_empty())
            .unwrap_or_else(far_future)
    }

    /// The leases' deadline passed without a renewal, or the daemon's bookkeeping session
    /// was lost: none of them may be relied on.
    fn lose_all(&mut self) {
        if self.leases.is_empty() {
            return;
        }
        tracing::error!(
            "could not renew the connector leases in time, or lost the bookkeeping session \
             (is the bookkeeping reachable?): stopping every pipeline before another daemon \
             takes them over"
        );
        let held: Vec<ConnectorId> = self.leases.keys().copied().collect();
        for id in held {
            self.lose(id);
        }
    }

    /// Says this daemon is alive, and renews every lease held; a lease found taken by
    /// another daemon is lost.
    async fn renew(&mut self) {
        let ttl = self.settings.supervisor.lease_ttl();
        match tokio::time::timeout(ttl / 4, self.bookkeeping.heartbeat(&self.owner, ttl)).await {
            Ok(Ok(daemons)) => self.daemons = daemons,
            Ok(Err(e)) => tracing::warn!("recording this daemon as alive: {e}"),
            Err(_) => {
                tracing::warn!("recording this daemon as alive: no answer from the bookkeeping")
            }
        }
        if self.leases.is_empty() {
            return;
        }
        let sent = Instant::now();
        let tokens: Vec<FencingToken> = self.leases.values().copied().collect();
        // A renewal that takes longer than its interval is as good as failed.
        let renewed = match tokio::time::timeout(
            ttl / 4,
            self.bookkeeping.renew_leases(&tokens, ttl),
        )
        .await
        {
            Ok(Ok(renewed)) => renewed,
            Ok(Err(e)) => {
                tracing::warn!("renewing the connector leases: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!("renewing the connector leases: no answer from the bookkeeping");
                return;
            }
        };
        self.lease_deadline = Some(sent + ttl * 3 / 4);
        let lost: Vec<ConnectorId> = self
            .leases
            .iter()
            .filter(|(_, token)| !renewed.contains(token))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            tracing::error!(connector = %id, "the connector's lease expired before it was renewed: stopping its pipeline");
            self.lose(id);
        }
    }

    /// Forgets the lease of connector `id` and aborts its pipeline, if one runs.
    fn lose(&mut self, id: ConnectorId) {
        self.leases.remove(&id);
        METRICS.unexport(id);
        self.handing_off.remove(&id);
        if self.leases.is_empty() {
            self.lease_deadline = None;
        }
        self.retries.remove(&id);
        self.given_up.remove(&id);
        if let Some(running) = self.running.get(&id) {
            running.abort.abort();
            self.lost.insert(id);
        }
    }

    /// Takes the lease of `connector` unless this daemon holds it; `None` when another
    /// daemon does (or the bookkeeping did not answer).
    async fn lease(&mut self, connector: &Connector) -> Option<FencingToken> {
        let id = connector.id;
        if let Some(token) = self.leases.get(&id) {
            return Some(*token);
        }
        let ttl = self.settings.supervisor.lease_ttl();
        let sent = Instant::now();
        match self.bookkeeping.acquire_lease(id, &self.owner, ttl).await {
            Ok(Some(token)) => {
                tracing::info!(connector = %id, %token, "took the connector's lease");
                self.leases.insert(id, token);
                METRICS.export(id, &connector.name, connector.state);
                // The leases held already were renewed earlier: the first to expire counts.
                let deadline = sent + ttl * 3 / 4;
                self.lease_deadline = Some(match self.lease_deadline {
                    Some(earlier) if self.leases.len() > 1 => earlier.min(deadline),
                    _ => deadline,
                });
                Some(token)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(connector = %id, "taking the connector's lease: {e}");
                None
            }
        }
    }

    async fn release(&mut self, id: ConnectorId) {
        if let Some(token) = self.leases.remove(&id) {
            METRICS.unexport(id);
            if self.leases.is_empty() {
                self.lease_deadline = None;
            }
            self.retries.remove(&id);
            self.given_up.remove(&id);
            if let Err(e) = self.bookkeeping.release_lease(id, token).await {
                tracing::warn!(connector = %id, "releasing the lease: {e} (it expires by itself)");
            }
        }
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
                            && (c.include_new_tables != running.include_new_tables
                                || c.nan_as_null != running.nan_as_null)
                }
            };
            if stale {
                running.cancel.cancel();
            }
        }

        // Disabled connectors whose pipeline has ended are `stopped`: what `connector
        // delete` waits for before it drops the slot. Only the lease holder may say so (a
        // pipeline may still run in another daemon).
        for connector in connectors.iter().filter(|c| !c.enabled) {
            if connector.state == PipelineState::Stopped || self.running.contains_key(&connector.id)
            {
                continue;
            }
            let Some(lease) = self.lease(connector).await else {
                continue;
            };
            match self
                .bookkeeping
                .set_state(connector.id, lease, PipelineState::Stopped, None)
                .await
            {
                Ok(()) => METRICS.set_state(connector.id, PipelineState::Stopped),
                Err(e) => tracing::warn!(connector = %connector.name, "recording the stop: {e}"),
            }
        }
        // Leases of connectors this daemon does not run (any more): disabled or deleted.
        let idle: Vec<ConnectorId> = self
            .leases
            .keys()
            .filter(|id| !wanted.contains_key(id) && !self.running.contains_key(id))
            .copied()
            .collect();
        for id in idle {
            self.release(id).await;
        }

        // Each daemon runs up to its fair share of the connectors.
        let daemons = self.daemons;
        let share = wanted.len().div_ceil(daemons);
        let now = Instant::now();
        let mut candidates: Vec<&Connector> = wanted.values().copied().collect();
        candidates.sort_by_key(|c| c.id);
        for connector in candidates {
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
            if !self.leases.contains_key(&connector.id) && self.leases.len() >= share {
                continue;
            }
            let Some(token) = self.lease(connector).await else {
                continue;
            };
            self.retries.entry(connector.id).or_default().not_before = None;
            self.start(connector.clone(), token);
        }

        // More than the fair share (a daemon joined): hand one connector over per poll.
        if self.leases.len() > share && self.handing_off.is_empty() {
            let surplus = self
                .running
                .iter()
                .filter(|(id, running)| {
                    self.leases.contains_key(id) && !running.cancel.is_cancelled()
                })
                .map(|(id, _)| *id)
                .max();
            if let Some(id) = surplus {
                tracing::info!(connector = %id, daemons, share, "handing the connector over to a daemon with fewer");
                self.handing_off.insert(id);
                self.running[&id].cancel.cancel();
            }
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

    fn start(&mut self, connector: Connector, lease: FencingToken) {
        let cancel = self.shutdown.child_token();
        let (branch_poke, branch_pokes) = mpsc::channel(1);
        let (id, name) = (connector.id, connector.name.clone());
        let (updated_at, include_new_tables, nan_as_null) = (
            connector.updated_at,
            connector.include_new_tables,
            connector.nan_as_null,
        );
        METRICS.pipeline_started(name.as_str());
        let span = tracing::info_span!("connector", name = %connector.name);
        let ctx = PipelineContext {
            bookkeeping: self.bookkeeping.clone(),
            settings: self.settings.clone(),
            connector,
            lease,
            failures: self.retries.get(&id).map_or(0, |r| r.failures),
        };
        let pipeline_cancel = cancel.clone();
        let abort = self.tasks.spawn(
            async move {
                pipeline::run(&ctx, &pipeline_cancel, branch_pokes)
                    .await
                    .map(drop)
            }
            .instrument(span),
        );
        self.task_owners
            .insert(abort.id(), (id, name, Instant::now()));
        self.running.insert(
            id,
            Running {
                cancel,
                abort,
                updated_at,
                include_new_tables,
                nan_as_null,
                branch_poke,
            },
        );
    }

    async fn finished(
        &mut self,
        done: Result<(tokio::task::Id, Result<(), PipelineError>), tokio::task::JoinError>,
    ) {
        let (task, result) = match done {
            Ok((task, result)) => (task, result),
            // A panic is a bug in tributary; the pipeline is retried like after a transient
            // failure, since its progress is safe in the replica.
            Err(e) => (e.id(), Err(PipelineError::from_join(e))),
        };
        let Some((id, name, started)) = self.task_owners.remove(&task) else {
            return;
        };
        METRICS.pipeline_stopped(name.as_str());
        self.running.remove(&id);
        if self.lost.remove(&id) {
            return;
        }
        if self.handing_off.remove(&id) {
            self.release(id).await;
            return;
        }
        if result.as_ref().is_err_and(PipelineError::is_fenced) {
            tracing::error!(connector = %id, "a newer owner claimed the connector's replica: this daemon lost its lease");
            self.lose(id);
            return;
        }
        let Err(error) = result else {
            self.retries.remove(&id);
            return;
        };
        let failure = error.failure(&name);
        METRICS.pipeline_ended(name.as_str(), error.is_transient());
        // What is recorded is recorded under the lease: a daemon that lost the connector
        // since cannot overwrite what the new owner wrote.
        let Some(&lease) = self.leases.get(&id) else {
            return;
        };
        let retry = self.retries.entry(id).or_default();
        if started.elapsed() > HEALTHY_AFTER {
            retry.failures = 0;
        }
        if self.shutdown.is_cancelled() && error.is_transient() {
            // Connections cut by the shutdown itself: not the connector's fault.
            let _ = self.bookkeeping.record_error(id, lease, &failure).await;
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
            Some(state) => {
                self.bookkeeping
                    .set_state(id, lease, state, Some(&failure))
                    .await
            }
            None => self.bookkeeping.record_error(id, lease, &failure).await,
        };
        match record {
            Ok(()) => {
                if let Some(state) = state {
                    METRICS.set_state(id, state);
                }
            }
            Err(e) => tracing::warn!(connector = %id, "recording the failure: {e}"),
        }
    }
}

/// How the bookkeeping's leases name this daemon: `host:pid` (in Kubernetes the host name
/// is the pod's).
pub fn daemon_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}:{}", std::process::id())
}

/// A delay drawn at random from the upper half of [`backoff_ceiling`]: connectors that
/// failed together (the source restarted) do not all retry at the same instant.
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    jittered(backoff_ceiling(initial, max, failures), rand::random())
}

/// `initial · 2^(failures-1)`, capped at `max`.
fn backoff_ceiling(initial: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

/// `ceiling · (1 + fraction) / 2` for `fraction` in `[0, 1)`: between half the ceiling and
/// the ceiling, so the delay still doubles with each failure.
fn jittered(ceiling: Duration, fraction: f64) -> Duration {
    let half = ceiling / 2;
    half + (ceiling - half).mul_f64(fraction.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        let cap = Duration::from_secs(60);
        for (failures, ceiling) in [
            (0, ms(500)),
            (1, ms(500)),
            (2, ms(1000)),
            (4, ms(4000)),
            (8, ms(60_000)),
            (40, cap),
        ] {
            assert_eq!(
                backoff_ceiling(ms(500), cap, failures),
                ceiling,
                "{failures}"
            );
            assert_eq!(jittered(ceiling, 0.0), ceiling / 2, "{failures}");
            assert_eq!(jittered(ceiling, 1.0), ceiling, "{failures}");
            let delays: Vec<Duration> = (0..64).map(|_| backoff(ms(500), cap, failures)).collect();
            for delay in &delays {
                assert!(
                    ceiling / 2 <= *delay && *delay <= ceiling,
                    "{failures}: {delay:?}"
                );
            }
            assert!(
                delays.iter().any(|d| *d != delays[0]),
                "{failures}: no jitter"
            );
        }
    }
}
