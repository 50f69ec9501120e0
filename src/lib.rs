//! tributary: a Postgres CDC replication daemon. See `ARCHITECTURE.md` for the map.

pub mod bookkeeping;
pub mod change;
pub mod cli;
pub mod control;
pub mod crash;
pub mod metrics;
pub mod monitor;
pub mod pg;
pub mod pipeline;
pub mod settings;
pub mod sink;
pub mod source;
pub mod state;
pub mod supervisor;
pub mod types;

#[cfg(test)]
mod layering;
