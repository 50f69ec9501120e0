//! `tributary run`: the daemon.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::bookkeeping::Bookkeeping;
use crate::settings::Settings;
use crate::supervisor::Supervisor;

/// Time allowed on top of the pipelines' grace period for closing connections.
const EXIT_SLACK: Duration = Duration::from_secs(10);

pub async fn run(settings: Settings, config_path: &Path) -> Result<(), Failure> {
    let settings = Arc::new(settings);
    let bookkeeping = Arc::new(
        Bookkeeping::open(
            &settings.store(),
            &settings.secrets,
            &super::default_key_file(config_path),
        )
        .await?,
    );
    tracing::info!(store = %settings.store(), "tributary started");
    let shutdown = CancellationToken::new();
    let supervisor = Supervisor::new(bookkeeping, settings.clone(), shutdown.clone()).run();
    tokio::pin!(supervisor);
    tokio::select! {
        result = &mut supervisor => return Ok(result?),
        signal = shutdown_signal() => tracing::info!("{signal} received: finishing current transactions"),
    }
    shutdown.cancel();
    let limit = settings.pipeline.shutdown_grace() + EXIT_SLACK;
    match tokio::time::timeout(limit, supervisor).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!("pipelines did not stop within {limit:?}; exiting anyway");
            Ok(())
        }
    }
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
