//! One pipeline per connector: setup, snapshot, streaming. `runner.rs` holds the order
//! of things, `sync.rs` the snapshot table by table (groups, resuming), `snapshot/` the
//! copy itself (`snapshot/tools.rs` its pg_dump and pg_restore),
//! `stream/` the apply loop; `versions.rs` says which PostgreSQL versions work together.

mod additions;
mod capture;
mod ddl;
mod drift;
mod error;
mod notices;
pub mod plan;
mod plugins;
pub mod runner;
mod slot;
pub mod snapshot;
pub mod stream;
mod sync;
mod tables;
mod timeline;
pub mod versions;
mod watchers;

pub use crate::state::PipelineState;
pub use error::PipelineError;
pub use runner::run;

use std::sync::Arc;

use crate::bookkeeping::{Bookkeeping, Connector};
use crate::settings::Settings;
use crate::types::FencingToken;

/// Everything a pipeline needs, shared with the supervisor.
pub struct PipelineContext {
    pub bookkeeping: Arc<Bookkeeping>,
    pub settings: Arc<Settings>,
    pub connector: Connector,
    /// The token of this daemon's lease on the connector: every write to the replica is
    /// fenced with it.
    pub lease: FencingToken,
    /// How many runs in a row ended in a failure before this one.
    pub failures: u32,
}
