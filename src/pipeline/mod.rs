//! One pipeline per connector: setup, snapshot, streaming. `runner.rs` holds the order
//! of things, `snapshot/` the initial copy (`snapshot/tools.rs` its pg_dump and pg_restore),
//! `stream/` the apply loop; `versions.rs` says which PostgreSQL versions work together.

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
mod tables;
mod timeline;
pub mod versions;

pub use crate::state::PipelineState;
pub use error::PipelineError;
pub use runner::{run, PipelineContext};
