//! `tributary run`: the daemon.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::control::store_check;
use crate::monitor::{self, Readiness};
use crate::settings::Settings;
use crate::source::preflight::Outcome;
use crate::supervisor::{self, Supervisor};

/// The branch store's checklist at start: each failed check logged with its fix, and no
/// start when one failed (the pipelines could not work); warnings logged.
async fn check_store(settings: &Settings) -> Result<(), Failure> {
    let report = store_check::check(settings.store(), &[]).await;
    for check in &report.checks {
        match &check.outcome {
            Outcome::Fail { value, fix } => {
                tracing::error!(check = %check.name, fix = %fix, "branch store: {value}");
            }
            Outcome::Warn { value, fix } => {
                tracing::warn!(check = %check.name, fix = %fix, "branch store: {value}");
            }
            Outcome::Pass { .. } | Outcome::Skip { .. } => {}
        }
    }
    let failed = report.failures().count();
    if failed > 0 {
        return Err(anyhow::anyhow!(
            "the branch store cannot serve tributary: {failed} check{} failed (logged above with \
             the fix; `tributary store check` prints them with a grant script)",
            if failed == 1 { "" } else { "s" }
        )
        .into());
    }
    Ok(())
}

/// Time allowed on top of the pipelines' grace period for closing connections.
const EXIT_SLACK: Duration = Duration::from_secs(10);

pub async fn run(settings: Settings, config_path: &Path) -> Result<(), Failure> {
    let settings = Arc::new(settings);
    let bookkeeping = Arc::new(super::open_bookkeeping(&settings, config_path).await?);
    check_store(&settings).await?;
    tracing::info!(store = %settings.store(), "tributary started");
    let shutdown = CancellationToken::new();
    // The endpoints outlive the pipelines: during shutdown `/readyz` answers 503 (the
    // supervisor is stopping) while `/healthz` and `/metrics` still answer.
    let services_shutdown = CancellationToken::new();
    let readiness = Readiness::new(supervisor::daemon_name());
    let listen = settings.metrics.listen;
    let (bound, server) = monitor::bind(
        listen,
        bookkeeping.clone(),
        readiness.clone(),
        services_shutdown.clone(),
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot serve metrics on {listen}: {e}; set metrics.listen \
             (TRIBUTARY__METRICS__LISTEN) to a free address"
        )
    })?;
    tracing::info!(listen = %bound, "metrics and health endpoints listening");
    // Both end with `services_shutdown`, after the supervisor, and are awaited below.
    let mut services = tokio::task::JoinSet::new();
    services.spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("metrics endpoint: {e}");
        }
    });
    services.spawn(monitor::sample_slots(
        bookkeeping.clone(),
        settings.metrics.slot_interval(),
        services_shutdown.clone(),
    ));

    let supervisor =
        Supervisor::new(bookkeeping, settings.clone(), shutdown.clone(), readiness).run();
    tokio::pin!(supervisor);
    let result = tokio::select! {
        result = &mut supervisor => Some(result),
        signal = shutdown_signal() => {
            tracing::info!("{signal} received: finishing current transactions");
            None
        }
    };
    shutdown.cancel();
    let result = match result {
        Some(result) => result,
        None => {
            let limit = settings.pipeline.shutdown_grace() + EXIT_SLACK;
            match tokio::time::timeout(limit, supervisor).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("pipelines did not stop within {limit:?}; exiting anyway");
                    Ok(())
                }
            }
        }
    };
    services_shutdown.cancel();
    while services.join_next().await.is_some() {}
    Ok(result?)
}

/// Resolves on SIGTERM or SIGINT, naming it.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
