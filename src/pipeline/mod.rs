//! One pipeline per connector: setup, snapshot, streaming. `runner.rs` holds the order
//! of things, `snapshot.rs` the initial copy, `stream.rs` the apply loop.

mod capture;
mod ddl;
mod drift;
mod error;
mod notices;
mod plugins;
pub mod runner;
mod slot;
pub mod snapshot;
pub mod state;
pub mod stream;

pub use error::PipelineError;
pub use runner::{run, PipelineContext};
pub use state::PipelineState;
