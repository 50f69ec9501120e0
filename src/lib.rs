//! tributary: a Postgres CDC replication daemon. See `ARCHITECTURE.md` for the map.

pub mod change;
pub mod cli;
pub mod pg;
pub mod source;
pub mod types;
