//! `connector preflight`: can tributary replicate this source database? Checked before
//! anything is created.
//!
//! Preflight changes nothing and stores nothing. It reads settings and the catalog over one
//! plain SQL session, proves that wal2json loads by creating and dropping a uniquely named
//! *temporary* logical slot over a replication connection, and compares the source's
//! identity with the connectors the branch store already knows, and the database's
//! tributary slots with this installation's (other installations' are reported). A temporary slot belongs to
//! its session: the server drops it when the session ends, however it ends (an error,
//! Ctrl-C, a killed process), so the probe cannot leave behind a slot that retains WAL.
//! Persistent slots with a probe's name prefix can only come from older tools or from
//! hand-made tests; they are reported with the statement that drops them.
//!
//! ```text
//!   transport ──► login ──► settings + catalog ──► probe slot ──► judge ──► Report
//!   (tcp, tls)    (auth)    (one SQL session)      (replication)  (pure)
//! ```
//!
//! Gathering stops at the first stage that fails, and the checks that needed the later
//! stages are reported as skipped with the reason, not as failures piled on one cause.
//! Judging is a pure function of what was gathered, so every rule is unit-tested without a
//! server. Nothing here prints: `cli/preflight.rs` renders the [`Report`].

use std::cmp::max;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::catalog::{self, ForeignKey, ReplicaIdentity};
use super::error::{Error, Result};
use super::identity;
use super::replication::{self, parse_pg_duration, ReplicationClient, SnapshotAction};
use super::wire::{self, Connection, Encryption, TransportError};
use crate::change::TableName;
use crate::pg::{quote_ident, quote_literal, quote_table, ConnInfo, SslMode};
use crate::source::capture::{self, CaptureStatus, CAPTURE_VERSION};
use crate::source::output_plugins::PluginList;
use crate::source::prepared::{self, PreparedXact};
use crate::source::slot;
use crate::types::{InstallationId, SlotName};
use tables::{judge_missing_identity, judge_unlogged};

mod failover;
mod gather;
mod judge;
mod judge_schema;
mod plugins;
mod script;
mod tables;
#[cfg(test)]
mod tests;

use gather::*;
use judge::*;
pub use judge_schema::describe_foreign_keys;
use judge_schema::*;
use script::*;

/// Oldest supported source: the queries below and the replication commands assume it.
const MIN_SERVER_VERSION: u32 = 130_000;

/// Name prefix of preflight's probe slot.
const PROBE_SLOT_PREFIX: &str = "tributary_preflight_";

/// Prefixes of the slots tributary's short-lived probes create (preflight, the
/// `numeric-data-types-as-string` probe, `tail`, `verify`). All of them are temporary: a
/// persistent one is a leftover, and it retains WAL until dropped.
const PROBE_SLOT_PREFIXES: [&str; 4] = [
    PROBE_SLOT_PREFIX,
    "tributary_probe_",
    "tributary_tail_",
    "tributary_verify_",
];

/// Creating a logical slot waits for every transaction running on the source to end, so a
/// forgotten open transaction would hold the probe (and the process) forever.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Free WAL senders wanted: after a dropped connection the server keeps the old sender
/// until it notices, so reconnecting needs a second one.
const SENDER_HEADROOM: usize = 2;

/// Free slots the grant script makes room for: the connector's own and one for a probe or a
/// new snapshot.
const SLOT_HEADROOM: usize = 2;

/// The grant script never raises `max_replication_slots` or `max_wal_senders` below this:
/// small values are what left the server without room in the first place.
const SETTING_FLOOR: usize = 10;

/// A finite `max_slot_wal_keep_size` below this (or below `max_wal_size`) risks
/// invalidating the slot during an ordinary burst of writes.
const SMALL_SLOT_WAL_KEEP_MB: i64 = 1024;

/// Shorter `wal_sender_timeout`s end the stream whenever tributary or the network stalls
/// for a moment.
const SHORT_WAL_SENDER_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQL session quotes literals the standard way ([`quote_literal`]), so it asks for it.
const SESSION_PARAMS: &[(&str, &str)] = &[("options", "-c standard_conforming_strings=on")];

// Check names, in report order (see `ORDER`).
const TCP: &str = "tcp reachable";
const TLS: &str = "tls";
const AUTH: &str = "authentication";
const VERSION: &str = "server version";
const PRIMARY: &str = "primary or standby";
const WAL_LEVEL: &str = "wal_level";
const SLOTS: &str = "replication slots";
const SENDERS: &str = "wal senders";
const REPLICATION: &str = "replication privilege";
const PREPARED: &str = "prepared transactions";
const WAL2JSON: &str = "wal2json";
const NUMERIC: &str = "numeric-data-types-as-string";
const LEFTOVERS: &str = "leftover probe slots";
/// Stands for one check per selected schema, named by [`schema_check`].
const SCHEMAS: &str = "schema";
const CREATE: &str = "create on database";
const EVENT_TRIGGERS: &str = "event triggers";
/// One line when every table has an identity, else one line per table without.
const IDENTITY: &str = "replica identity";
const UNLOGGED: &str = "unlogged tables";
const FOREIGN_KEYS: &str = "foreign keys";
const DUPLICATE: &str = "duplicate source";
const INSTALLATIONS: &str = "other installations";
const SLOT_WAL_KEEP: &str = "max_slot_wal_keep_size";
const SENDER_TIMEOUT: &str = "wal_sender_timeout";
const LARGE_OBJECTS: &str = "large objects";
const FAILOVER: &str = "failover";

const ORDER: [&str; 25] = [
    TCP,
    TLS,
    AUTH,
    VERSION,
    PRIMARY,
    WAL_LEVEL,
    SLOTS,
    SENDERS,
    REPLICATION,
    PREPARED,
    WAL2JSON,
    NUMERIC,
    LEFTOVERS,
    SCHEMAS,
    CREATE,
    EVENT_TRIGGERS,
    IDENTITY,
    UNLOGGED,
    FOREIGN_KEYS,
    LARGE_OBJECTS,
    DUPLICATE,
    INSTALLATIONS,
    SLOT_WAL_KEEP,
    SENDER_TIMEOUT,
    FAILOVER,
];

/// How one check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// As needed; `value` is what was found.
    Pass { value: String },
    /// Works, with a risk worth knowing; does not fail preflight.
    Warn { value: String, fix: String },
    /// Blocks replication until fixed.
    Fail { value: String, fix: String },
    /// Not checked, because something it depends on failed or is unavailable.
    Skip { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
}

impl Check {
    pub(crate) fn pass(name: impl Into<String>, value: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Pass {
                value: value.into(),
            },
        }
    }

    pub(crate) fn warn(
        name: impl Into<String>,
        value: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Warn {
                value: value.into(),
                fix: fix.into(),
            },
        }
    }

    pub(crate) fn fail(
        name: impl Into<String>,
        value: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Fail {
                value: value.into(),
                fix: fix.into(),
            },
        }
    }

    pub(crate) fn skip(name: impl Into<String>, reason: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Skip {
                reason: reason.into(),
            },
        }
    }
}

/// The checklist, in order, and the SQL that fixes what grants and settings can fix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
    /// A psql script for a superuser: grants, `REPLICATION`, and settings raised to what
    /// tributary needs. `None` when none of that is missing.
    pub grant_script: Option<String>,
    /// Every table of the selected schemas whose changes would be streamed, with its
    /// replica identity; empty when the catalog could not be read.
    pub tables: Vec<TableIdentity>,
    /// The foreign keys of those tables.
    pub foreign_keys: Vec<ForeignKey>,
    /// Columns (`schema.table.column (type)`) whose NaN and ±Infinity the source's wal2json
    /// sends as null (it predates 2.6); empty when it can send them or none is affected.
    pub nan_as_null_columns: Vec<String>,
    /// The source's major version (15 for 15.4), when it is a supported server.
    pub server_major: Option<u32>,
}

/// One table of the selected schemas and its replica identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableIdentity {
    pub name: TableName,
    pub identity: ReplicaIdentity,
}

impl Report {
    /// Whether every required check passed; warnings and skips do not count against it.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail { .. }))
    }

    /// The failed checks other than the per-table replica identity ones, which
    /// `connector create` turns into decisions instead ([`Report::without_identity`]).
    pub fn blocking_failures(&self) -> impl Iterator<Item = &Check> {
        let identity_checks: Vec<String> = self
            .without_identity()
            .map(|t| identity_check(&t.name))
            .collect();
        self.failures()
            .filter(move |c| !identity_checks.contains(&c.name))
    }

    /// The tables without a usable replica identity: their UPDATEs and DELETEs cannot be
    /// replicated.
    pub fn without_identity(&self) -> impl Iterator<Item = &TableIdentity> {
        self.tables.iter().filter(|t| !t.identity.is_usable())
    }
}

/// The name of the check of one table without a usable replica identity.
pub fn identity_check(table: &TableName) -> String {
    format!("{IDENTITY} {}", display(table))
}

/// `ALTER TABLE "schema"."table" REPLICA IDENTITY FULL;`: for the operator to run on the
/// source; tributary never changes a replica identity itself.
pub fn replica_identity_full_sql(table: &TableName) -> String {
    format!("ALTER TABLE {} REPLICA IDENTITY FULL;", quote_table(table))
}

/// What the branch store knows, for the duplicate-source and other-installations checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownSources {
    /// They could not be looked up; the reason is shown on the skipped checks.
    Unavailable(String),
    Known {
        /// This installation; `None` when its bookkeeping predates installation ids or
        /// does not exist yet.
        installation: Option<InstallationId>,
        /// The slots of this installation's connectors (the one being set up again too).
        slots: Vec<SlotName>,
        /// The other connectors.
        connectors: Vec<KnownSource>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownSource {
    pub connector: String,
    /// What `IDENTIFY_SYSTEM` said when its pipeline first ran; `None` before that.
    pub identity: Option<SourceIdentity>,
    /// Where its URL points: [`ConnInfo::target`] and the database name.
    pub address: Option<(String, String)>,
}

/// One database of one PostgreSQL cluster, wherever it is reached from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIdentity {
    pub system_id: String,
    pub database: String,
}

/// Runs every check against the source `info` for `schemas`. Never fails: whatever goes
/// wrong is a check's outcome.
pub async fn run(info: &ConnInfo, schemas: &[String], known: &KnownSources) -> Report {
    let gathered = gather(info, schemas).await;
    judge(info, schemas, &gathered, known)
}
