//! The branch-store sink: the replica database's life cycle, and [`ReplicaSink`], which
//! applies decoded changes to it exactly once.
//!
//! - `replica.rs`: creating and dropping the replica database, its progress table
//!   (`tributary.applied`), and the settings of an apply session.
//! - `apply/`: target transactions, batching, pipelining, and how exactly-once holds (its
//!   `mod.rs` lists its parts).
//! - `sync.rs`: the replica's record of its snapshot, table by table, which lets an
//!   interrupted snapshot resume.
//! - `table.rs`: table metadata from the replica's catalog, and the SQL built from it.
//! - `triggers.rs`: triggers enabled ALWAYS or REPLICA, held disabled in the replica (they
//!   would fire under apply) and enabled again in branches.
//! - `error.rs`: [`SinkError`], with [`SinkError::kind`] saying retry or stop (by `pg::retry`).
//!
//! **Invariants:** the sink never sees wal2json or JSON, only [`crate::change::Change`]s;
//! nothing is skipped (a change that fails or matches no row fails the target
//! transaction); the progress row is written in the same transaction as the changes it
//! covers and never moves backwards; row values are never logged above debug level.

mod apply;
mod error;
mod replica;
pub mod sync;
mod table;
mod triggers;

pub use apply::{Misfit, ReplicaColumn, ReplicaSink, MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES};
pub(crate) use error::replication_role_advice;
pub use error::SinkError;
pub use replica::{
    check_apply_session, checkpoint_ahead, claim_replica, copy_database, drop_database,
    prepare_replica, replica_applied_lsn, replica_exists, server_major, source_tables,
};
pub(crate) use replica::{connect, setup};
pub use triggers::release as release_triggers;
