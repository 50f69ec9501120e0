//! `/metrics`, `/healthz` and `/readyz` (the module doc of `monitor` says what each means).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::SOURCE_TIMEOUT;
use crate::bookkeeping::Bookkeeping;
use crate::control::health::{self, Slot};
use crate::metrics::METRICS;

/// Whether the daemon is ready: the supervisor says while it runs; the connectors whose
/// leases hold this daemon's name are judged at each request.
#[derive(Clone)]
pub struct Readiness {
    supervisor_running: Arc<AtomicBool>,
    /// This daemon as its leases name it (`host:pid`).
    daemon: Arc<str>,
}

impl Readiness {
    pub fn new(daemon: String) -> Readiness {
        Readiness {
            supervisor_running: Arc::default(),
            daemon: daemon.into(),
        }
    }

    pub fn daemon(&self) -> &str {
        &self.daemon
    }

    pub fn set_running(&self, running: bool) {
        self.supervisor_running.store(running, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    bookkeeping: Arc<Bookkeeping>,
    readiness: Readiness,
}

/// Binds the endpoint now (so that a taken address is an error at start), and returns the
/// server to run until `shutdown`.
pub async fn bind(
    listen: SocketAddr,
    bookkeeping: Arc<Bookkeeping>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_endpoint))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            bookkeeping,
            readiness,
        });
    let server = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    };
    Ok((bound, server))
}

async fn metrics_endpoint() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        METRICS.render(),
    )
}

/// See the module doc: 200 only when the supervisor runs, the bookkeeping answers, and
/// every connector whose lease this daemon holds is healthy (`control/health.rs`); else 503
/// naming what is not. The sources are not asked: a pipeline that cannot reach its source
/// records the error it retries, which is unhealthy.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    if !state.readiness.supervisor_running.load(Ordering::Relaxed) {
        return unavailable("supervisor not running".to_owned());
    }
    let judged = tokio::time::timeout(
        SOURCE_TIMEOUT,
        unhealthy_held(&state.bookkeeping, state.readiness.daemon()),
    )
    .await;
    match judged {
        Ok(Ok(unhealthy)) if unhealthy.is_empty() => (StatusCode::OK, "ok\n".to_owned()),
        Ok(Ok(unhealthy)) => unavailable(unhealthy.join("\n")),
        _ => unavailable("bookkeeping unreachable".to_owned()),
    }
}

/// `connector <name>: <reason>` for each connector whose lease `daemon` holds and that is
/// not healthy.
async fn unhealthy_held(
    bookkeeping: &Bookkeeping,
    daemon: &str,
) -> Result<Vec<String>, crate::bookkeeping::Error> {
    let leases = bookkeeping.leases().await?;
    let mut unhealthy = Vec::new();
    for connector in bookkeeping.connectors().await? {
        let held = leases
            .get(&connector.id)
            .is_some_and(|l| l.is_held() && l.owner == daemon);
        if !held {
            continue;
        }
        let assessed = health::assess(bookkeeping, &connector, &leases, &Slot::Unknown).await?;
        if let Some(problem) = assessed.health.problem() {
            unhealthy.push(format!("connector {}: {}", connector.name, problem.reason));
        }
    }
    Ok(unhealthy)
}
