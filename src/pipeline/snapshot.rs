//! The initial copy: schema and rows of the source as of the slot's exported snapshot.
//!
//! ```text
//!  CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')  ──►  snapshot S, consistent point C
//!        │ (the replication connection stays idle from here until the rows are copied)
//!        ├─► SchemaDump::create        pg_dump --snapshot=S → file
//!        ├─► restore(PreData)          pg_restore: tables, types, functions, …
//!        ├─► copy_data                 N workers: source session on S ──COPY──► replica
//!        ├─► restore(PostData)         indexes, constraints, triggers (after the rows)
//!        └─► the pipeline records C beside the replica, then streams from C
//! ```
//!
//! Schema and rows both come from S, so they are the same instant, and the slot's stream
//! starts exactly after S: one cut, nothing lost, nothing applied twice. Post-data comes
//! last because building indexes and checking constraints once over loaded tables is far
//! cheaper than maintaining them row by row.
//!
//! # Crash windows
//!
//! S lives only as long as the replication connection that exported it stays open and
//! idle, so no step here can be resumed after a crash, a lost connection or a restart of
//! either server: S is gone, and a new snapshot is a different instant. Resuming a partial
//! copy under a new snapshot would mix rows of two instants, and the new slot's stream
//! would start after the new instant only — rows changed in between would be lost or
//! doubled. Hence one rule for every window up to the moment the pipeline records C:
//!
//! | crash during                          | state left behind                | recovery     |
//! |---------------------------------------|----------------------------------|--------------|
//! | slot creation                         | maybe a slot, no replica         | start over   |
//! | pre-data restore (single transaction) | empty replica database           | start over   |
//! | copy_data                             | some tables full, some partial   | start over   |
//! | post-data restore (parallel)          | some indexes and constraints     | start over   |
//! | before C is recorded                  | a complete replica, C unknown    | start over   |
//!
//! "Start over" is the pipeline's job: drop the replica database and the slot, create a
//! new slot with a new snapshot, and run every step again. This module keeps no state
//! between calls and records nothing in the bookkeeping (progress goes to the caller's
//! callback), so running it again from scratch on a fresh replica database is always
//! correct. Once C is recorded the snapshot is complete and restarts resume streaming
//! from the replica's applied position instead.
//!
//! Replica sessions commit with `synchronous_commit = off`: a crash before C is recorded
//! starts over anyway, and the later synchronous commit that records C flushes the WAL
//! before it, which includes every row copied here (same server, one WAL).
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

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use super::tools::tool_failure_passes;
pub use super::tools::Tools;
use super::tools::{conninfo_quote, libpq_env, run_tool, run_watched};
use super::versions::{StoreTooOld, ToolProblem, ToolRange};
use crate::change::TableName;
use crate::pg::retry::{self, ErrorKind, NextStep};
use crate::pg::{
    self, error_message, quote_ident, quote_literal, ConnInfo, ConnectError, PgClient,
};
use crate::source::catalog::{self, CatalogError, SourceTable};
use crate::source::copy::{snapshot_unknown, OpenError, SnapshotSession};

/// One snapshot of a connector: where from, where to, what.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotJob<'a> {
    pub source: &'a ConnInfo,
    /// The branch-store server, with `dbname` set to the replica database.
    pub replica: &'a ConnInfo,
    /// `snapshot_name` of the slot's `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')`.
    pub snapshot_name: &'a str,
    /// Schemas to replicate (at least one).
    pub schemas: &'a [String],
    /// The tables to copy, from [`crate::source::catalog::list_tables`] on the snapshot.
    pub tables: &'a [SourceTable],
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

/// Why a snapshot step failed. Every failure means the snapshot starts over from scratch
/// (see the module docs); [`SnapshotError::kind`] says whether doing so
/// automatically may succeed, or whether the operator must act first.
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
         connection that exported it has run another command or closed; the snapshot must \
         start over with a new slot"
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
// Schema
// ---------------------------------------------------------------------------------------

/// The snapshot's schema, dumped once: [`SchemaDump::restore`] of pre-data before the
/// rows, of post-data after them.
#[derive(Debug)]
pub struct SchemaDump {
    /// Holds `schema.dump` (custom format) and `schema.list` (its filtered table of
    /// contents).
    scratch: ScratchDir,
}

impl SchemaDump {
    /// Creates on the replica the extensions the schemas need, then runs `pg_dump
    /// --schema-only --snapshot=<name> -n <schema>… -T <excluded>… --format=custom` into a
    /// private temporary file and writes the table of contents to restore from it. The
    /// snapshot must stay alive until this returns; restoring no longer needs it.
    pub async fn create(job: &SnapshotJob<'_>) -> Result<SchemaDump, SnapshotError> {
        if job.schemas.is_empty() {
            // pg_dump without -n would dump the whole database.
            return Err(SnapshotError::InvalidJob {
                reason: "no schemas selected".into(),
            });
        }
        let started = Instant::now();
        let tools = job.tools;
        let source = connect(Side::Source, job.source).await?;
        // The catalog as the dump sees it: OIDs and names must match its table of contents.
        source
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(job.snapshot_name)
            ))
            .await
            .map_err(|e| import_error(job.snapshot_name, e))?;
        let replica = connect(Side::Replica, job.replica).await?;
        create_extensions(&source, &replica, job.schemas).await?;
        let exclude = expand_exclusions(&source, job.exclude).await?;
        let schema_oids = source_schema_oids(&source, job.schemas).await?;
        let mut skip = Vec::new();
        let keys = catalog::foreign_keys(&source, job.schemas).await?;
        for key in keys.iter().filter(|k| k.dangles(job.schemas, &exclude)) {
            tracing::warn!(
                table = %key.table,
                constraint = %key.name,
                references = %key.references,
                "foreign key left out of the replica: the table it references is not replicated"
            );
            skip.push(format!("; 2606 {} FK CONSTRAINT ", key.oid));
            skip.push(format!(
                " COMMENT {} CONSTRAINT {} ON {} ",
                toc_name(&key.table.schema),
                toc_name(&key.name),
                toc_name(&key.table.name)
            ));
        }
        drop(source);

        let scratch = ScratchDir::create()?;
        let dump = scratch.path().join("schema.dump");
        let mut pg_dump = tools.command("pg_dump");
        libpq_env(&mut pg_dump, job.source);
        pg_dump
            .args([
                "--schema-only",
                "--format=custom",
                "--no-sync",
                "--strict-names",
            ])
            .arg(format!("--snapshot={}", job.snapshot_name))
            .arg("--file")
            .arg(&dump);
        for schema in job.schemas {
            pg_dump.arg(format!("--schema={}", pattern(&[schema])));
        }
        for table in &exclude {
            pg_dump.arg(format!(
                "--exclude-table={}",
                pattern(&[&table.schema, &table.name])
            ));
        }
        run_watched(
            pg_dump,
            "pg_dump",
            (Side::Source, job.source),
            Some(job.snapshot_name),
        )
        .await?;

        // The replica's existing schemas (`public`, those extensions were just created in)
        // are there already: keep pg_restore from trying to create them.
        let existing: HashSet<String> = replica
            .query("SELECT nspname::text FROM pg_catalog.pg_namespace", &[])
            .await
            .map_err(|e| query_error(Side::Replica, "listing schemas", e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        drop(replica);
        for (oid, name) in schema_oids
            .iter()
            .filter(|(_, name)| existing.contains(name))
        {
            skip.push(format!("; 2615 {oid} SCHEMA "));
            skip.push(format!(" COMMENT - SCHEMA {name} "));
        }
        let mut list_cmd = tools.command("pg_restore");
        list_cmd.arg("--list").arg(&dump);
        let toc = run_tool(list_cmd, "pg_restore --list").await?;
        let schema = SchemaDump { scratch };
        let list = schema.list();
        std::fs::write(&list, filter_toc(&String::from_utf8_lossy(&toc), &skip)).map_err(
            |source| SnapshotError::Io {
                context: format!("writing {}", list.display()),
                source,
            },
        )?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "schema dumped"
        );
        Ok(schema)
    }

    fn dump(&self) -> PathBuf {
        self.scratch.path().join("schema.dump")
    }

    fn list(&self) -> PathBuf {
        self.scratch.path().join("schema.list")
    }

    /// `pg_restore --section=<section> --no-owner --no-privileges --exit-on-error` into the
    /// replica database: pre-data in a single transaction, post-data (index builds) with
    /// `workers` parallel jobs.
    pub async fn restore(
        &self,
        job: &SnapshotJob<'_>,
        section: Section,
    ) -> Result<(), SnapshotError> {
        let started = Instant::now();
        let mut pg_restore = job.tools.command("pg_restore");
        libpq_env(&mut pg_restore, job.replica);
        pg_restore
            .args([
                "--no-owner",
                "--no-privileges",
                "--no-tablespaces",
                "--no-publications",
                "--no-subscriptions",
                "--no-security-labels",
                "--exit-on-error",
            ])
            .arg(format!("--section={}", section.as_arg()))
            .arg(format!(
                "--dbname=dbname={}",
                conninfo_quote(&job.replica.dbname)
            ))
            .arg("--use-list")
            .arg(self.list());
        match section {
            Section::PreData => {
                pg_restore.arg("--single-transaction");
            }
            Section::PostData if job.workers > 1 => {
                pg_restore.arg(format!("--jobs={}", job.workers));
            }
            Section::PostData => {}
        }
        pg_restore.arg(self.dump());
        run_watched(pg_restore, "pg_restore", (Side::Replica, job.replica), None).await?;
        tracing::info!(
            section = section.as_arg(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "schema restored into the replica"
        );
        Ok(())
    }
}

/// Extensions that live in the selected schemas, or that objects in them depend on (a
/// column of an extension's type, an index with its operator class, …). plpgsql is
/// always there.
const EXTENSIONS: &str = "
SELECT e.extname::text, n.nspname::text
  FROM pg_catalog.pg_extension e
  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname <> 'plpgsql'
   AND (n.nspname = ANY($1)
        OR EXISTS (
            SELECT 1
              FROM pg_catalog.pg_depend member
              JOIN pg_catalog.pg_depend used
                ON used.refclassid = member.classid AND used.refobjid = member.objid
             WHERE member.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
               AND member.refobjid = e.oid
               AND member.deptype = 'e'
               AND used.deptype IN ('n', 'a')
               AND (pg_catalog.pg_identify_object(used.classid, used.objid, 0)).schema
                   = ANY($1)))
 ORDER BY e.extname";

async fn create_extensions(
    source: &PgClient,
    replica: &PgClient,
    schemas: &[String],
) -> Result<(), SnapshotError> {
    let rows = source
        .query(EXTENSIONS, &[&schemas])
        .await
        .map_err(|e| query_error(Side::Source, "listing the extensions the schemas use", e))?;
    for row in rows {
        let (name, schema): (String, String) = (row.get(0), row.get(1));
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE EXTENSION IF NOT EXISTS {name} WITH SCHEMA {schema} CASCADE",
            schema = quote_ident(&schema),
            name = quote_ident(&name),
        );
        replica.batch_execute(&sql).await.map_err(|e| {
            query_error(
                Side::Replica,
                &format!(
                    "creating extension {name} in schema {schema} (the replicated schemas \
                     use it; the branch-store server needs it installed)"
                ),
                e,
            )
        })?;
        tracing::info!(extension = %name, schema = %schema, "extension created on the replica");
    }
    Ok(())
}

/// The excluded tables and, for partitioned ones, all their partitions: `pg_dump -T` on
/// a parent alone would still dump its partitions, whose `ATTACH` then fails.
async fn expand_exclusions(
    source: &PgClient,
    exclude: &[TableName],
) -> Result<Vec<TableName>, SnapshotError> {
    let mut all: Vec<TableName> = exclude.to_vec();
    if exclude.is_empty() {
        return Ok(all);
    }
    let schemas: Vec<&str> = exclude.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = exclude.iter().map(|t| t.name.as_str()).collect();
    let rows = source
        .query(
            "SELECT n.nspname::text, c.relname::text
               FROM unnest($1::text[], $2::text[]) x(s, t)
              CROSS JOIN LATERAL pg_catalog.pg_partition_tree(
                    pg_catalog.to_regclass(pg_catalog.quote_ident(x.s) || '.'
                                           || pg_catalog.quote_ident(x.t))) p
               JOIN pg_catalog.pg_class c ON c.oid = p.relid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
            &[&schemas, &names],
        )
        .await
        .map_err(|e| query_error(Side::Source, "listing partitions of excluded tables", e))?;
    for row in rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        if !all.contains(&table) {
            all.push(table);
        }
    }
    Ok(all)
}

async fn source_schema_oids(
    source: &PgClient,
    schemas: &[String],
) -> Result<Vec<(u32, String)>, SnapshotError> {
    Ok(source
        .query(
            "SELECT oid, nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)",
            &[&schemas],
        )
        .await
        .map_err(|e| query_error(Side::Source, "listing schemas", e))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// Comments out (`;`) the table-of-contents entries that contain one of `skip`. Entries
/// read `<id>; <catalog oid> <oid> <kind> <schema> <tag> <owner>`: the schemas the replica
/// has already (`; 2615 <oid> SCHEMA `) and their comments (which need their owner, and
/// are only comments), and foreign keys into tables that are not replicated
/// (`; 2606 <oid> FK CONSTRAINT `) with their comments.
fn filter_toc(toc: &str, skip: &[String]) -> String {
    let mut out = String::with_capacity(toc.len());
    for line in toc.lines() {
        let drop = !line.starts_with(';') && skip.iter().any(|s| line.contains(s.as_str()));
        if drop {
            out.push(';');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A name as pg_dump writes it in a table-of-contents tag: bare when it is a plain
/// lower-case identifier, else quoted (pg_dump also quotes keywords, which constraint and
/// table names rarely are).
fn toc_name(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        quote_ident(name)
    }
}

/// A psql-style name pattern matching exactly these name parts: quoted, so that
/// `* ? . $` and capitals are taken literally.
fn pattern(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// A private (0700) temporary directory, removed with everything in it on drop.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    const PREFIX: &'static str = "tributary-schema-";

    fn create() -> Result<ScratchDir, SnapshotError> {
        use std::os::unix::fs::DirBuilderExt;
        ScratchDir::remove_orphans();
        let path = std::env::temp_dir().join(format!(
            "{}{}-{:016x}",
            ScratchDir::PREFIX,
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| SnapshotError::Io {
                context: format!("creating {}", path.display()),
                source,
            })?;
        Ok(ScratchDir(path))
    }

    /// Removes the directories of processes that no longer run: a killed daemon never
    /// runs `Drop`. A directory is named after its process id; without `/proc` (not
    /// Linux) nothing is removed.
    fn remove_orphans() {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix(ScratchDir::PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!("removing {}: {e}", self.0.display());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------

/// From this version on, `ctid` ranges are read with a TID Range Scan; before, every
/// range would scan the whole table.
const TID_RANGE_SCAN_VERSION: u32 = 140_000;

/// Settings of every worker's source session: no timeouts cut a long read short, values
/// copied as text come out in forms any server parses back exactly (an empty
/// `search_path` qualifies the names `regclass` and its kin print, so that they resolve
/// on the replica whatever its path), and row-level security raises an error rather than
/// silently hiding rows.
const SOURCE_SESSION: &str = "SET statement_timeout = 0; SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; SET row_security = off; \
     SET search_path = ''; \
     SET datestyle = 'ISO, YMD'; SET intervalstyle = postgres; SET timezone = 'UTC'; \
     SET extra_float_digits = 3; SET bytea_output = hex";

/// Settings of every worker's replica session; see the module docs on
/// `synchronous_commit`.
const REPLICA_SESSION: &str = "SET statement_timeout = 0; SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; SET synchronous_commit = off; \
     SET datestyle = 'ISO, YMD'; SET intervalstyle = postgres";

/// Parallel copy of every table of the job from the snapshot into the replica, which must
/// have its pre-data schema. `workers` tasks, each with its own source and replica session,
/// take chunks largest first; the first error stops the others and is returned.
///
/// `progress` is called after each chunk is committed on the replica with the table, the
/// rows and bytes of that chunk, and whether the table is now complete.
pub async fn copy_data(
    job: &SnapshotJob<'_>,
    progress: &(dyn Fn(&TableName, u64, u64, bool) + Send + Sync),
) -> Result<SnapshotStats, SnapshotError> {
    let started = Instant::now();
    let version = {
        let source = connect(Side::Source, job.source).await?;
        server_version_num(&source, Side::Source).await?
    };
    let chunks = plan_chunks(
        job.tables,
        job.chunk_bytes,
        version >= TID_RANGE_SCAN_VERSION,
    );
    let mut remaining = vec![0usize; job.tables.len()];
    for chunk in &chunks {
        remaining[chunk.table] += 1;
    }
    let workers = job.workers.max(1).min(chunks.len());
    tracing::info!(
        tables = job.tables.len(),
        chunks = chunks.len(),
        workers,
        "copying rows under snapshot {}",
        job.snapshot_name
    );
    let context = Arc::new(CopyContext {
        source: job.source.clone(),
        replica: job.replica.clone(),
        snapshot_name: job.snapshot_name.to_owned(),
        tables: job.tables.iter().map(TablePlan::new).collect(),
        queue: Mutex::new(chunks.into()),
    });

    let (events, mut received) = mpsc::unbounded_channel::<ChunkDone>();
    // Owns every worker: dropping it (an error here, or the caller giving up on this
    // future) aborts them all, which closes their sessions.
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker(context.clone(), events.clone()));
    }
    drop(events);

    let mut stats = SnapshotStats {
        tables: job.tables.len(),
        rows: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    let mut report = |done: ChunkDone| {
        remaining[done.table] -= 1;
        stats.rows += done.rows;
        stats.bytes += done.bytes;
        progress(
            &job.tables[done.table].name,
            done.rows,
            done.bytes,
            remaining[done.table] == 0,
        );
    };
    loop {
        tokio::select! {
            // Progress first, so that it is reported before a worker's end is seen.
            biased;
            Some(done) = received.recv() => report(done),
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(error))) => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    return Err(error);
                }
                Some(Err(join_error)) => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    match join_error.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        // Only this function aborts workers, and it has returned by then.
                        Err(e) => unreachable!("copy worker cancelled: {e}"),
                    }
                }
            },
        }
    }
    while let Ok(done) = received.try_recv() {
        report(done);
    }
    stats.elapsed = started.elapsed();
    tracing::info!(
        rows = stats.rows,
        bytes = stats.bytes,
        elapsed_ms = stats.elapsed.as_millis() as u64,
        "rows copied"
    );
    Ok(stats)
}

/// A part of one table: heap pages `[start, end)`, `end` open for the last part (the
/// table may have grown since its size was read), or the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    table: usize,
    start: u64,
    end: Option<u64>,
    estimated_bytes: u64,
}

impl Chunk {
    fn is_whole(&self) -> bool {
        self.start == 0 && self.end.is_none()
    }

    fn filter(&self) -> String {
        match (self.start, self.end) {
            (0, None) => String::new(),
            (0, Some(end)) => format!(" WHERE ctid < '({end},0)'"),
            (start, None) => format!(" WHERE ctid >= '({start},0)'"),
            (start, Some(end)) => format!(" WHERE ctid >= '({start},0)' AND ctid < '({end},0)'"),
        }
    }
}

/// Splits tables above `chunk_bytes` into page ranges of about that size (when `ranges`
/// are efficient on the source), and orders everything largest first so that the longest
/// pieces start early and small tables fill the gaps at the end.
fn plan_chunks(tables: &[SourceTable], chunk_bytes: u64, ranges: bool) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (index, table) in tables.iter().enumerate() {
        let whole = Chunk {
            table: index,
            start: 0,
            end: None,
            estimated_bytes: table.estimated_bytes,
        };
        if !ranges || chunk_bytes == 0 || table.estimated_bytes <= chunk_bytes || table.pages < 2 {
            chunks.push(whole);
            continue;
        }
        let parts = table.estimated_bytes.div_ceil(chunk_bytes).min(table.pages);
        let pages_per_part = table.pages.div_ceil(parts);
        let mut start = 0;
        while start < table.pages {
            let end = start + pages_per_part;
            let pages = end.min(table.pages) - start;
            chunks.push(Chunk {
                table: index,
                start,
                end: (end < table.pages).then_some(end),
                estimated_bytes: table.estimated_bytes / table.pages * pages,
            });
            start = end;
        }
    }
    chunks.sort_by(|a, b| {
        b.estimated_bytes
            .cmp(&a.estimated_bytes)
            .then(a.table.cmp(&b.table))
            .then(a.start.cmp(&b.start))
    });
    chunks
}

/// What every worker shares.
struct CopyContext {
    source: ConnInfo,
    replica: ConnInfo,
    snapshot_name: String,
    tables: Vec<TablePlan>,
    queue: Mutex<VecDeque<Chunk>>,
}

impl CopyContext {
    fn next_chunk(&self) -> Option<Chunk> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

/// The SQL of one table, written once.
struct TablePlan {
    display: String,
    /// `"schema"."table"`.
    qualified: String,
    /// `"a", "b"`: the stored columns, in order.
    columns: String,
    /// ` ("a", "b")`, or nothing for a table without stored columns (which may still
    /// have rows).
    column_list: String,
    binary: bool,
}

impl TablePlan {
    fn new(table: &SourceTable) -> TablePlan {
        let columns = table
            .columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        TablePlan {
            display: format!("{}.{}", table.name.schema, table.name.name),
            qualified: format!(
                "{}.{}",
                quote_ident(&table.name.schema),
                quote_ident(&table.name.name)
            ),
            column_list: if columns.is_empty() {
                String::new()
            } else {
                format!(" ({columns})")
            },
            columns,
            binary: table.binary_copy,
        }
    }

    /// The source side of `chunk`. A whole table is copied by name, which reads it
    /// without the executor (and, like `ONLY`, without an inheritance child's rows, which
    /// are tables of their own); a page range needs a query.
    fn copy_out(&self, chunk: &Chunk) -> String {
        let format = self.format();
        if chunk.is_whole() {
            format!(
                "COPY {}{} TO STDOUT (FORMAT {format})",
                self.qualified, self.column_list
            )
        } else {
            format!(
                "COPY (SELECT {} FROM ONLY {}{}) TO STDOUT (FORMAT {format})",
                self.columns,
                self.qualified,
                chunk.filter()
            )
        }
    }

    /// The replica side of `chunk`. A whole table is loaded with `FREEZE`, right after
    /// [`TablePlan::truncate`] in the same transaction (which `FREEZE` requires): rows are
    /// written frozen and pages marked all-visible, so neither the index builds after the
    /// copy nor the first readers of the replica and its branches rewrite every page to
    /// set hint bits, and no anti-wraparound vacuum has to visit them later. That frozen
    /// rows are visible to older snapshots does not matter: nothing reads the replica
    /// before the snapshot is complete.
    fn copy_in(&self, chunk: &Chunk) -> String {
        let freeze = if chunk.is_whole() { ", FREEZE" } else { "" };
        format!(
            "COPY {}{} FROM STDIN (FORMAT {}{freeze})",
            self.qualified,
            self.column_list,
            self.format()
        )
    }

    /// Opens the transaction of a whole-table load (see [`TablePlan::copy_in`]); the table
    /// is empty already.
    fn truncate(&self) -> String {
        format!("BEGIN; TRUNCATE ONLY {}", self.qualified)
    }

    fn format(&self) -> &'static str {
        if self.binary {
            "binary"
        } else {
            "text"
        }
    }
}

/// A finished chunk, for the progress report.
#[derive(Debug)]
struct ChunkDone {
    table: usize,
    rows: u64,
    bytes: u64,
}

/// One copy worker: opens its sessions, then copies chunks until the queue is empty.
async fn worker(
    context: Arc<CopyContext>,
    events: mpsc::UnboundedSender<ChunkDone>,
) -> Result<(), SnapshotError> {
    let mut source = SnapshotSession::open(&context.source, SOURCE_SESSION, &context.snapshot_name)
        .await
        .map_err(|e| match e {
            OpenError::SnapshotGone { name, source } => SnapshotError::SnapshotGone {
                name,
                reason: source.to_string(),
            },
            OpenError::Session(e) => source_error("opening the snapshot session", e),
        })?;
    let replica = connect(Side::Replica, &context.replica).await?;
    replica
        .batch_execute(REPLICA_SESSION)
        .await
        .map_err(|e| query_error(Side::Replica, "setting up the session", e))?;

    while let Some(chunk) = context.next_chunk() {
        let table = &context.tables[chunk.table];
        let (rows, bytes) = copy_chunk(&mut source, &replica, table, &chunk).await?;
        tracing::debug!(table = %table.display, rows, bytes, start = chunk.start, "chunk copied");
        if events
            .send(ChunkDone {
                table: chunk.table,
                rows,
                bytes,
            })
            .is_err()
        {
            break; // copy_data has gone away.
        }
    }
    source
        .close()
        .await
        .map_err(|e| source_error("ending the snapshot transaction", e))
}

/// COPY data is passed on in blocks of this size: large enough that per-block costs
/// vanish, small enough to stay in the CPU caches.
const COPY_BLOCK: usize = 64 * 1024;

/// One chunk: `COPY … TO STDOUT` on the snapshot piped into `COPY … FROM STDIN` on the
/// replica in blocks of [`COPY_BLOCK`] bytes, committed on its own. Returns the rows the
/// replica took and the bytes of COPY data.
async fn copy_chunk(
    source: &mut SnapshotSession,
    replica: &PgClient,
    table: &TablePlan,
    chunk: &Chunk,
) -> Result<(u64, u64), SnapshotError> {
    let read_error = |e| source_error(&format!("reading {}", table.display), e);
    let write_error =
        |e: tokio_postgres::Error| match e.code().and_then(|c| ValueRemedy::of(c.code())) {
            Some(remedy) => SnapshotError::Value {
                table: table.display.clone(),
                remedy,
                source: e,
            },
            None => query_error(Side::Replica, &format!("writing {}", table.display), e),
        };
    let mut out = source
        .copy_out(&table.copy_out(chunk))
        .await
        .map_err(read_error)?;
    if chunk.is_whole() {
        replica
            .batch_execute(&table.truncate())
            .await
            .map_err(write_error)?;
    }
    let sink = replica
        .copy_in::<_, Bytes>(&table.copy_in(chunk))
        .await
        .map_err(write_error)?;
    let mut sink = pin!(sink);
    let mut bytes = 0u64;
    let mut block = BytesMut::with_capacity(COPY_BLOCK);
    while out.read(&mut block, COPY_BLOCK).await.map_err(read_error)? {
        bytes += block.len() as u64;
        sink.feed(block.split().freeze())
            .await
            .map_err(write_error)?;
        block.reserve(COPY_BLOCK);
    }
    let rows = sink.as_mut().finish().await.map_err(write_error)?;
    if chunk.is_whole() {
        replica.batch_execute("COMMIT").await.map_err(write_error)?;
    }
    Ok((rows, bytes))
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
    use crate::source::catalog::ReplicaIdentity;

    fn table(name: &str, bytes: u64, pages: u64) -> SourceTable {
        SourceTable {
            name: TableName {
                schema: "s".into(),
                name: name.into(),
            },
            identity: ReplicaIdentity::PrimaryKey,
            columns: vec!["id".into()],
            estimated_bytes: bytes,
            pages,
            binary_copy: true,
        }
    }

    #[test]
    fn large_tables_split_into_page_ranges_largest_first() {
        let tables = [table("small", 100, 1), table("big", 10 * 8192, 10)];
        let chunks = plan_chunks(&tables, 3 * 8192, true);
        let ranges: Vec<(usize, u64, Option<u64>)> =
            chunks.iter().map(|c| (c.table, c.start, c.end)).collect();
        // 10 pages in 4 parts of 3 pages, the last open-ended.
        assert_eq!(
            ranges,
            [
                (1, 0, Some(3)),
                (1, 3, Some(6)),
                (1, 6, Some(9)),
                (1, 9, None),
                (0, 0, None)
            ]
        );
        assert_eq!(chunks[0].filter(), " WHERE ctid < '(3,0)'");
        assert_eq!(
            chunks[1].filter(),
            " WHERE ctid >= '(3,0)' AND ctid < '(6,0)'"
        );
        assert_eq!(chunks[3].filter(), " WHERE ctid >= '(9,0)'");
        assert_eq!(chunks[4].filter(), "");

        // A whole table is read by name and loaded frozen; a range needs a query.
        let small = TablePlan::new(&tables[0]);
        assert_eq!(
            small.copy_out(&chunks[4]),
            r#"COPY "s"."small" ("id") TO STDOUT (FORMAT binary)"#
        );
        assert_eq!(
            small.copy_in(&chunks[4]),
            r#"COPY "s"."small" ("id") FROM STDIN (FORMAT binary, FREEZE)"#
        );
        let big = TablePlan::new(&tables[1]);
        assert_eq!(
            big.copy_out(&chunks[1]),
            r#"COPY (SELECT "id" FROM ONLY "s"."big" WHERE ctid >= '(3,0)' AND ctid < '(6,0)') TO STDOUT (FORMAT binary)"#
        );
        assert_eq!(
            big.copy_in(&chunks[1]),
            r#"COPY "s"."big" ("id") FROM STDIN (FORMAT binary)"#
        );
    }

    #[test]
    fn no_split_without_tid_range_scans_or_chunk_size() {
        let tables = [table("big", 10 * 8192, 10)];
        assert_eq!(plan_chunks(&tables, 8192, false).len(), 1);
        assert_eq!(plan_chunks(&tables, 0, true).len(), 1);
        assert_eq!(plan_chunks(&[], 8192, true), []);
    }

    #[test]
    fn toc_filter_comments_out_existing_schemas_and_dangling_foreign_keys() {
        let toc = "; Archive created at 2024-01-01\n\
                   6; 2615 2200 SCHEMA - public pg_database_owner\n\
                   3545; 0 0 COMMENT - SCHEMA public pg_database_owner\n\
                   9; 2615 16620 SCHEMA - s2 postgres\n\
                   218; 1259 16627 TABLE public t postgres\n\
                   224; 2606 16700 FK CONSTRAINT public t t_code_fkey postgres\n\
                   225; 2606 16701 FK CONSTRAINT public t t_other_fkey postgres\n\
                   3354; 0 0 COMMENT public CONSTRAINT t_code_fkey ON t postgres\n";
        let skip = [
            "; 2615 2200 SCHEMA ".to_owned(),
            " COMMENT - SCHEMA public ".to_owned(),
            "; 2606 16700 FK CONSTRAINT ".to_owned(),
            format!(
                " COMMENT public CONSTRAINT {} ON t ",
                toc_name("t_code_fkey")
            ),
        ];
        let filtered = filter_toc(toc, &skip);
        assert_eq!(
            filtered,
            "; Archive created at 2024-01-01\n\
             ;6; 2615 2200 SCHEMA - public pg_database_owner\n\
             ;3545; 0 0 COMMENT - SCHEMA public pg_database_owner\n\
             9; 2615 16620 SCHEMA - s2 postgres\n\
             218; 1259 16627 TABLE public t postgres\n\
             ;224; 2606 16700 FK CONSTRAINT public t t_code_fkey postgres\n\
             225; 2606 16701 FK CONSTRAINT public t t_other_fkey postgres\n\
             ;3354; 0 0 COMMENT public CONSTRAINT t_code_fkey ON t postgres\n"
        );
        assert_eq!(toc_name("Mixed Case"), "\"Mixed Case\"");
    }

    #[test]
    fn patterns_quote_every_part() {
        assert_eq!(pattern(&["My*Schema", "t\"x"]), "\"My*Schema\".\"t\"\"x\"");
    }

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
