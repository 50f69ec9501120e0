//! What the daemon shows of itself: the HTTP endpoints and the sampler of the sources'
//! slots. The metrics themselves are declared in `metrics.rs`, which the pipelines record
//! into; this module reads the bookkeeping and judges health (`control::health`), so it
//! sits above the pipeline and nothing below it names it.
//!
//! ```text
//!  pipelines ──counters, gauges──► METRICS (one registry per process)
//!  supervisor: lease taken ──► export (state as read)   lease lost/released ──► unexport
//!  pipeline: each state as it is entered; the slot when streaming starts   ──► gauges
//!  sample_slots, every metrics.slot_interval_secs:
//!     bookkeeping → whether each enabled connector has a live lease holder ──► gauge
//!     source → the slot of each connector exported here         ──► gauges
//!     this process's apply lags                                  ──► bookkeeping (status)
//!  GET /metrics   the registry in text format (apply lag computed at scrape time)
//!  GET /healthz   200 while the process serves
//!  GET /readyz    200 when the supervisor runs, the bookkeeping answers, and every
//!                 connector whose lease this daemon holds is healthy; else 503 with one
//!                 line per reason (`connector shop: stopped by an error: …`)
//! ```
//!
//! Readiness is about this daemon doing its job, not about whether it is alive
//! (`/healthz`): a Kubernetes readiness probe never restarts a pod, it marks it not ready
//! (in `kubectl get pods`, for alerts on `kube_pod_status_ready`) and holds a rolling
//! update until the new pod is ready, so `/readyz` fails exactly when a restart would not
//! help: a failed connector this daemon holds, one retrying an error (not ready until it
//! streams again, holding a rolling update meanwhile; an operator looks when it lasts), or
//! a daemon that cannot run any. Connectors other daemons hold are theirs to report, and
//! one no daemon holds is taken by whichever has room: neither makes this one unready.

mod sampler;
mod server;

use std::time::Duration;

pub use sampler::sample_slots;
pub use server::{bind, Readiness};

/// How long the sampler waits for one source, and `/readyz` for the bookkeeping.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(5);
