//! Everything that talks to the source database: connection settings, the walsender
//! client, and the wal2json decoder.
//!
//! **Invariant:** nothing outside this module sees the replication wire protocol or
//! wal2json's JSON; the rest of the daemon (the pipeline and `tail` alike) receives
//! [`StreamEvent`]s of decoded [`crate::change::Message`]s, with positions as `Lsn`s and
//! commit times as times (`layering::the_wal2json_format_stops_at_source`).

pub mod capture;
pub mod catalog;
pub mod copy;
mod error;
pub mod identity;
pub mod notice;
pub mod output_plugins;
pub mod preflight;
pub mod prepared;
pub mod progress;
pub mod replication;
pub mod slot;
mod transport;
pub mod wal2json;
mod wire;

pub use crate::pg::{ConnInfo, SslMode};
pub use error::{Error, ServerError};
pub use progress::AckTracker;
pub use replication::{
    CreatedSlot, Keepalive, ReplicationClient, ReplicationStream, SnapshotAction, StreamEvent,
    SystemInfo,
};
