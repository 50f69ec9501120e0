//! The copy itself: schema and rows of the source as of one exported snapshot. Which
//! tables are copied under which snapshot, and how an interrupted snapshot goes on, is
//! `pipeline/sync.rs`'s.
//!
//! ```text
//!  CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')  ──►  snapshot S, consistent point C
//!        ├─► SchemaDump::create        pg_dump --snapshot=S → file (kept in the replica)
//!        ├─► restore(PreData)          pg_restore: tables, types, functions, …
//!        ├─► copy_data                 N workers: source session on S ──COPY──► replica,
//!        │                             each table recorded "copied at C" as it completes
//!        └─► restore(PostData)         indexes, constraints, triggers (after the rows)
//! ```
//!
//! Schema and rows of a table both come from one snapshot, the same instant, and its
//! slot's stream starts exactly after it: one cut per table, nothing lost, nothing applied
//! twice. Post-data comes last because building indexes and checking constraints once
//! over loaded tables is far cheaper than maintaining them row by row.
//!
//! # Crash windows
//!
//! S lives only as long as the session that exported it stays open and idle, so a copy
//! cannot go on under S after a crash: what survives is what the replica recorded.
//!
//! | crash during                          | state left behind                | recovery            |
//! |---------------------------------------|----------------------------------|---------------------|
//! | slot creation, pre-data               | no snapshot record               | start over          |
//! | copy_data                             | tables copied (recorded), others | the others again,   |
//! |                                       | empty or partial (not recorded)  | under a new snapshot|
//! | post-data restore (parallel)          | some indexes and constraints     | again, `--clean`    |
//! | before C is recorded as applied       | a complete replica               | record it           |
//!
//! A table's rows and the record "copied at C" commit in one transaction (a table copied
//! in page ranges: after its last range), and every write checks the lease's fencing
//! token first, so a daemon that lost the connector cannot add to a table its successor
//! copies. A table without a record is emptied before it is copied again.
//!
//! Replica sessions commit with `synchronous_commit = off`: the later synchronous commit
//! that records the applied position flushes the WAL before it, which includes every row
//! copied here (same server, one WAL); a table whose copy was lost with an unflushed WAL
//! has lost its record with it, and is copied again.
//!
//! # Schema
//!
//! `pg_dump --format=custom` (so there are no psql `\restrict` meta-commands to deal
//! with) writes to a private temporary file, and `pg_restore` reads it back through a
//! filtered table of contents: schemas that already exist on the replica (`public`, or one
//! an extension was just created in) are not created again, since `pg_dump -n public`
//! emits `CREATE SCHEMA public`, which would fail. `pg_dump -n` dumps no extensions, so
//! pre-data first creates on the replica every extension the selected schemas live in or
//! depend on (`CREATE EXTENSION IF NOT EXISTS … WITH SCHEMA … CASCADE`), which needs the
//! extension installed on the branch-store server. Owners, privileges, tablespaces,
//! publications, subscriptions and security labels are not restored.
//!
//! # Data
//!
//! Each worker holds one source session in `REPEATABLE READ READ ONLY` on S and one
//! replica session, and takes chunks from a shared queue, largest first: whole tables, or
//! ranges of heap pages (`ctid >= '(a,0)' AND ctid < '(b,0)'`, a TID Range Scan from
//! PostgreSQL 14 on; older sources copy whole tables) for tables above `chunk_bytes`.
//! Each chunk is `COPY t (cols) TO STDOUT (FORMAT binary)` (a whole table), or
//! `COPY (SELECT cols FROM ONLY t WHERE <ctid range>) TO STDOUT` (a range), piped into
//! `COPY t (cols) FROM STDIN (FORMAT binary)` in 64 kB blocks cut straight from the
//! source connection's read buffer ([`SnapshotSession`]): values pass through as bytes,
//! never decoded nor handled row by row, and no table is ever held in memory. A whole
//! table is loaded with `FREEZE` after a `TRUNCATE` in the same transaction, so its pages
//! are all-frozen from the start.
//! Tables whose binary form does not travel between servers
//! ([`SourceTable::binary_copy`]: composites, arrays of enums or extension types, object
//! references such as `regclass`, `tsquery`) use `FORMAT text` on both sides instead.
//! The decision is made up front from the column types, so a table always gets the same
//! form; a value the replica still rejects stops the snapshot with
//! [`SnapshotError::Value`], which says what to do.
//! Generated columns are not copied; the replica computes them.

use std::fmt;
use std::io;
use std::time::Duration;

use super::versions::{StoreTooOld, ToolProblem, ToolRange};
use crate::change::TableName;
use crate::pg::retry::{self, ErrorKind, NextStep};
use crate::pg::{self, error_message, ConnInfo, ConnectError, PgClient};
use crate::sink::SinkError;
use crate::source::catalog::{CatalogError, SourceTable};
use crate::source::copy::snapshot_unknown;
use crate::types::{FencingToken, Lsn};
pub use tools::tool_failure_passes;
pub use tools::Tools;

mod data;
mod schema;
mod tools;

pub use data::{copy_data, Progress};
pub use schema::SchemaDump;

/// One snapshot of a connector: where from, where to, what.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotJob<'a> {
    pub source: &'a ConnInfo,
    /// The branch-store server, with `dbname` set to the replica database.
    pub replica: &'a ConnInfo,
    /// `snapshot_name` of the slot's `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')`.
    pub snapshot_name: &'a str,
    /// Schemas to replicate (at least one): whole, or only the tables `only` names.
    pub schemas: &'a [String],
    /// Only these tables' definitions are dumped (tables added to a complete replica,
    /// whose schemas it has); `None`: the whole `schemas`.
    pub only: Option<&'a [TableName]>,
    /// Schemas the replica has already (a schema added to a complete replica): a foreign
    /// key into them is kept.
    pub replicated: &'a [String],
    /// The tables to copy, from [`crate::source::catalog::list_tables`] on the snapshot.
    pub tables: &'a [SourceTable],
    /// The source position the snapshot is exact at (its slot's consistent point): what
    /// each table copied is recorded as exact at.
    pub copied_at: Lsn,
    /// The lease's fencing token: every write to the replica checks it.
    pub token: FencingToken,
    /// No table is started after this (see [`copy_data`]).
    pub deadline: Option<std::time::Instant>,
    /// Tables left out entirely, schema and rows (partitions of a partitioned table too).
    pub exclude: &'a [TableName],
    /// Parallel copy workers (each holds one source and one replica session); also the
    /// number of `pg_restore` jobs for post-data.
    pub workers: usize,
    /// Tables larger than this are split into ranges of about this size; 0 never splits.
    pub chunk_bytes: u64,
    /// pg_dump and pg_restore, chosen for the source and the branch store.
    pub tools: &'a Tools,
}

/// Which part of the schema to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Schemas, types, functions, tables, sequences: everything rows need.
    PreData,
    /// Indexes, constraints, triggers, rules, policies: everything that may wait for rows.
    PostData,
}

impl Section {
    fn as_arg(self) -> &'static str {
        match self {
            Section::PreData => "pre-data",
            Section::PostData => "post-data",
        }
    }
}

/// What [`copy_data`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Tables whose copy completed (the others were not started before the deadline).
    pub tables: usize,
    pub rows: u64,
    /// Bytes of column values, as the source sent them.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Which server an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Replica,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Replica => "replica database on the branch store",
        })
    }
}

/// Why a snapshot step failed. The tables whose copy did not complete are copied again
/// (see the module docs); [`SnapshotError::kind`] says whether doing so automatically may
/// succeed, or whether the operator must act first.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot job is invalid: {reason}")]
    InvalidJob { reason: String },

    #[error("connecting to the {side} failed: {}", connect_message(.source, *.side))]
    Connect {
        side: Side,
        #[source]
        source: ConnectError,
    },

    #[error("{side}: {context} failed: {}", error_message(.source))]
    Query {
        side: Side,
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The replica rejected a value copied from the source.
    #[error(
        "replica: writing {table} failed on a value: {}; {}",
        error_message(.source),
        .remedy.advice(.table)
    )]
    Value {
        table: String,
        remedy: ValueRemedy,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("source: {context} failed: {source}")]
    Source {
        context: String,
        #[source]
        source: crate::source::Error,
    },

    #[error(
        "the exported snapshot {name} can no longer be used ({reason}): the replication \
         connection that exported it has run another command or closed; the tables not \
         copied yet are copied again under a new snapshot"
    )]
    SnapshotGone { name: String, reason: String },

    #[error(
        "{program} was not found ({detail}); install the PostgreSQL client programs \
         (postgresql-client-<major> at least the source's version) or set \
         TRIBUTARY_PG_BINDIR to their directory"
    )]
    ToolMissing { program: String, detail: String },

    #[error(
        "{path} is from PostgreSQL {tool}, {}; use {range}: set TRIBUTARY_PG_BINDIR to their \
         bin directory",
        .range.explain(*.problem)
    )]
    ToolUnfit {
        path: String,
        tool: u32,
        range: ToolRange,
        problem: ToolProblem,
    },

    #[error(transparent)]
    StoreTooOld(#[from] StoreTooOld),

    #[error("{program} failed ({status}): {stderr}")]
    ToolFailed {
        program: String,
        status: String,
        /// The program's error output, trimmed (the password is never in it: it is passed
        /// in the environment, and libpq does not print it).
        stderr: String,
        transient: bool,
    },

    #[error(transparent)]
    Catalog(#[from] CatalogError),

    /// Writing the replica's records, or a newer owner claimed the replica (fenced).
    #[error(transparent)]
    Sink(#[from] SinkError),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl SnapshotError {
    /// Retry or stop ([`crate::pg::retry`]): starting the snapshot over may succeed after
    /// lost connections, servers restarting, resource limits, a snapshot that died with its
    /// replication connection. Bad credentials, missing extensions, client programs or a
    /// branch store of versions that do not fit, and SQL the replica rejects need the
    /// operator.
    pub fn kind(&self) -> ErrorKind {
        let transient = match self {
            SnapshotError::Connect { source, .. } => source.is_transient(),
            SnapshotError::Query { source, .. } => retry::postgres(source),
            SnapshotError::Source { source, .. } => return source.kind(),
            SnapshotError::Catalog(e) => return e.kind(),
            SnapshotError::Sink(e) => return e.kind(),
            SnapshotError::SnapshotGone { .. } => true,
            SnapshotError::ToolFailed { transient, .. } => *transient,
            SnapshotError::InvalidJob { .. }
            | SnapshotError::Value { .. }
            | SnapshotError::ToolMissing { .. }
            | SnapshotError::ToolUnfit { .. }
            | SnapshotError::StoreTooOld(_)
            | SnapshotError::Io { .. } => false,
        };
        ErrorKind::of(transient, NextStep::FixCause)
    }
}

/// What the operator can do about a value the replica rejected during the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRemedy {
    /// A `reg*` value names an object the replica's server lacks: a role (roles belong to
    /// a server, not a database) or an object outside the replicated schemas.
    CreateObject,
    /// The value's copied form does not read back: a gap in the choice of COPY format.
    Report,
}

impl ValueRemedy {
    /// The remedy for a COPY into the replica that failed with `sqlstate`; `None` when
    /// the failure is not about a value.
    fn of(sqlstate: &str) -> Option<ValueRemedy> {
        match sqlstate {
            // undefined_object (roles, types, text search configurations), undefined
            // table, function, schema.
            "42704" | "42P01" | "42883" | "3F000" => Some(ValueRemedy::CreateObject),
            // Data exceptions, and the internal errors of binary receive functions
            // ("malformed tsquery").
            code if code.starts_with("22") || code == "XX000" => Some(ValueRemedy::Report),
            _ => None,
        }
    }

    fn advice(self, table: &str) -> String {
        let exclude = format!(
            "or leave the table out: {{\"{table}\": \"exclude\"}} in a \
             --replica-identity-decisions file for `tributary connector retry-setup`"
        );
        match self {
            ValueRemedy::CreateObject => format!(
                "a column of a reg* type (regrole, regclass, …) names an object the branch \
                 store lacks: create the role on the branch-store server (roles are per \
                 server), or replicate the schema that holds the object (`tributary \
                 connector update <connector> --schemas <schemas>`), then run `tributary connector retry-setup`; \
                 {exclude}"
            ),
            ValueRemedy::Report => format!(
                "the source stores a value whose copied form the replica cannot read back: \
                 please report it to the tributary developers with the column's type; until \
                 then {exclude}"
            ),
        }
    }
}

/// tokio-postgres's `Display` says only "db error"; this gives the server's words, or the
/// chain of causes.
fn connect_message(error: &ConnectError, side: Side) -> String {
    match error {
        ConnectError::Tls { target, reason } => format!("TLS with {target}: {reason}"),
        ConnectError::NoServer { .. } => error.to_string(),
        ConnectError::Postgres {
            target,
            error: source,
        } => {
            let which = match side {
                Side::Source => "source",
                Side::Replica => "branch store",
            };
            let advice = match source.code().map(|c| c.code()) {
                Some("28P01" | "28000") => {
                    format!(
                        "; check the user name and password in the {which} URL, and pg_hba.conf"
                    )
                }
                Some("3D000") => format!("; check the database name in the {which} URL"),
                Some("42501") => format!("; the {which} user lacks a privilege it needs"),
                _ => String::new(),
            };
            format!("{target}: {}{advice}", error_message(source))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn connect(side: Side, info: &ConnInfo) -> Result<PgClient, SnapshotError> {
    pg::connect(info)
        .await
        .map_err(|source| SnapshotError::Connect { side, source })
}

async fn server_version_num(client: &PgClient, side: Side) -> Result<u32, SnapshotError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(|e| query_error(side, "reading the server version", e))?;
    Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}

/// `SET TRANSACTION SNAPSHOT` failed: an unknown snapshot is one whose exporting
/// connection has moved on.
fn import_error(name: &str, error: tokio_postgres::Error) -> SnapshotError {
    match error.as_db_error() {
        Some(db) if snapshot_unknown(db.code().code()) => SnapshotError::SnapshotGone {
            name: name.to_owned(),
            reason: db.message().to_owned(),
        },
        _ => query_error(Side::Source, "importing the snapshot", error),
    }
}

fn source_error(context: &str, source: crate::source::Error) -> SnapshotError {
    SnapshotError::Source {
        context: context.to_owned(),
        source,
    }
}

fn query_error(side: Side, context: &str, source: tokio_postgres::Error) -> SnapshotError {
    SnapshotError::Query {
        side,
        context: context.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_values_get_a_remedy() {
        for (code, remedy) in [
            ("42704", Some(ValueRemedy::CreateObject)),
            ("42P01", Some(ValueRemedy::CreateObject)),
            ("42883", Some(ValueRemedy::CreateObject)),
            ("3F000", Some(ValueRemedy::CreateObject)),
            ("22P02", Some(ValueRemedy::Report)),
            ("22P03", Some(ValueRemedy::Report)),
            ("XX000", Some(ValueRemedy::Report)),
            ("23505", None),
            ("53100", None),
            ("08006", None),
        ] {
            assert_eq!(ValueRemedy::of(code), remedy, "{code}");
        }
        let advice = ValueRemedy::CreateObject.advice("app.t");
        assert!(
            advice.contains("create the role on the branch-store server"),
            "{advice}"
        );
        assert!(advice.contains(r#"{"app.t": "exclude"}"#), "{advice}");
    }
}
