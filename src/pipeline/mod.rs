//! One pipeline per connector: setup, snapshot, streaming.

pub mod snapshot;
pub mod state;

pub use state::PipelineState;
