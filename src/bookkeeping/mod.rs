//! The bookkeeping schema `tributary` in the branch store's control database (the
//! database named in `store.url`): what the daemon knows about its connectors.
//!
//! ```text
//! tributary.installation      one row: this installation's random id (in new slot names),
//!                             and the fingerprint of the key its source URLs are sealed with
//! tributary.connectors        one row per connector: name, encrypted source URL, schemas,
//!    │                        enabled, slot (and whether we created it) and replica names,
//!    │                        state + last error + next step, source identity
//!    │                                                         ── trigger: NOTIFY tributary_connectors
//!    ├─ connector_tables      per table of the current snapshot: decision, sync state, counters
//!    ├─ table_decisions       tables without a usable replica identity: exclude, add_pk or
//!    │                        replica_identity_full, as decided at `connector create`
//!    ├─ state_history         every state the pipeline was put in, with the error
//!    ├─ timeline_changes      every new timeline of the source followed (a failover)
//!    ├─ branches              databases copied from the replica: state, source LSN, the
//!    │                        role its URL logs in as (password sealed)
//!    │                                                         ── trigger: NOTIFY tributary_branches
//!    ├─ apply_lag             the apply lag (and changes applied) its daemon last measured
//!    ├─ leases                which daemon runs it, until when, with which fencing token
//!    └─ lease_history         every lease taken, and when it ended
//! tributary._sqlx_migrations  applied migrations (sqlx)
//! ```
//!
//! The schema is created by the sqlx migrations in `migrations/`, run at every start and by
//! `tributary migrate`; applied ones are skipped and an advisory lock keeps two daemons
//! starting together apart. Only this module reads or writes these tables, with plain
//! `sqlx::query` calls (nothing needs a database at build time).
//!
//! Source URLs carry passwords, so they are stored encrypted (see `secrets.rs`) beside a
//! masked copy for display; [`Bookkeeping::source_url`] is the one way back to the
//! password. The supervisor learns about changes through LISTEN on [`NOTIFY_CHANNEL`]
//! (a trigger notifies on every connector row change) and polls as well, since a
//! notification sent while it was reconnecting is lost.

mod branches;
mod connectors;
mod credentials;
mod error;
mod keys;
mod leases;
mod secrets;
mod store;
mod tables;
mod timelines;

pub use branches::{Branch, BranchAccess, BranchLock, BranchState, Hold};
pub use connectors::{ApplyLag, Connector, Failure, SetupChange, SetupRequest, StateChange};
pub use credentials::SourceSeen;
pub use error::Error;
pub use leases::Lease;
pub use store::{Bookkeeping, BRANCH_CHANNEL, NOTIFY_CHANNEL};
pub use tables::{TableDecision, TableStatus, TableSyncState, UNLOGGED_TABLE};
pub use timelines::TimelineChange;

/// A counter increment as bigint. Beyond `i64::MAX` the sum fails in the database, which
/// is as good as anything for a number that cannot occur.
fn counter(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
