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

mod plugins;
mod tables;

/// Oldest supported source: the queries below and the replication commands assume it.
const MIN_SERVER_VERSION: u32 = 130_000;

/// Name prefix of preflight's probe slot.
const PROBE_SLOT_PREFIX: &str = "tributary_preflight_";

/// Prefixes of the slots tributary's short-lived probes create (preflight, the
/// `numeric-data-types-as-string` probe, `tail`). All of them are temporary: a persistent
/// one is a leftover, and it retains WAL until dropped.
const PROBE_SLOT_PREFIXES: [&str; 3] = [PROBE_SLOT_PREFIX, "tributary_probe_", "tributary_tail_"];

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
const PRIMARY: &str = "writable primary";
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

const ORDER: [&str; 24] = [
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

/// What the servers said, as far as gathering got.
enum Gathered {
    Unreachable(Error),
    TlsFailed(Error),
    LoginFailed {
        encryption: Encryption,
        error: Error,
    },
    /// Logged in, but reading the settings or the catalog failed.
    ReadFailed {
        encryption: Encryption,
        error: Error,
    },
    /// Older than [`MIN_SERVER_VERSION`]: nothing more was read.
    Unsupported {
        encryption: Encryption,
        version: Version,
    },
    Ready {
        encryption: Encryption,
        server: Box<Server>,
        probe: Probe,
    },
}

#[derive(Debug, Clone)]
struct Version {
    /// `server_version_num`: 150004 for 15.4.
    num: u32,
    /// `server_version` as the server prints it.
    text: String,
}

/// Everything read from a supported server.
#[derive(Debug)]
struct Server {
    version: Version,
    in_recovery: bool,
    wal_level: String,
    max_slots: usize,
    slots: Vec<Slot>,
    max_senders: usize,
    active_senders: usize,
    role: Role,
    database: String,
    can_create: bool,
    /// tributary's schema change capture objects.
    capture: CaptureStatus,
    /// Whether this role may read their signing key.
    capture_key_readable: bool,
    /// `max_slot_wal_keep_size` in MB; -1 is unlimited.
    slot_wal_keep_mb: i64,
    /// `max_wal_size` in MB.
    max_wal_size_mb: i64,
    /// `wal_sender_timeout` as `SHOW` prints it.
    wal_sender_timeout: String,
    /// Large objects in the database: logical decoding does not carry them.
    large_objects: i64,
    /// In the order requested.
    schemas: Vec<Schema>,
    /// Tables (also partitioned and unlogged ones: `pg_dump` locks them, which needs
    /// SELECT) and sequences of the selected schemas.
    relations: Vec<Relation>,
    /// The tables whose changes are streamed, as `catalog::list_tables` selects them.
    tables: Vec<Table>,
    /// `schema.table.column (type)` of every numeric, real and double precision column.
    numeric_columns: Vec<String>,
    foreign_keys: Vec<ForeignKey>,
    /// Pending prepared transactions: a new slot waits for them.
    prepared: Vec<PreparedXact>,
    /// `output_plugin_libraries` as this role sees it.
    plugins: PluginList,
}

#[derive(Debug)]
struct Slot {
    name: String,
    active: bool,
    temporary: bool,
    /// In the database checked (logical slots belong to one database).
    here: bool,
}

#[derive(Debug)]
struct Role {
    name: String,
    superuser: bool,
    replication: bool,
    /// The server has Amazon RDS's `rds_replication` role…
    on_rds: bool,
    /// …and this role is a member: RDS's stand-in for the REPLICATION attribute.
    rds_replication: bool,
}

impl Role {
    fn may_replicate(&self) -> bool {
        self.superuser || self.replication || self.rds_replication
    }
}

#[derive(Debug)]
struct Schema {
    name: String,
    exists: bool,
    usage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelationKind {
    Table,
    Sequence,
}

#[derive(Debug)]
struct Relation {
    name: TableName,
    kind: RelationKind,
    owner: String,
    can_select: bool,
    /// An unlogged table: never in the WAL, so never streamed.
    unlogged: bool,
}

#[derive(Debug)]
struct Table {
    name: TableName,
    identity: ReplicaIdentity,
    /// A unique index that `REPLICA IDENTITY USING INDEX` would accept: valid, not
    /// partial, not deferrable, no expressions, key columns NOT NULL.
    usable_index: Option<String>,
}

/// The wal2json probe: a temporary slot created and dropped over a replication connection.
#[derive(Debug)]
enum Probe {
    /// Not attempted, because a check it depends on failed: [`probe_blocker`]'s reason.
    Blocked(&'static str),
    TimedOut,
    Failed(Error),
    Ran {
        /// From `IDENTIFY_SYSTEM`, for the duplicate-source check.
        system_id: String,
        slot: SlotName,
        dropped: Result<()>,
        numeric_as_string: Result<bool>,
    },
}

async fn gather(info: &ConnInfo, schemas: &[String]) -> Gathered {
    let encryption = match wire::probe_transport(info).await {
        Ok(encryption) => encryption,
        Err(TransportError::Unreachable(error)) => return Gathered::Unreachable(error),
        Err(TransportError::Tls(error)) => return Gathered::TlsFailed(error),
    };
    let mut conn = match Connection::connect(info, SESSION_PARAMS).await {
        Ok(conn) => conn,
        Err(error) => return Gathered::LoginFailed { encryption, error },
    };
    let read = read_server(&mut conn, schemas).await;
    conn.terminate().await;
    let mut server = match read {
        Ok(Ok(server)) => server,
        Ok(Err(version)) => {
            return Gathered::Unsupported {
                encryption,
                version,
            }
        }
        Err(error) => return Gathered::ReadFailed { encryption, error },
    };
    let probe = match probe_blocker(&server) {
        Some(reason) => Probe::Blocked(reason),
        None => run_probe(info).await,
    };
    if matches!(probe, Probe::TimedOut) {
        // What held the probe is what is pending now, maybe prepared since the first look.
        if let Ok(mut conn) = Connection::connect(info, SESSION_PARAMS).await {
            if let Ok(pending) = read_prepared(&mut conn).await {
                server.prepared = pending;
            }
            conn.terminate().await;
        }
    }
    Gathered::Ready {
        encryption,
        server,
        probe,
    }
}

/// Creates and drops a temporary wal2json slot, then asks whether wal2json knows
/// `numeric-data-types-as-string`, within [`PROBE_TIMEOUT`]. On timeout the connection is
/// dropped, and the server drops the slot with the session.
async fn run_probe(info: &ConnInfo) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_slot(info)).await {
        Ok(Ok(probe)) => probe,
        Ok(Err(error)) => Probe::Failed(error),
        Err(_) => Probe::TimedOut,
    }
}

async fn probe_slot(info: &ConnInfo) -> Result<Probe> {
    let mut client = ReplicationClient::connect(info).await?;
    let system = client.identify_system().await?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let slot = SlotName::new(format!("{PROBE_SLOT_PREFIX}{}_{nanos}", std::process::id()))
        .expect("a prefix, a process id and a number make a valid slot name");
    client
        .create_slot(&slot, true, SnapshotAction::NoExport)
        .await?;
    let dropped = client.drop_slot(&slot, false).await;
    client.close().await;
    let numeric_as_string = replication::probe_numeric_as_string(info).await;
    Ok(Probe::Ran {
        system_id: system.system_id,
        slot,
        dropped,
        numeric_as_string,
    })
}

/// One row of a simple query's result, as text.
struct Row(Vec<Option<String>>);

impl Row {
    fn text(&self, i: usize) -> Result<&str, String> {
        self.0
            .get(i)
            .and_then(Option::as_deref)
            .ok_or_else(|| format!("column {} is missing or NULL", i + 1))
    }

    fn optional(&self, i: usize) -> Option<String> {
        self.0.get(i).cloned().flatten()
    }

    fn flag(&self, i: usize) -> Result<bool, String> {
        match self.text(i)? {
            "t" => Ok(true),
            "f" => Ok(false),
            other => Err(format!("{other:?} is not a boolean")),
        }
    }

    fn number<T: FromStr>(&self, i: usize) -> Result<T, String> {
        let text = self.text(i)?;
        text.parse()
            .map_err(|_| format!("{text:?} is not a number in range"))
    }
}

/// Runs `sql` and parses each row; a row that does not parse is a protocol error naming
/// `what`.
async fn rows<T>(
    conn: &mut Connection,
    what: &str,
    sql: &str,
    parse: impl Fn(&Row) -> Result<T, String>,
) -> Result<Vec<T>> {
    let rows = conn.simple_query(sql).await?.rows;
    rows.into_iter()
        .map(|row| parse(&Row(row)))
        .collect::<Result<_, _>>()
        .map_err(|reason| conn.protocol(format!("reading {what}: {reason}")))
}

/// Like [`rows`], for a query that returns exactly one row.
async fn one_row<T>(
    conn: &mut Connection,
    what: &str,
    sql: &str,
    parse: impl Fn(&Row) -> Result<T, String>,
) -> Result<T> {
    let mut rows = rows(conn, what, sql, parse).await?;
    match (rows.pop(), rows.is_empty()) {
        (Some(row), true) => Ok(row),
        _ => Err(conn.protocol(format!("reading {what}: expected exactly one row"))),
    }
}

async fn read_prepared(conn: &mut Connection) -> Result<Vec<PreparedXact>> {
    rows(
        conn,
        "the prepared transactions",
        prepared::PENDING_SQL,
        |row| {
            Ok(PreparedXact {
                gid: row.text(0)?.to_owned(),
                owner: row.text(1)?.to_owned(),
                database: row.text(2)?.to_owned(),
                prepared: row.text(3)?.to_owned(),
            })
        },
    )
    .await
}

fn text_array(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| quote_literal(s)).collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

/// Reads everything the checks judge, or only the version (`Err`) of a server too old.
async fn read_server(
    conn: &mut Connection,
    schemas: &[String],
) -> Result<Result<Box<Server>, Version>> {
    let version = one_row(
        conn,
        "the server version",
        "SELECT pg_catalog.current_setting('server_version_num'),
                pg_catalog.current_setting('server_version')",
        |row| {
            Ok(Version {
                num: row.number(0)?,
                text: row.text(1)?.to_owned(),
            })
        },
    )
    .await?;
    if version.num < MIN_SERVER_VERSION {
        return Ok(Err(version));
    }

    struct Settings {
        in_recovery: bool,
        wal_level: String,
        max_slots: usize,
        max_senders: usize,
        active_senders: usize,
        role: Role,
        database: String,
        can_create: bool,
        slot_wal_keep_mb: i64,
        max_wal_size_mb: i64,
        wal_sender_timeout: String,
        large_objects: i64,
    }
    // pg_settings gives both sizes in MB whatever unit they were set in. Roles without
    // pg_read_all_stats still see one pg_stat_replication row per WAL sender.
    let settings = one_row(
        conn,
        "the server settings",
        "SELECT pg_catalog.pg_is_in_recovery(),
                pg_catalog.current_setting('wal_level'),
                pg_catalog.current_setting('max_replication_slots'),
                pg_catalog.current_setting('max_wal_senders'),
                (SELECT count(*) FROM pg_catalog.pg_stat_replication),
                r.rolname, r.rolsuper, r.rolreplication,
                EXISTS (SELECT FROM pg_catalog.pg_roles g WHERE g.rolname = 'rds_replication'),
                EXISTS (SELECT FROM pg_catalog.pg_roles g WHERE g.rolname = 'rds_replication'
                          AND pg_catalog.pg_has_role(r.oid, g.oid, 'MEMBER')),
                pg_catalog.current_database(),
                pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'),
                (SELECT setting FROM pg_catalog.pg_settings WHERE name = 'max_slot_wal_keep_size'),
                (SELECT setting FROM pg_catalog.pg_settings WHERE name = 'max_wal_size'),
                pg_catalog.current_setting('wal_sender_timeout'),
                (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)
           FROM pg_catalog.pg_roles r
          WHERE r.rolname = current_user",
        |row| {
            Ok(Settings {
                in_recovery: row.flag(0)?,
                wal_level: row.text(1)?.to_owned(),
                max_slots: row.number(2)?,
                max_senders: row.number(3)?,
                active_senders: row.number(4)?,
                role: Role {
                    name: row.text(5)?.to_owned(),
                    superuser: row.flag(6)?,
                    replication: row.flag(7)?,
                    on_rds: row.flag(8)?,
                    rds_replication: row.flag(9)?,
                },
                database: row.text(10)?.to_owned(),
                can_create: row.flag(11)?,
                slot_wal_keep_mb: row.number(12)?,
                max_wal_size_mb: row.number(13)?,
                wal_sender_timeout: row.text(14)?.to_owned(),
                large_objects: row.number(15)?,
            })
        },
    )
    .await?;

    let (triggers, has_version, key_readable) = one_row(
        conn,
        "the schema change capture objects",
        capture::INSPECT_SQL,
        |row| Ok((row.number::<i32>(0)?, row.flag(1)?, row.flag(3)?)),
    )
    .await?;
    let capture_version = if has_version {
        Some(
            one_row(conn, "the capture version", capture::VERSION_SQL, |row| {
                row.number(0)
            })
            .await?,
        )
    } else {
        None
    };

    let slots = rows(
        conn,
        "the replication slots",
        "SELECT slot_name, active, temporary, database IS NOT DISTINCT FROM current_database()
           FROM pg_catalog.pg_replication_slots
          ORDER BY slot_name",
        |row| {
            Ok(Slot {
                name: row.text(0)?.to_owned(),
                active: row.flag(1)?,
                temporary: row.flag(2)?,
                here: row.flag(3)?,
            })
        },
    )
    .await?;

    let selected = text_array(schemas);
    let schemas = rows(
        conn,
        "the schemas",
        &format!(
            "SELECT s.name, n.oid IS NOT NULL,
                    COALESCE(pg_catalog.has_schema_privilege(n.oid, 'USAGE'), false)
               FROM unnest({selected}) WITH ORDINALITY AS s (name, position)
               LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s.name
              ORDER BY s.position"
        ),
        |row| {
            Ok(Schema {
                name: row.text(0)?.to_owned(),
                exists: row.flag(1)?,
                usage: row.flag(2)?,
            })
        },
    )
    .await?;

    let relations = rows(
        conn,
        "the tables and sequences",
        &format!(
            "SELECT n.nspname, c.relname, c.relkind, pg_catalog.pg_get_userbyid(c.relowner),
                    pg_catalog.has_table_privilege(c.oid, 'SELECT'),
                    c.relkind = 'r' AND c.relpersistence = 'u'
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = ANY ({selected}) AND c.relkind IN ('r', 'p', 'S')
              ORDER BY 1, 2"
        ),
        |row| {
            Ok(Relation {
                name: table_name(row)?,
                kind: match row.text(2)? {
                    "S" => RelationKind::Sequence,
                    _ => RelationKind::Table,
                },
                owner: row.text(3)?.to_owned(),
                can_select: row.flag(4)?,
                unlogged: row.flag(5)?,
            })
        },
    )
    .await?;

    // The usable index follows the rules of ALTER TABLE … REPLICA IDENTITY USING INDEX;
    // only key columns must be NOT NULL (INCLUDE columns may be nullable).
    let tables = rows(
        conn,
        "the replica identities",
        &format!(
            "SELECT n.nspname, c.relname, {},
                    (SELECT ic.relname FROM pg_catalog.pg_index i
                       JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                      WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                        AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL
                        AND NOT EXISTS (
                            SELECT FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) AS k
                              JOIN pg_catalog.pg_attribute a
                                ON a.attrelid = c.oid AND a.attnum = i.indkey[k]
                             WHERE NOT a.attnotnull)
                      ORDER BY i.indnkeyatts, ic.relname
                      LIMIT 1)
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname = ANY ({selected})
              ORDER BY 1, 2",
            identity::FACTS_SQL
        ),
        |row| {
            let identity =
                identity::classify(row.text(2)?, row.flag(3)?, row.flag(4)?, row.optional(5));
            Ok(Table {
                name: table_name(row)?,
                identity,
                usable_index: row.optional(6),
            })
        },
    )
    .await?;

    // Domains and arrays over these types arrive as strings already: not affected.
    let numeric_columns = rows(
        conn,
        "the numeric columns",
        &format!(
            "SELECT format('%s.%s.%s (%s)', n.nspname, c.relname, a.attname,
                           pg_catalog.format_type(a.atttypid, a.atttypmod))
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname = ANY ({selected})
                AND a.attnum > 0 AND NOT a.attisdropped
                AND a.atttypid IN ('pg_catalog.numeric'::pg_catalog.regtype,
                                   'pg_catalog.float4'::pg_catalog.regtype,
                                   'pg_catalog.float8'::pg_catalog.regtype)
              ORDER BY n.nspname, c.relname, a.attnum"
        ),
        |row| Ok(row.text(0)?.to_owned()),
    )
    .await?;

    let foreign_keys = rows(
        conn,
        "the foreign keys",
        &catalog::foreign_keys_query(&selected),
        |row| {
            let name = |i: usize| -> Result<TableName, String> {
                Ok(TableName {
                    schema: row.text(i)?.to_owned(),
                    name: row.text(i + 1)?.to_owned(),
                })
            };
            Ok(ForeignKey {
                oid: row
                    .text(0)?
                    .parse()
                    .map_err(|e| format!("constraint oid: {e}"))?,
                name: row.text(1)?.to_owned(),
                table: name(2)?,
                references: name(4)?,
            })
        },
    )
    .await?;

    let prepared = read_prepared(conn).await?;
    let plugins = plugins::read(conn).await?;

    Ok(Ok(Box::new(Server {
        version,
        in_recovery: settings.in_recovery,
        wal_level: settings.wal_level,
        max_slots: settings.max_slots,
        slots,
        max_senders: settings.max_senders,
        active_senders: settings.active_senders,
        role: settings.role,
        database: settings.database,
        can_create: settings.can_create,
        capture: capture::status(triggers, capture_version),
        capture_key_readable: key_readable,
        slot_wal_keep_mb: settings.slot_wal_keep_mb,
        max_wal_size_mb: settings.max_wal_size_mb,
        wal_sender_timeout: settings.wal_sender_timeout,
        large_objects: settings.large_objects,
        schemas,
        relations,
        tables,
        numeric_columns,
        foreign_keys,
        prepared,
        plugins,
    })))
}

fn table_name(row: &Row) -> Result<TableName, String> {
    Ok(TableName {
        schema: row.text(0)?.to_owned(),
        name: row.text(1)?.to_owned(),
    })
}

/// `schema.table`, for reading.
fn display(table: &TableName) -> String {
    format!("{}.{}", table.schema, table.name)
}

fn schema_check(schema: &str) -> String {
    format!("{SCHEMAS} {schema}")
}

fn free_slots(server: &Server) -> usize {
    server.max_slots.saturating_sub(server.slots.len())
}

fn free_senders(server: &Server) -> usize {
    server.max_senders.saturating_sub(server.active_senders)
}

/// Why the probe slot cannot be created, when a check it depends on failed.
fn probe_blocker(server: &Server) -> Option<&'static str> {
    if server.in_recovery {
        Some("the server is a standby")
    } else if server.wal_level != "logical" {
        Some("needs wal_level = logical")
    } else if !server.role.may_replicate() {
        Some("needs the REPLICATION privilege")
    } else if free_slots(server) == 0 {
        Some("no replication slot is free")
    } else if free_senders(server) == 0 {
        Some("no WAL sender is free")
    } else {
        None
    }
}

fn judge(info: &ConnInfo, schemas: &[String], gathered: &Gathered, known: &KnownSources) -> Report {
    let mut report = Report::default();
    let checks = &mut report.checks;
    let skip_after = |checks: &mut Vec<Check>, last: &str, reason: &str| {
        let later = ORDER.iter().skip_while(|name| **name != last).skip(1);
        for &name in later {
            if name == SCHEMAS {
                checks.extend(schemas.iter().map(|s| Check::skip(schema_check(s), reason)));
            } else {
                checks.push(Check::skip(name, reason));
            }
        }
    };
    let connected = |checks: &mut Vec<Check>, encryption: Encryption| {
        checks.push(Check::pass(TCP, info.target()));
        checks.push(judge_tls(info, encryption));
    };
    let (server, probe) = match gathered {
        Gathered::Unreachable(error) => {
            checks.push(Check::fail(
                TCP,
                error.to_string(),
                "check the host and port in the URL, that the server listens there \
                 (listen_addresses, port) and that no firewall drops the connection",
            ));
            skip_after(checks, TCP, "the server is not reachable");
            return report;
        }
        Gathered::TlsFailed(error) => {
            checks.push(Check::pass(TCP, info.target()));
            checks.push(Check::fail(
                TLS,
                error.to_string(),
                "make the server's TLS match sslmode: ssl = on with a certificate that \
                 sslrootcert trusts (and that names the host, for verify-full), or choose \
                 another sslmode in the URL",
            ));
            skip_after(checks, TLS, "no connection");
            return report;
        }
        Gathered::LoginFailed { encryption, error } => {
            connected(checks, *encryption);
            checks.push(judge_login_failure(error));
            skip_after(checks, AUTH, "not logged in");
            return report;
        }
        Gathered::ReadFailed { encryption, error } => {
            connected(checks, *encryption);
            checks.push(login_passed(info));
            checks.push(Check::fail(
                VERSION,
                format!("reading the server's settings failed: {error}"),
                "see the error; the server's log may say more",
            ));
            skip_after(checks, VERSION, "the server's settings could not be read");
            return report;
        }
        Gathered::Unsupported {
            encryption,
            version,
        } => {
            connected(checks, *encryption);
            checks.push(login_passed(info));
            checks.push(Check::fail(
                VERSION,
                format!("PostgreSQL {}", version.text),
                "tributary needs PostgreSQL 13 or newer: upgrade the source first",
            ));
            skip_after(checks, VERSION, "the server is older than PostgreSQL 13");
            return report;
        }
        Gathered::Ready {
            encryption,
            server,
            probe,
        } => {
            connected(checks, *encryption);
            (server, probe)
        }
    };
    checks.push(login_passed(info));
    checks.push(Check::pass(
        VERSION,
        format!("PostgreSQL {}", server.version.text),
    ));
    report.server_major = Some(server.version.num / 10_000);
    checks.push(judge_primary(server));
    checks.push(judge_wal_level(server));
    checks.push(judge_slots(server));
    checks.push(judge_senders(server));
    checks.push(judge_replication(server));
    checks.push(judge_prepared(&server.prepared));
    checks.extend(judge_probe(server, probe));
    checks.push(judge_leftovers(server));
    checks.extend(server.schemas.iter().map(|s| judge_schema(server, s)));
    checks.push(judge_create(server));
    checks.push(judge_event_triggers(server));
    checks.extend(judge_identities(server));
    checks.push(judge_unlogged(server));
    checks.push(judge_foreign_keys(server, schemas));
    checks.push(judge_large_objects(server));
    checks.push(judge_duplicate(info, server, probe, known));
    checks.push(judge_installations(server, known));
    checks.push(judge_slot_wal_keep(server));
    checks.push(judge_sender_timeout(server));
    report.grant_script = grant_script(server, plugins::need(server, probe));
    report.tables = server
        .tables
        .iter()
        .map(|t| TableIdentity {
            name: t.name.clone(),
            identity: t.identity.clone(),
        })
        .collect();
    report.foreign_keys = server.foreign_keys.clone();
    if matches!(
        probe,
        Probe::Ran {
            numeric_as_string: Ok(false),
            ..
        }
    ) {
        report.nan_as_null_columns = server.numeric_columns.clone();
    }
    report
}

fn login_passed(info: &ConnInfo) -> Check {
    Check::pass(
        AUTH,
        format!("as {} on database {}", info.user, info.dbname),
    )
}

fn judge_tls(info: &ConnInfo, encryption: Encryption) -> Check {
    let mode = info.sslmode.as_str();
    match encryption {
        Encryption::UnixSocket => Check::pass(TLS, "not used over a unix socket"),
        Encryption::Plain if info.sslmode == SslMode::Disable => {
            Check::pass(TLS, "off (sslmode=disable)")
        }
        Encryption::Plain => Check::warn(
            TLS,
            format!(
                "the server does not offer TLS: the connection is unencrypted (sslmode={mode})"
            ),
            "enable ssl on the server, or use sslmode=require or verify-full so that an \
             unencrypted connection is refused",
        ),
        Encryption::Tls(version) => {
            let verified = match (info.sslmode, &info.sslrootcert) {
                (SslMode::VerifyFull, _) => "certificate and host name verified",
                (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => {
                    "certificate chain verified"
                }
                _ => "certificate not verified",
            };
            Check::pass(TLS, format!("{version}, {verified} (sslmode={mode})"))
        }
    }
}

fn judge_login_failure(error: &Error) -> Check {
    let Some(server) = error.server_error() else {
        let fix = match error {
            Error::Auth { .. } => {
                "put the password in the URL (percent-encoded) or in PGPASSWORD, and let \
                 pg_hba.conf use scram-sha-256, md5 or password for this role"
            }
            _ => "see the error; the server's log may say more",
        };
        return Check::fail(AUTH, error.to_string(), fix);
    };
    let fix = match server.code.as_str() {
        "28P01" => {
            "check the user name and password in the URL (percent-encode special characters)"
        }
        "28000" if server.message.contains("pg_hba.conf") => {
            "add a pg_hba.conf line on the source for this user, database and client address \
             (replication connections for logical decoding match the database name, not the \
             `replication` keyword), then reload the server"
        }
        "28000" => "check the user name in the URL",
        "3D000" => "check the database name in the URL",
        "53300" => {
            "the server has no free connection: close idle sessions or raise max_connections"
        }
        "57P03" => {
            "the server is starting, stopping or in recovery: try again once it accepts connections"
        }
        _ => "see the server's message; its log may say more",
    };
    Check::fail(AUTH, server.message.clone(), fix)
}

fn judge_primary(server: &Server) -> Check {
    if server.in_recovery {
        Check::fail(
            PRIMARY,
            "no: this server is a standby (pg_is_in_recovery() is true)",
            "point the URL at the primary: tributary's slot and snapshot live there",
        )
    } else {
        Check::pass(PRIMARY, "yes (pg_is_in_recovery() is false)")
    }
}

fn judge_wal_level(server: &Server) -> Check {
    if server.wal_level == "logical" {
        Check::pass(WAL_LEVEL, "logical")
    } else {
        Check::fail(
            WAL_LEVEL,
            server.wal_level.clone(),
            "set wal_level = logical and restart the server (the grant script below does \
             the ALTER SYSTEM)",
        )
    }
}

fn judge_slots(server: &Server) -> Check {
    let used = server.slots.len();
    let value = format!("{used}/{} used", server.max_slots);
    if free_slots(server) > 0 {
        return Check::pass(SLOTS, value);
    }
    let inactive: Vec<String> = server
        .slots
        .iter()
        .filter(|s| !s.active)
        .map(|s| {
            format!(
                "SELECT pg_drop_replication_slot({});",
                quote_literal(&s.name)
            )
        })
        .collect();
    let raise = "raise max_replication_slots and restart the server (the grant script below \
                 does the ALTER SYSTEM)";
    let fix = if inactive.is_empty() {
        raise.to_owned()
    } else {
        format!(
            "{raise}, or drop an inactive slot that nothing needs any more: {}",
            inactive.join(" ")
        )
    };
    Check::fail(SLOTS, format!("{value}, none free"), fix)
}

fn judge_senders(server: &Server) -> Check {
    let value = format!("{}/{} in use", server.active_senders, server.max_senders);
    match free_senders(server) {
        0 => Check::fail(
            SENDERS,
            format!("{value}, none free"),
            "raise max_wal_senders and restart the server (the grant script below does the \
             ALTER SYSTEM), or stop a replication client",
        ),
        free if free < SENDER_HEADROOM => Check::warn(
            SENDERS,
            format!("{value}, only {free} free"),
            "raise max_wal_senders (restart needed): after a dropped connection the server \
             keeps the old WAL sender until it notices, so reconnecting needs a second one",
        ),
        _ => Check::pass(SENDERS, value),
    }
}

fn judge_replication(server: &Server) -> Check {
    let role = &server.role;
    if role.superuser {
        Check::pass(REPLICATION, "superuser")
    } else if role.replication {
        Check::pass(REPLICATION, "REPLICATION")
    } else if role.rds_replication {
        Check::pass(REPLICATION, "member of rds_replication")
    } else {
        let who = quote_ident(&role.name);
        let fix = if role.on_rds {
            format!("GRANT rds_replication TO {who}; (in the grant script below)")
        } else {
            format!(
                "ALTER ROLE {who} REPLICATION; (in the grant script below). Managed services: \
                 on Amazon RDS and Aurora GRANT rds_replication TO {who}; on Cloud SQL and \
                 Azure run ALTER ROLE … REPLICATION as the administrator role"
            )
        };
        Check::fail(
            REPLICATION,
            format!("role {} has neither REPLICATION nor SUPERUSER", role.name),
            fix,
        )
    }
}

/// Pending prepared transactions hold up creating the connector's slot until they end:
/// a warning, since one that commits in a moment does no harm.
fn judge_prepared(pending: &[PreparedXact]) -> Check {
    if pending.is_empty() {
        return Check::pass(PREPARED, "none pending");
    }
    Check::warn(
        PREPARED,
        pending
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        format!(
            "creating the connector's slot waits until they end: {}",
            prepared::describe(pending)
        ),
    )
}

/// The wal2json line and the `numeric-data-types-as-string` line.
fn judge_probe(server: &Server, probe: &Probe) -> [Check; 2] {
    if let Some(refused) = plugins::judge(server, probe) {
        return [refused, Check::skip(NUMERIC, "the source refuses wal2json")];
    }
    let major = server.version.num / 10_000;
    let (slot, dropped, numeric_as_string) = match probe {
        Probe::Ran {
            slot,
            dropped,
            numeric_as_string,
            ..
        } => (slot, dropped, numeric_as_string),
        Probe::Blocked(reason) => {
            return [
                Check::skip(WAL2JSON, *reason),
                Check::skip(NUMERIC, *reason),
            ]
        }
        Probe::TimedOut => {
            return [
                Check::fail(
                    WAL2JSON,
                    format!(
                        "unverified: creating the probe slot took longer than {} s",
                        PROBE_TIMEOUT.as_secs()
                    ),
                    format!(
                        "{}; creating the connector would wait too",
                        prepared::slot_wait_reason(&server.prepared)
                    ),
                ),
                Check::skip(NUMERIC, "the wal2json probe did not finish"),
            ]
        }
        Probe::Failed(error) => {
            let check = if error.sqlstate() == Some("58P01") {
                Check::fail(
                    WAL2JSON,
                    format!(
                        "not installed: {}",
                        error.server_error().map_or("", |e| e.message.as_str())
                    ),
                    format!(
                        "install wal2json for PostgreSQL {major} on the source (Debian and \
                         Ubuntu: postgresql-{major}-wal2json; RHEL: wal2json_{major}); \
                         logical decoding loads it on demand, no restart needed"
                    ),
                )
            } else {
                Check::fail(
                    WAL2JSON,
                    format!("the probe slot could not be created: {error}"),
                    "see the error; the server's log may say more",
                )
            };
            return [check, Check::skip(NUMERIC, "the wal2json probe failed")];
        }
    };
    let loaded = match dropped {
        Ok(()) => Check::pass(
            WAL2JSON,
            format!("loads (temporary probe slot {slot} created and dropped)"),
        ),
        Err(error) => Check::warn(
            WAL2JSON,
            format!("loads, but dropping the probe slot {slot} failed: {error}"),
            "nothing to clean up: the slot was temporary and went away with its session",
        ),
    };
    let numeric = match numeric_as_string {
        Ok(true) => Check::pass(NUMERIC, "supported (wal2json 2.6 or newer)"),
        Ok(false) if server.numeric_columns.is_empty() => Check::pass(
            NUMERIC,
            "not supported (wal2json before 2.6), and no numeric or float column is affected",
        ),
        Ok(false) => Check::warn(
            NUMERIC,
            format!(
                "not supported (wal2json before 2.6): NaN and ±Infinity arrive as NULL in {} \
                 column{}: {}",
                server.numeric_columns.len(),
                plural(server.numeric_columns.len()),
                server.numeric_columns.join(", ")
            ),
            "upgrade wal2json on the source to 2.6 or newer; until then `connector create` \
             refuses these tables unless the operator accepts NaN and Infinity arriving as \
             NULL with --nan-as-null accept",
        ),
        Err(error) => Check::warn(
            NUMERIC,
            format!("could not be checked: {error}"),
            "NaN and ±Infinity in numeric and float columns may arrive as NULL",
        ),
    };
    [loaded, numeric]
}

/// Large objects live outside tables, and logical decoding carries none of them: an `oid`
/// column that refers to one refers to nothing on the replica and its branches.
fn judge_large_objects(server: &Server) -> Check {
    match server.large_objects {
        0 => Check::pass(LARGE_OBJECTS, "none"),
        n => Check::warn(
            LARGE_OBJECTS,
            format!(
                "{n} large object{} in database {}, not replicated: the replica and its \
                 branches have none, and a column holding a large object's OID refers to \
                 nothing there",
                plural(n as usize),
                server.database
            ),
            "store such content in bytea columns to have it replicated, or accept that \
             branches lack it (lo_get and lo_open fail there)",
        ),
    }
}

fn judge_leftovers(server: &Server) -> Check {
    let leftovers: Vec<&Slot> = server
        .slots
        .iter()
        .filter(|s| !s.temporary && PROBE_SLOT_PREFIXES.iter().any(|p| s.name.starts_with(p)))
        .collect();
    if leftovers.is_empty() {
        return Check::pass(LEFTOVERS, "none");
    }
    let names: Vec<&str> = leftovers.iter().map(|s| s.name.as_str()).collect();
    let drops: Vec<String> = leftovers
        .iter()
        .map(|s| {
            format!(
                "SELECT pg_drop_replication_slot({});",
                quote_literal(&s.name)
            )
        })
        .collect();
    Check::warn(
        LEFTOVERS,
        format!("{} (persistent: retaining WAL)", names.join(", ")),
        format!("drop them: {}", drops.join(" ")),
    )
}

fn judge_schema(server: &Server, schema: &Schema) -> Check {
    let name = schema_check(&schema.name);
    let quoted = quote_ident(&schema.name);
    if !schema.exists {
        return Check::fail(
            name,
            "does not exist",
            format!("create schema {quoted} or correct --schemas"),
        );
    }
    let in_schema = || {
        server
            .relations
            .iter()
            .filter(|r| r.name.schema == schema.name)
    };
    let count = |kind| in_schema().filter(|r| r.kind == kind).count();
    let (tables, sequences) = (count(RelationKind::Table), count(RelationKind::Sequence));
    let unreadable: Vec<&Relation> = in_schema().filter(|r| !r.can_select).collect();
    if schema.usage && unreadable.is_empty() {
        return Check::pass(
            name,
            format!(
                "USAGE, and SELECT on its {tables} table{} and {sequences} sequence{}",
                plural(tables),
                plural(sequences)
            ),
        );
    }
    let role = quote_ident(&server.role.name);
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    if !schema.usage {
        missing.push("USAGE".to_owned());
        fixes.push(format!("GRANT USAGE ON SCHEMA {quoted} TO {role};"));
    }
    for kind in [RelationKind::Table, RelationKind::Sequence] {
        let names: Vec<String> = unreadable
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| display(&r.name))
            .collect();
        if names.is_empty() {
            continue;
        }
        let (noun, all) = match kind {
            RelationKind::Table => ("table", "TABLES"),
            RelationKind::Sequence => ("sequence", "SEQUENCES"),
        };
        missing.push(format!(
            "SELECT on {noun}{} {}",
            plural(names.len()),
            names.join(", ")
        ));
        fixes.push(format!(
            "GRANT SELECT ON ALL {all} IN SCHEMA {quoted} TO {role};"
        ));
    }
    Check::fail(
        name,
        format!("missing {}", missing.join("; ")),
        format!("{} (all in the grant script below)", fixes.join(" ")),
    )
}

fn judge_create(server: &Server) -> Check {
    if server.can_create {
        Check::pass(CREATE, format!("granted on {}", server.database))
    } else {
        Check::fail(
            CREATE,
            format!("missing on database {}", server.database),
            format!(
                "GRANT CREATE ON DATABASE {} TO {}; (in the grant script below): tributary \
                 needs it to keep its own objects on the source, in a schema of its own",
                quote_ident(&server.database),
                quote_ident(&server.role.name)
            ),
        )
    }
}

/// Schema change capture: its objects installed at this version, installable by this
/// role, or neither (then only drift is detected).
fn judge_event_triggers(server: &Server) -> Check {
    let source_sql = "run the SQL printed by `tributary connector source-sql` once as a \
                      superuser on the source";
    match server.capture {
        CaptureStatus::Installed if server.role.superuser || server.capture_key_readable => {
            Check::pass(
                EVENT_TRIGGERS,
                format!("schema change capture installed (version {CAPTURE_VERSION})"),
            )
        }
        CaptureStatus::Installed => Check::warn(
            EVENT_TRIGGERS,
            "schema change capture installed, but this role may not read its signing key",
            format!(
                "{} (as a superuser on the source); until then DDL is not captured",
                capture::grant_key_sql(&server.role.name)
            ),
        ),
        _ if server.role.superuser => Check::pass(
            EVENT_TRIGGERS,
            "schema change capture is installed by tributary at start (superuser)",
        ),
        CaptureStatus::Outdated { found } => Check::warn(
            EVENT_TRIGGERS,
            format!(
                "schema change capture is at version {}, tributary needs {CAPTURE_VERSION}",
                found.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
            ),
            format!("{source_sql} to upgrade it; until then DDL is not captured"),
        ),
        CaptureStatus::Missing => Check::warn(
            EVENT_TRIGGERS,
            "schema change capture not installed, and the role cannot (not a superuser)",
            format!(
                "{source_sql}; without it DDL is not replayed: added, dropped and retyped \
                 columns are reconciled when a change no longer fits, anything else stops \
                 the connector"
            ),
        ),
    }
}

/// One line when every table has an identity, else one failing line per table without.
fn judge_identities(server: &Server) -> Vec<Check> {
    let tables = &server.tables;
    if tables.is_empty() {
        return vec![Check::warn(
            IDENTITY,
            "no tables in the selected schemas",
            "check --schemas: there is nothing to replicate yet",
        )];
    }
    let missing: Vec<Check> = tables
        .iter()
        .filter(|t| !t.identity.is_usable())
        .map(judge_missing_identity)
        .collect();
    if !missing.is_empty() {
        return missing;
    }
    let count = |f: fn(&ReplicaIdentity) -> bool| tables.iter().filter(|t| f(&t.identity)).count();
    let keys = count(|i| *i == ReplicaIdentity::PrimaryKey);
    let indexes = count(|i| matches!(i, ReplicaIdentity::Index(_)));
    let full = count(|i| *i == ReplicaIdentity::Full);
    vec![Check::pass(
        IDENTITY,
        format!(
            "{} table{}: {keys} primary key, {indexes} unique index, {full} FULL",
            tables.len(),
            plural(tables.len())
        ),
    )]
}

/// Foreign keys into tables outside the selected schemas cannot be restored on the
/// replica; `connector create` warns in the same way about those into excluded tables.
fn judge_foreign_keys(server: &Server, schemas: &[String]) -> Check {
    let dangling: Vec<&ForeignKey> = server
        .foreign_keys
        .iter()
        .filter(|k| k.dangles(schemas, &[]))
        .collect();
    if dangling.is_empty() {
        return Check::pass(
            FOREIGN_KEYS,
            format!(
                "{} foreign key{}, all within the selected schemas",
                server.foreign_keys.len(),
                plural(server.foreign_keys.len())
            ),
        );
    }
    Check::warn(
        FOREIGN_KEYS,
        format!(
            "{} reference{} tables outside the selected schemas: {}",
            dangling.len(),
            if dangling.len() == 1 { "s" } else { "" },
            describe_foreign_keys(&dangling)
        ),
        "the replica and its branches will not have these constraints; add the referenced \
         schemas to --schemas to keep them",
    )
}

/// `table.constraint → referenced table`, comma-separated.
pub fn describe_foreign_keys(keys: &[&ForeignKey]) -> String {
    keys.iter()
        .map(|k| format!("{}.{} → {}", k.table, k.name, k.references))
        .collect::<Vec<_>>()
        .join(", ")
}

fn judge_duplicate(info: &ConnInfo, server: &Server, probe: &Probe, known: &KnownSources) -> Check {
    let connectors = match known {
        KnownSources::Unavailable(reason) => return Check::skip(DUPLICATE, reason.as_str()),
        KnownSources::Known { connectors, .. } => connectors,
    };
    let system_id = match probe {
        Probe::Ran { system_id, .. } => Some(system_id.as_str()),
        _ => None,
    };
    let this = match system_id {
        Some(id) => format!("database {} of system {id}", server.database),
        None => format!("database {} at {}", server.database, info.target()),
    };
    let same = connectors
        .iter()
        .find(|k| is_same_source(k, system_id, &server.database, info));
    match same {
        Some(k) => Check::fail(
            DUPLICATE,
            format!("connector {} already replicates {this}", k.connector),
            format!(
                "one connector per source database: keep using {0}, or delete it first \
                 (tributary connector delete {0})",
                k.connector
            ),
        ),
        None => Check::pass(
            DUPLICATE,
            format!(
                "no connector replicates {this} ({} connector{} on the branch store)",
                connectors.len(),
                plural(connectors.len())
            ),
        ),
    }
}

/// Other tributary installations (branch stores) replicating this database are fine
/// (staging beside production), but each has its own slot, which retains WAL on the source
/// until that installation confirms it: worth knowing, and a stopped or forgotten one
/// fills the source's disk.
fn judge_installations(server: &Server, known: &KnownSources) -> Check {
    let (installation, ours) = match known {
        KnownSources::Unavailable(reason) => return Check::skip(INSTALLATIONS, reason.as_str()),
        KnownSources::Known {
            installation,
            slots,
            ..
        } => (installation.as_ref(), slots.as_slice()),
    };
    let here = server
        .slots
        .iter()
        .filter(|s| s.here && !s.temporary)
        .map(|s| (s.name.as_str(), s.active));
    let strangers = slot::strangers(installation, ours, here);
    if strangers.is_empty() {
        return Check::pass(INSTALLATIONS, "no other tributary slot in this database");
    }
    let listed: Vec<String> = strangers.iter().map(ToString::to_string).collect();
    let drops: Vec<String> = strangers
        .iter()
        .filter(|s| !s.active)
        .map(|s| {
            format!(
                "SELECT pg_drop_replication_slot({});",
                quote_literal(&s.name)
            )
        })
        .collect();
    let drops = if drops.is_empty() {
        String::new()
    } else {
        format!(
            "; an inactive slot whose installation or connector is gone is dropped with: {}",
            drops.join(" ")
        )
    };
    Check::warn(
        INSTALLATIONS,
        listed.join(", "),
        format!(
            "other tributary installations (branch stores) replicate this database, each from \
             its own slot, and every slot retains WAL on the source until its installation \
             confirms it: keep them running, or delete their connectors with that \
             installation's configuration (tributary connector delete){drops}"
        ),
    )
}

/// A connector set up before is recognised by the system identifier and database it
/// recorded, whatever address it uses; one never set up (or a source whose identity is
/// unknown here) by host, port and database.
fn is_same_source(
    known: &KnownSource,
    system_id: Option<&str>,
    database: &str,
    info: &ConnInfo,
) -> bool {
    match (&known.identity, system_id) {
        (Some(identity), Some(system_id)) => {
            identity.system_id == system_id && identity.database == database
        }
        _ => known.address.as_ref().is_some_and(|(target, dbname)| {
            target.eq_ignore_ascii_case(&info.target()) && *dbname == info.dbname
        }),
    }
}

fn judge_slot_wal_keep(server: &Server) -> Check {
    let mb = server.slot_wal_keep_mb;
    let floor = max(server.max_wal_size_mb, SMALL_SLOT_WAL_KEEP_MB);
    if mb < 0 {
        Check::warn(
            SLOT_WAL_KEEP,
            "-1 (unlimited)",
            "a slot that stops advancing (tributary stopped or failing) keeps WAL until the \
             disk is full: alert on tributary_slot_retained_wal_bytes, or set a limit larger \
             than the longest outage to survive",
        )
    } else if mb < floor {
        Check::warn(
            SLOT_WAL_KEEP,
            format!("{mb}MB"),
            format!(
                "small: a slot more than {mb}MB behind is invalidated and the connector then \
                 needs a new snapshot; raise it to well above {floor}MB (ALTER SYSTEM SET \
                 max_slot_wal_keep_size = …; SELECT pg_reload_conf();)"
            ),
        )
    } else {
        Check::pass(SLOT_WAL_KEEP, format!("{mb}MB"))
    }
}

fn judge_sender_timeout(server: &Server) -> Check {
    let text = &server.wal_sender_timeout;
    match parse_pg_duration(text) {
        Some(timeout) if timeout.is_zero() => Check::warn(
            SENDER_TIMEOUT,
            "0 (disabled)",
            "a connection that died without closing keeps its WAL sender and slot busy until \
             TCP gives up: set it back to the default, 60s",
        ),
        Some(timeout) if timeout < SHORT_WAL_SENDER_TIMEOUT => Check::warn(
            SENDER_TIMEOUT,
            text.as_str(),
            "short: the server ends the stream whenever tributary or the network stalls for \
             a moment; the default, 60s, is safer",
        ),
        Some(_) => Check::pass(SENDER_TIMEOUT, text.as_str()),
        None => Check::warn(
            SENDER_TIMEOUT,
            format!("{text} (not understood)"),
            "make sure it is well above 10s and not 0",
        ),
    }
}

/// The psql script that grants what is missing, raises settings that are too low and allows
/// wal2json as an output plugin (`plugins`), or `None` when all of that is fine. Meant for a
/// superuser's psql session.
fn grant_script(server: &Server, plugins: Option<plugins::Need>) -> Option<String> {
    let role = &server.role;
    let missing_grants = !role.superuser
        && (!server.can_create
            || server.schemas.iter().any(|s| s.exists && !s.usage)
            || server.relations.iter().any(|r| !r.can_select));
    let raise_wal_level = server.wal_level != "logical";
    let raise_slots = free_slots(server) == 0;
    let raise_senders = free_senders(server) == 0;
    let grant_replication = !role.may_replicate();
    if !(missing_grants
        || grant_replication
        || raise_wal_level
        || raise_slots
        || raise_senders
        || plugins.is_some())
    {
        return None;
    }

    let who = quote_ident(&role.name);
    let database = quote_ident(&server.database);
    let schema_list: Vec<String> = server
        .schemas
        .iter()
        .map(|s| quote_ident(&s.name))
        .collect();
    let mut lines = vec![
        format!(
            "-- tributary: grants and settings for role {who} on database {database} \
             (schemas {}).",
            schema_list.join(", ")
        ),
        "-- Written by `tributary connector preflight`. Review it, then run it as a superuser:"
            .to_owned(),
        "--   psql -v ON_ERROR_STOP=1 -f <this file>".to_owned(),
        "-- It only adds: nothing is revoked and no setting is lowered, so running it twice is \
         harmless."
            .to_owned(),
        format!("\\connect {}", psql_quote(&server.database)),
    ];

    if !role.superuser {
        lines.push(String::new());
        lines.push(format!(
            "GRANT CONNECT, CREATE ON DATABASE {database} TO {who};"
        ));
        for schema in &server.schemas {
            let quoted = quote_ident(&schema.name);
            lines.push(String::new());
            if !schema.exists {
                lines.push(format!(
                    "-- Schema {quoted} does not exist: nothing to grant (check --schemas)."
                ));
                continue;
            }
            lines.push(format!("GRANT USAGE ON SCHEMA {quoted} TO {who};"));
            lines.push(format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA {quoted} TO {who};"
            ));
            lines.push(format!(
                "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {quoted} TO {who};"
            ));
            lines.push(
                "-- Tables and sequences created later: by the role running this script, and \
                 by each role that owns some now."
                    .to_owned(),
            );
            let mut owners: Vec<&str> = server
                .relations
                .iter()
                .filter(|r| r.name.schema == schema.name && r.owner != role.name)
                .map(|r| r.owner.as_str())
                .collect();
            owners.sort_unstable();
            owners.dedup();
            let for_roles = std::iter::once(String::new()).chain(
                owners
                    .iter()
                    .map(|o| format!("FOR ROLE {} ", quote_ident(o))),
            );
            for for_role in for_roles {
                for objects in ["TABLES", "SEQUENCES"] {
                    lines.push(format!(
                        "ALTER DEFAULT PRIVILEGES {for_role}IN SCHEMA {quoted} \
                         GRANT SELECT ON {objects} TO {who};"
                    ));
                }
            }
        }
    }

    if grant_replication {
        lines.push(String::new());
        lines.push(if role.on_rds {
            format!("GRANT rds_replication TO {who};")
        } else {
            format!("ALTER ROLE {who} REPLICATION;")
        });
    }

    if let Some(need) = plugins {
        lines.push(String::new());
        lines.extend(plugins::script(server, need));
    }

    if raise_wal_level || raise_slots || raise_senders {
        lines.push(String::new());
        if role.on_rds {
            lines.push(
                "-- Amazon RDS and Aurora take no ALTER SYSTEM: set rds.logical_replication = 1, \
                 max_replication_slots and max_wal_senders in the DB parameter group, then reboot."
                    .to_owned(),
            );
        } else {
            lines.extend(raise_settings(
                server,
                raise_wal_level,
                raise_slots,
                raise_senders,
            ));
        }
    }
    lines.push(String::new());
    Some(lines.join("\n"))
}

/// ALTER SYSTEM for each setting below what tributary needs. It cannot run inside a DO
/// block or function, so each SELECT yields the statement only while the server's value is
/// still too low, and psql's `\gexec` runs what it yields: a higher value is never lowered.
fn raise_settings(server: &Server, wal_level: bool, slots: bool, senders: bool) -> Vec<String> {
    let mut lines = vec![
        "-- Server settings below what tributary needs. Each SELECT yields its ALTER SYSTEM only"
            .to_owned(),
        "-- while the current value is lower, and psql's \\gexec runs it: a higher value stays."
            .to_owned(),
    ];
    if wal_level {
        lines.push(
            "SELECT 'ALTER SYSTEM SET wal_level = logical' \
             WHERE pg_catalog.current_setting('wal_level') <> 'logical'"
                .to_owned(),
        );
        lines.push("\\gexec".to_owned());
    }
    let mut raise = |name: &str, at_least: usize| {
        lines.push(format!(
            "SELECT 'ALTER SYSTEM SET {name} = {at_least}' \
             WHERE pg_catalog.current_setting('{name}')::int < {at_least}"
        ));
        lines.push("\\gexec".to_owned());
    };
    if slots {
        raise(
            "max_replication_slots",
            max(SETTING_FLOOR, server.slots.len() + SLOT_HEADROOM),
        );
    }
    if senders {
        raise(
            "max_wal_senders",
            max(SETTING_FLOOR, server.active_senders + SENDER_HEADROOM),
        );
    }
    lines.extend([
        "-- These take effect at the next restart of the server (a reload is not enough), e.g."
            .to_owned(),
        "--   pg_ctl restart -D <data directory>   or   systemctl restart postgresql".to_owned(),
        "-- Physical standbys need max_wal_senders at least as high as their primary's: raise \
         theirs first."
            .to_owned(),
    ]);
    lines
}

/// `text` as one argument of a psql meta-command: single quotes, in which psql reads `''`
/// as a quote and a backslash as an escape.
fn psql_quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::identity::Missing;

    fn info() -> ConnInfo {
        ConnInfo::parse("postgresql://app:s3cret@db.example.com:5432/shop").unwrap()
    }

    fn table(schema: &str, name: &str) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// A source that passes every check: tributary's role is a superuser-free replication
    /// role with every grant.
    fn healthy() -> Server {
        Server {
            version: Version {
                num: 150_004,
                text: "15.4".into(),
            },
            in_recovery: false,
            wal_level: "logical".into(),
            max_slots: 10,
            slots: vec![Slot {
                name: "other".into(),
                active: true,
                temporary: false,
                here: true,
            }],
            max_senders: 10,
            active_senders: 1,
            role: Role {
                name: "app".into(),
                superuser: false,
                replication: true,
                on_rds: false,
                rds_replication: false,
            },
            database: "shop".into(),
            can_create: true,
            capture: CaptureStatus::Missing,
            capture_key_readable: false,
            slot_wal_keep_mb: 10_240,
            max_wal_size_mb: 1024,
            wal_sender_timeout: "1min".into(),
            large_objects: 0,
            prepared: Vec::new(),
            schemas: vec![Schema {
                name: "public".into(),
                exists: true,
                usage: true,
            }],
            relations: vec![
                Relation {
                    name: table("public", "orders"),
                    kind: RelationKind::Table,
                    owner: "owner".into(),
                    can_select: true,
                    unlogged: false,
                },
                Relation {
                    name: table("public", "orders_id_seq"),
                    kind: RelationKind::Sequence,
                    owner: "owner".into(),
                    can_select: true,
                    unlogged: false,
                },
            ],
            tables: vec![Table {
                name: table("public", "orders"),
                identity: ReplicaIdentity::PrimaryKey,
                usable_index: None,
            }],
            numeric_columns: vec!["public.orders.total (numeric(10,2))".into()],
            foreign_keys: vec![],
            plugins: PluginList::from_setting(Some("pgoutput, test_decoding, wal2json")).unwrap(),
        }
    }

    /// What `gather` makes of `server`: the probe blocked for `probe_blocker`'s reason, or
    /// run successfully, with `numeric_as_string` as its answer.
    fn ready_with(server: Server, numeric_as_string: bool) -> Gathered {
        let probe = match probe_blocker(&server) {
            Some(reason) => Probe::Blocked(reason),
            None => Probe::Ran {
                system_id: "7301".into(),
                slot: SlotName::new("tributary_preflight_1_2").unwrap(),
                dropped: Ok(()),
                numeric_as_string: Ok(numeric_as_string),
            },
        };
        Gathered::Ready {
            encryption: Encryption::Tls("TLSv1.3"),
            server: Box::new(server),
            probe,
        }
    }

    fn ready(server: Server) -> Gathered {
        ready_with(server, true)
    }

    fn judged(gathered: &Gathered) -> Report {
        judge(
            &info(),
            &["public".to_owned()],
            gathered,
            &KnownSources::Known {
                installation: None,
                slots: vec![],
                connectors: vec![],
            },
        )
    }

    fn check<'a>(report: &'a Report, name: &str) -> &'a Outcome {
        &report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name:?} in {:#?}", report.checks))
            .outcome
    }

    fn failed(report: &Report) -> Vec<&str> {
        report
            .checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Fail { .. }))
            .map(|c| c.name.as_str())
            .collect()
    }

    #[track_caller]
    fn assert_fails(outcome: &Outcome, value: &str, fix: &str) {
        let Outcome::Fail { value: v, fix: f } = outcome else {
            panic!("expected a failure, got {outcome:?}")
        };
        assert!(v.contains(value), "{v:?} lacks {value:?}");
        assert!(f.contains(fix), "{f:?} lacks {fix:?}");
    }

    #[test]
    fn a_healthy_source_passes_in_order_without_a_script() {
        let report = judged(&ready(healthy()));
        assert!(report.passed(), "{:#?}", report.checks);
        assert_eq!(report.grant_script, None);
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        let expected: Vec<String> = ORDER
            .iter()
            .map(|&n| {
                if n == SCHEMAS {
                    schema_check("public")
                } else {
                    n.to_owned()
                }
            })
            .collect();
        assert_eq!(names, expected);
        // A replication role is not a superuser: the only warning is about event triggers.
        let warnings: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Warn { .. }))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(warnings, [EVENT_TRIGGERS]);
    }

    #[test]
    fn a_pending_prepared_transaction_is_named_where_the_slot_would_wait() {
        let mut server = healthy();
        server.prepared = vec![PreparedXact {
            gid: "tx-1".into(),
            owner: "app".into(),
            database: "shop".into(),
            prepared: "2024-05-01 10:00:00 UTC".into(),
        }];
        let gathered = Gathered::Ready {
            encryption: Encryption::Plain,
            server: Box::new(server),
            probe: Probe::TimedOut,
        };
        let report = judged(&gathered);
        assert_eq!(failed(&report), [WAL2JSON]);
        let Outcome::Fail { fix, .. } = check(&report, WAL2JSON) else {
            unreachable!()
        };
        assert!(
            fix.contains("pg_prepared_xacts") && fix.contains("COMMIT PREPARED 'tx-1'"),
            "{fix}"
        );
        assert!(!fix.contains("FROM pg_stat_activity"), "{fix}");
        let Outcome::Warn { value, .. } = check(&report, PREPARED) else {
            panic!("{:?}", check(&report, PREPARED))
        };
        assert_eq!(
            value,
            "'tx-1' (owner app, database shop, prepared at 2024-05-01 10:00:00 UTC)"
        );
    }

    #[test]
    fn an_unreachable_server_skips_everything_after_tcp() {
        let error = Error::Closed {
            target: "db.example.com:5432".into(),
        };
        let report = judged(&Gathered::Unreachable(error));
        assert!(!report.passed());
        assert_eq!(failed(&report), [TCP]);
        // Every later check, the per-schema one included, is listed as skipped.
        assert_eq!(report.checks.len(), ORDER.len());
        assert!(report.checks[1..].iter().all(
            |c| matches!(&c.outcome, Outcome::Skip { reason } if reason.contains("not reachable"))
        ));
        assert_eq!(report.grant_script, None);
    }

    #[test]
    fn a_login_failure_names_the_fix() {
        let error = Error::Server {
            target: "db.example.com:5432".into(),
            error: Box::new(super::super::ServerError {
                severity: "FATAL".into(),
                code: "28P01".into(),
                message: "password authentication failed for user \"app\"".into(),
                detail: None,
                hint: None,
            }),
        };
        let report = judged(&Gathered::LoginFailed {
            encryption: Encryption::Plain,
            error,
        });
        assert_eq!(failed(&report), [AUTH]);
        assert_fails(
            check(&report, AUTH),
            "password authentication failed",
            "password in the URL",
        );
        assert!(matches!(check(&report, TLS), Outcome::Warn { .. }));
        assert!(matches!(check(&report, WAL_LEVEL), Outcome::Skip { .. }));
    }

    #[test]
    fn missing_settings_fail_and_the_script_raises_them_only() {
        let mut server = healthy();
        server.wal_level = "replica".into();
        server.max_slots = 2;
        server.slots = vec![
            Slot {
                name: "busy".into(),
                active: true,
                temporary: false,
                here: true,
            },
            Slot {
                name: "forgotten".into(),
                active: false,
                temporary: false,
                here: true,
            },
        ];
        let report = judged(&ready(server));
        assert_eq!(failed(&report), [WAL_LEVEL, SLOTS]);
        assert_fails(
            check(&report, SLOTS),
            "2/2 used, none free",
            "SELECT pg_drop_replication_slot('forgotten');",
        );
        assert_eq!(
            check(&report, WAL2JSON),
            &Outcome::Skip {
                reason: "needs wal_level = logical".into()
            }
        );
        let script = report.grant_script.expect("a script");
        assert!(script.contains(
            "SELECT 'ALTER SYSTEM SET wal_level = logical' WHERE \
             pg_catalog.current_setting('wal_level') <> 'logical'\n\\gexec"
        ));
        assert!(script.contains(
            "SELECT 'ALTER SYSTEM SET max_replication_slots = 10' WHERE \
             pg_catalog.current_setting('max_replication_slots')::int < 10\n\\gexec"
        ));
        assert!(!script.contains("max_wal_senders ="), "{script}");
        assert!(!script.contains("REPLICATION;"), "{script}");
        assert!(script.contains("restart"), "{script}");
    }

    #[test]
    fn missing_grants_are_named_and_scripted_for_every_owner() {
        let mut server = healthy();
        server.role.replication = false;
        server.can_create = false;
        server.schemas = vec![
            Schema {
                name: "public".into(),
                exists: true,
                usage: true,
            },
            Schema {
                name: "Billing \"Dept\"".into(),
                exists: true,
                usage: false,
            },
            Schema {
                name: "gone".into(),
                exists: false,
                usage: false,
            },
        ];
        server.relations[0].can_select = false;
        server.relations.push(Relation {
            name: table("Billing \"Dept\"", "invoices"),
            kind: RelationKind::Table,
            owner: "billing owner".into(),
            can_select: false,
            unlogged: false,
        });
        let schemas = [
            "public".to_owned(),
            "Billing \"Dept\"".into(),
            "gone".into(),
        ];
        let report = judge(
            &info(),
            &schemas,
            &ready(server),
            &KnownSources::Unavailable("no store".into()),
        );
        assert_fails(
            check(&report, "schema public"),
            "missing SELECT on table public.orders",
            "GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"app\";",
        );
        assert_fails(
            check(&report, "schema Billing \"Dept\""),
            "missing USAGE; SELECT on table Billing \"Dept\".invoices",
            "GRANT USAGE ON SCHEMA \"Billing \"\"Dept\"\"\" TO \"app\";",
        );
        assert_fails(check(&report, "schema gone"), "does not exist", "--schemas");
        assert_fails(
            check(&report, CREATE),
            "missing on database shop",
            "GRANT CREATE",
        );
        assert_fails(
            check(&report, REPLICATION),
            "neither",
            "ALTER ROLE \"app\" REPLICATION;",
        );
        assert_eq!(
            check(&report, DUPLICATE),
            &Outcome::Skip {
                reason: "no store".into()
            }
        );

        let script = report.grant_script.expect("a script");
        for line in [
            "\\connect 'shop'",
            "GRANT CONNECT, CREATE ON DATABASE \"shop\" TO \"app\";",
            "GRANT USAGE ON SCHEMA \"public\" TO \"app\";",
            "GRANT SELECT ON ALL SEQUENCES IN SCHEMA \"public\" TO \"app\";",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA \"public\" GRANT SELECT ON TABLES TO \"app\";",
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"owner\" IN SCHEMA \"public\" GRANT SELECT ON \
             TABLES TO \"app\";",
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"billing owner\" IN SCHEMA \
             \"Billing \"\"Dept\"\"\" GRANT SELECT ON SEQUENCES TO \"app\";",
            "-- Schema \"gone\" does not exist: nothing to grant (check --schemas).",
            "ALTER ROLE \"app\" REPLICATION;",
        ] {
            assert!(
                script.lines().any(|l| l == line),
                "no {line:?} in\n{script}"
            );
        }
        // Owners are per schema, and settings that suffice are left alone.
        assert!(!script.contains("FOR ROLE \"billing owner\" IN SCHEMA \"public\""));
        assert!(!script.contains("ALTER SYSTEM"), "{script}");
    }

    #[test]
    fn rds_gets_its_own_replication_grant_and_no_alter_system() {
        let mut server = healthy();
        server.role.replication = false;
        server.role.on_rds = true;
        server.wal_level = "replica".into();
        let report = judged(&ready(server));
        assert_fails(
            check(&report, REPLICATION),
            "neither",
            "GRANT rds_replication TO \"app\";",
        );
        let script = report.grant_script.expect("a script");
        assert!(
            script.contains("GRANT rds_replication TO \"app\";"),
            "{script}"
        );
        assert!(script.contains("rds.logical_replication = 1"), "{script}");
        assert!(!script.contains("ALTER SYSTEM SET"), "{script}");
        assert!(!script.contains("ALTER ROLE"), "{script}");
    }

    /// What `gather` makes of `server` when the probe slot is refused with 42501.
    fn probe_refused(server: Server) -> Gathered {
        Gathered::Ready {
            encryption: Encryption::Plain,
            server: Box::new(server),
            probe: Probe::Failed(Error::Server {
                target: "db.example.com:5432".into(),
                error: Box::new(crate::source::ServerError {
                    severity: "ERROR".into(),
                    code: "42501".into(),
                    message: "library \"wal2json\" may not be used as an output plugin".into(),
                    detail: None,
                    hint: Some("add it to \"output_plugin_libraries\"".into()),
                }),
            }),
        }
    }

    fn plugin_list(value: &str) -> PluginList {
        PluginList::from_setting(Some(value)).unwrap()
    }

    #[test]
    fn a_refused_wal2json_names_the_setting_and_the_statement_that_keeps_its_entries() {
        let mut server = healthy();
        server.plugins = plugin_list("pgoutput, test_decoding, decoder_raw");
        let report = judged(&probe_refused(server));
        assert_eq!(failed(&report), [WAL2JSON]);
        assert_fails(
            check(&report, WAL2JSON),
            "refused: output_plugin_libraries is 'pgoutput, test_decoding, decoder_raw', \
             without wal2json (ERROR 42501: library \"wal2json\" may not be used",
            "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
             'decoder_raw', 'wal2json'; SELECT pg_reload_conf();",
        );
        let Outcome::Fail { fix, .. } = check(&report, WAL2JSON) else {
            unreachable!()
        };
        assert!(!fix.contains("REPLICATION"), "{fix}");
        assert!(matches!(check(&report, NUMERIC), Outcome::Skip { .. }));
        let script = report.grant_script.expect("a script");
        assert!(
            script.contains(&format!(
                "{}\n\\gexec\nSELECT pg_catalog.pg_reload_conf();\n",
                crate::source::output_plugins::ADD_WAL2JSON_SQL
            )),
            "{script}"
        );
        assert!(
            script.contains(
                "-- As preflight read it: ALTER SYSTEM SET output_plugin_libraries = \
                 'pgoutput', 'test_decoding', 'decoder_raw', 'wal2json';"
            ),
            "{script}"
        );
        // Nothing else was missing: no REPLICATION, no restart.
        assert!(!script.contains("REPLICATION;"), "{script}");
        assert!(!script.contains("restart of the server"), "{script}");
    }

    #[test]
    fn a_refusal_the_role_cannot_read_is_fixed_by_a_statement_the_server_computes() {
        let mut server = healthy();
        server.plugins = PluginList::Unreadable;
        let report = judged(&probe_refused(server));
        assert_fails(
            check(&report, WAL2JSON),
            "refused by the source's output_plugin_libraries, which does not list wal2json \
             (ERROR 42501:",
            "may not read the list (that needs superuser or pg_read_all_settings): the grant \
             script below computes the statement",
        );
        let script = report.grant_script.expect("a script");
        assert!(
            script.contains(crate::source::output_plugins::ADD_WAL2JSON_SQL),
            "{script}"
        );
        assert!(!script.contains("As preflight read it"), "{script}");
    }

    #[test]
    fn the_list_read_fails_the_line_even_when_the_probe_could_not_run() {
        let mut server = healthy();
        server.role.replication = false;
        server.plugins = plugin_list("pgoutput, test_decoding");
        let report = judged(&ready(server));
        assert_eq!(failed(&report), [REPLICATION, WAL2JSON]);
        assert_fails(
            check(&report, WAL2JSON),
            "without wal2json (the probe did not run: needs the REPLICATION privilege)",
            "'test_decoding', 'wal2json';",
        );
        let script = report.grant_script.expect("a script");
        assert!(
            script.contains("ALTER ROLE \"app\" REPLICATION;"),
            "{script}"
        );
        assert!(
            script.contains("\\gexec\nSELECT pg_catalog.pg_reload_conf();"),
            "{script}"
        );

        // Unread and unprobed: unknown, so the line is skipped, and the script adds wal2json
        // only where it is missing.
        let mut server = healthy();
        server.role.replication = false;
        server.plugins = PluginList::Unreadable;
        let report = judged(&ready(server));
        assert_eq!(
            check(&report, WAL2JSON),
            &Outcome::Skip {
                reason: "needs the REPLICATION privilege".into()
            }
        );
        let script = report.grant_script.expect("a script");
        assert!(
            script.contains("whether it lists wal2json is not known"),
            "{script}"
        );
        assert!(script.contains("pg_catalog.pg_reload_conf()"), "{script}");
    }

    #[test]
    fn other_42501s_and_allowed_lists_are_not_called_refusals() {
        for plugins in [PluginList::Absent, plugin_list("pgoutput, wal2json")] {
            let mut server = healthy();
            server.plugins = plugins.clone();
            let report = judged(&probe_refused(server));
            assert_fails(
                check(&report, WAL2JSON),
                "the probe slot could not be created",
                "see the error",
            );
            assert_eq!(report.grant_script, None, "{plugins:?}");
        }
        // A probe that ran: whatever the list says, nothing to allow.
        let mut server = healthy();
        server.plugins = PluginList::Unreadable;
        let report = judged(&ready(server));
        assert!(report.passed(), "{:#?}", report.checks);
        assert_eq!(report.grant_script, None);
    }

    #[test]
    fn rds_is_told_to_use_its_parameter_group() {
        let mut server = healthy();
        server.role.on_rds = true;
        server.plugins = plugin_list("pgoutput, test_decoding");
        let report = judged(&probe_refused(server));
        assert_fails(check(&report, WAL2JSON), "refused", "DB parameter group");
        let script = report.grant_script.expect("a script");
        assert!(script.contains("in the DB parameter group"), "{script}");
        assert!(!script.contains("ALTER SYSTEM SET"), "{script}");
        assert!(!script.contains("\\gexec"), "{script}");
    }

    #[test]
    fn tables_without_an_identity_fail_one_by_one() {
        let mut server = healthy();
        server.tables = vec![
            Table {
                name: table("public", "ok"),
                identity: ReplicaIdentity::Full,
                usable_index: None,
            },
            Table {
                name: table("public", "keyless"),
                identity: ReplicaIdentity::Nothing(Missing::NoKey),
                usable_index: None,
            },
            Table {
                name: table("public", "coded"),
                identity: ReplicaIdentity::Nothing(Missing::NoKey),
                usable_index: Some("coded_code_key".into()),
            },
            Table {
                name: table("public", "silent"),
                identity: ReplicaIdentity::Nothing(Missing::Declared { primary_key: false }),
                usable_index: None,
            },
            Table {
                name: table("public", "muted"),
                identity: ReplicaIdentity::Nothing(Missing::Declared { primary_key: true }),
                usable_index: Some("muted_pkey".into()),
            },
        ];
        let report = judged(&ready(server));
        assert_eq!(
            failed(&report),
            [
                "replica identity public.keyless",
                "replica identity public.coded",
                "replica identity public.silent",
                "replica identity public.muted"
            ]
        );
        // A key that only the setting keeps from serving: no primary key to add.
        assert_fails(
            check(&report, "replica identity public.muted"),
            "NOTHING although it has a primary key",
            "ALTER TABLE \"public\".\"muted\" REPLICA IDENTITY DEFAULT;",
        );
        let Outcome::Fail { fix, .. } = check(&report, "replica identity public.muted") else {
            unreachable!()
        };
        assert!(!fix.contains("primary key;"), "{fix}");
        assert_fails(
            check(&report, "replica identity public.keyless"),
            "no primary key",
            "ALTER TABLE \"public\".\"keyless\" REPLICA IDENTITY FULL;",
        );
        assert_fails(
            check(&report, "replica identity public.coded"),
            "coded_code_key could serve",
            "ALTER TABLE \"public\".\"coded\" REPLICA IDENTITY USING INDEX \"coded_code_key\";",
        );
        assert_fails(
            check(&report, "replica identity public.silent"),
            "NOTHING",
            "add a primary key",
        );
        // Replica identity is the operator's decision: the grant script stays out of it.
        assert_eq!(report.grant_script, None);
        // `connector create` asks for decisions about these tables instead of refusing.
        let keyless: Vec<String> = report
            .without_identity()
            .map(|t| display(&t.name))
            .collect();
        assert_eq!(
            keyless,
            [
                "public.keyless",
                "public.coded",
                "public.silent",
                "public.muted"
            ]
        );
        assert_eq!(report.blocking_failures().count(), 0);
        assert_eq!(
            replica_identity_full_sql(&table("public", "keyless")),
            "ALTER TABLE \"public\".\"keyless\" REPLICA IDENTITY FULL;"
        );
        let mut server = healthy();
        server.wal_level = "replica".into();
        server.tables = vec![Table {
            name: table("public", "keyless"),
            identity: ReplicaIdentity::Nothing(Missing::NoKey),
            usable_index: None,
        }];
        let report = judged(&ready(server));
        let blocking: Vec<&str> = report
            .blocking_failures()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(blocking, [WAL_LEVEL]);
    }

    #[test]
    fn a_deferrable_key_or_a_dropped_identity_index_is_no_identity() {
        let mut server = healthy();
        let no_identity = |name: &str, missing: Missing, usable_index: Option<&str>| Table {
            name: table("public", name),
            identity: ReplicaIdentity::Nothing(missing),
            usable_index: usable_index.map(Into::into),
        };
        server.tables = vec![
            no_identity("deferred", Missing::DeferrableKey, None),
            no_identity(
                "reindexed",
                Missing::IndexDropped,
                Some("reindexed_code_key"),
            ),
            no_identity("unindexed", Missing::IndexDropped, None),
        ];
        let report = judged(&ready(server));
        assert_fails(
            check(&report, "replica identity public.deferred"),
            "primary key is DEFERRABLE",
            "re-create the primary key NOT DEFERRABLE; or ALTER TABLE \"public\".\"deferred\" \
             REPLICA IDENTITY FULL;",
        );
        assert_fails(
            check(&report, "replica identity public.reindexed"),
            "USING INDEX was dropped",
            "ALTER TABLE \"public\".\"reindexed\" REPLICA IDENTITY USING INDEX \
             \"reindexed_code_key\";",
        );
        assert_fails(
            check(&report, "replica identity public.unindexed"),
            "USING INDEX was dropped",
            "REPLICA IDENTITY FULL;",
        );
        // All three go to `connector create`'s decisions, as keyless tables do.
        assert_eq!(report.without_identity().count(), 3);
        assert_eq!(report.blocking_failures().count(), 0);
    }

    #[test]
    fn unlogged_tables_are_listed_as_not_replicated() {
        let report = judged(&ready(healthy()));
        assert!(matches!(check(&report, UNLOGGED), Outcome::Pass { value } if value == "none"));
        let mut server = healthy();
        server.relations.push(Relation {
            name: table("public", "scratch"),
            kind: RelationKind::Table,
            owner: "owner".into(),
            can_select: true,
            unlogged: true,
        });
        let report = judged(&ready(server));
        match check(&report, UNLOGGED) {
            Outcome::Warn { value, fix } => {
                assert!(value.contains("1 not replicated"), "{value}");
                assert!(value.contains("public.scratch"), "{value}");
                assert!(fix.contains("its definition without rows"), "{fix}");
                assert!(fix.contains("SET LOGGED"), "{fix}");
            }
            other => panic!("{other:?}"),
        }
        assert!(report.passed());
    }

    #[test]
    fn wal2json_without_numeric_as_string_lists_the_affected_columns() {
        let report = judged(&ready_with(healthy(), false));
        let Outcome::Warn { value, .. } = check(&report, NUMERIC) else {
            panic!("{:?}", check(&report, NUMERIC))
        };
        assert!(
            value.contains("public.orders.total (numeric(10,2))"),
            "{value}"
        );
        assert!(report.passed());
        assert_eq!(
            report.nan_as_null_columns,
            ["public.orders.total (numeric(10,2))"]
        );
        let exact = judged(&ready_with(healthy(), true));
        assert!(exact.nan_as_null_columns.is_empty());
    }

    #[test]
    fn large_objects_are_counted_and_said_to_stay_behind() {
        let report = judged(&ready(healthy()));
        assert!(matches!(
            check(&report, LARGE_OBJECTS),
            Outcome::Pass { .. }
        ));
        let mut server = healthy();
        server.large_objects = 3;
        let report = judged(&ready(server));
        let Outcome::Warn { value, .. } = check(&report, LARGE_OBJECTS) else {
            panic!("{:?}", check(&report, LARGE_OBJECTS))
        };
        assert!(value.starts_with("3 large objects"), "{value}");
        assert!(report.passed());
    }

    #[test]
    fn leftover_probe_slots_come_with_the_statement_that_drops_them() {
        let mut server = healthy();
        server.slots.push(Slot {
            name: "tributary_preflight_9_9".into(),
            active: false,
            temporary: false,
            here: true,
        });
        // A running probe's slot is temporary, and no leftover.
        server.slots.push(Slot {
            name: "tributary_probe_8_8".into(),
            active: true,
            temporary: true,
            here: true,
        });
        let report = judged(&ready(server));
        let Outcome::Warn { value, fix } = check(&report, LEFTOVERS) else {
            panic!("{:?}", check(&report, LEFTOVERS))
        };
        assert_eq!(value, "tributary_preflight_9_9 (persistent: retaining WAL)");
        assert_eq!(
            fix,
            "drop them: SELECT pg_drop_replication_slot('tributary_preflight_9_9');"
        );
    }

    #[test]
    fn other_installations_slots_here_are_warned_about_with_the_drops_of_inactive_ones() {
        let mut server = healthy();
        let slot = |name: &str, active, here| Slot {
            name: name.into(),
            active,
            temporary: false,
            here,
        };
        server.slots.extend([
            slot("tributary_k3x9qa7b_1_app", true, true),
            slot("tributary_zz00aa11_1_app", true, true),
            slot("tributary_2_app", false, true),
            // Another database's slots are that database's business.
            slot("tributary_yy00aa11_1_app", false, false),
        ]);
        let known = |slots: Vec<SlotName>| KnownSources::Known {
            installation: Some(InstallationId::new("k3x9qa7b").unwrap()),
            slots,
            connectors: vec![],
        };
        let ours = vec![SlotName::new("tributary_k3x9qa7b_1_app").unwrap()];
        let report = judge(
            &info(),
            &["public".to_owned()],
            &ready(server),
            &known(ours),
        );
        assert!(report.passed(), "a warning only");
        let Outcome::Warn { value, fix } = check(&report, INSTALLATIONS) else {
            panic!("{:?}", check(&report, INSTALLATIONS))
        };
        assert_eq!(
            value,
            "tributary_zz00aa11_1_app (installation zz00aa11, streaming), tributary_2_app (a \
             tributary from before installation ids, inactive)"
        );
        assert!(fix.contains("retains WAL"), "{fix}");
        assert!(
            fix.ends_with("dropped with: SELECT pg_drop_replication_slot('tributary_2_app');"),
            "{fix}"
        );

        let report = judge(
            &info(),
            &["public".to_owned()],
            &ready(healthy()),
            &known(vec![]),
        );
        assert_eq!(
            check(&report, INSTALLATIONS),
            &Outcome::Pass {
                value: "no other tributary slot in this database".into()
            }
        );
    }

    #[test]
    fn a_database_with_a_connector_is_a_duplicate_by_identity_or_address() {
        let by_identity = KnownSource {
            connector: "shop".into(),
            identity: Some(SourceIdentity {
                system_id: "7301".into(),
                database: "shop".into(),
            }),
            address: Some(("elsewhere:5432".into(), "shop".into())),
        };
        let by_address = KnownSource {
            connector: "fresh".into(),
            identity: None,
            address: Some(("DB.example.com:5432".into(), "shop".into())),
        };
        let other_cluster = KnownSource {
            connector: "other".into(),
            identity: Some(SourceIdentity {
                system_id: "9999".into(),
                database: "shop".into(),
            }),
            address: Some(("db.example.com:5432".into(), "shop".into())),
        };
        let info = info();
        assert!(is_same_source(&by_identity, Some("7301"), "shop", &info));
        assert!(!is_same_source(&by_identity, Some("7301"), "sales", &info));
        assert!(is_same_source(&by_address, Some("7301"), "shop", &info));
        assert!(!is_same_source(&other_cluster, Some("7301"), "shop", &info));
        // Without a system identifier (no replication connection), the address decides.
        assert!(is_same_source(&other_cluster, None, "shop", &info));

        let report = judge(
            &info,
            &["public".to_owned()],
            &ready(healthy()),
            &KnownSources::Known {
                installation: None,
                slots: vec![],
                connectors: vec![by_identity],
            },
        );
        assert_fails(
            check(&report, DUPLICATE),
            "connector shop already replicates database shop of system 7301",
            "tributary connector delete shop",
        );
    }

    #[test]
    fn risky_slot_and_sender_settings_are_warnings() {
        let mut server = healthy();
        server.slot_wal_keep_mb = -1;
        server.wal_sender_timeout = "0".into();
        server.active_senders = 9;
        let report = judged(&ready(server));
        assert!(report.passed());
        assert!(
            matches!(check(&report, SLOT_WAL_KEEP), Outcome::Warn { value, .. } if value == "-1 (unlimited)")
        );
        assert!(
            matches!(check(&report, SENDER_TIMEOUT), Outcome::Warn { value, .. } if value == "0 (disabled)")
        );
        assert!(matches!(check(&report, SENDERS), Outcome::Warn { .. }));

        let mut server = healthy();
        server.slot_wal_keep_mb = 256;
        server.wal_sender_timeout = "5s".into();
        let report = judged(&ready(server));
        assert!(
            matches!(check(&report, SLOT_WAL_KEEP), Outcome::Warn { fix, .. } if fix.contains("invalidated"))
        );
        assert!(matches!(
            check(&report, SENDER_TIMEOUT),
            Outcome::Warn { .. }
        ));
    }

    #[test]
    fn psql_arguments_are_quoted() {
        assert_eq!(psql_quote("shop"), "'shop'");
        assert_eq!(psql_quote(r"it's a\b"), r"'it''s a\\b'");
    }
}
