//! The sink's error type.
//!
//! Every message says what failed — for a change: its table, LSN and statement kind, and
//! the server's error with its SQLSTATE — and what the operator can do.
//! [`SinkError::kind`] says whether to retry or stop, by the one policy of
//! [`crate::pg::retry`].
//!
//! Messages never carry row values: a server error's DETAIL (`Key (id)=(5) already exists`,
//! `Failing row contains (…)`) may hold personal data, so only its message, SQLSTATE,
//! constraint and hint are shown; the detail is logged at debug level.

use std::fmt;

use crate::change::ChangeKind;
use crate::pg::retry::{self, ErrorKind, NextStep};
use crate::pg::ConnectError;
use crate::types::{FencingToken, Lsn};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error(
        "connecting to database {database:?} on the branch store failed: {}; check store.url \
         and that the server is running",
        connect_error(.source)
    )]
    Connect {
        database: String,
        #[source]
        source: ConnectError,
    },

    /// The sink's own statements: creating or dropping the replica, session settings,
    /// transaction control, reading the progress row.
    #[error("{action} in database {database:?} on the branch store failed: {}; {}", describe(.source), setup_advice(.source))]
    Setup {
        database: String,
        action: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The branch-store role may not set `session_replication_role`.
    #[error(
        "setting session_replication_role = replica in database {database:?} on the branch \
         store failed: {}; every apply session needs it, so that triggers and foreign keys \
         do not fire on replicated rows: {}",
        describe(.source),
        replication_role_advice(*.server_major, .role)
    )]
    ReplicationRole {
        database: String,
        role: String,
        server_major: u32,
        #[source]
        source: tokio_postgres::Error,
    },

    /// `CREATE DATABASE … TEMPLATE` failed cloning files (`file_copy_method = clone`).
    #[error(
        "creating the branch database {database:?} failed: {}; the branch store copies files \
         with file_copy_method = clone, and its filesystem could not clone them: set \
         file_copy_method = copy on the branch store (`ALTER SYSTEM SET file_copy_method = \
         copy; SELECT pg_reload_conf();`), or keep its data directory on a filesystem that \
         clones files (XFS with reflink=1, Btrfs)",
        describe(.source)
    )]
    CloneFailed {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("refusing to drop database {database:?}: {reason}")]
    Refused {
        database: String,
        reason: &'static str,
    },

    #[error(
        "table {table} (change at {}) does not exist in the replica database {database:?}: the \
         source's schema has probably changed (new or renamed table); take a new snapshot \
         with `tributary connector retry-setup`",
        at(.lsn)
    )]
    MissingTable {
        table: String,
        lsn: Option<Lsn>,
        database: String,
    },

    #[error(
        "{table} (change at {}) is a {what} in the replica database {database:?}, not a table: \
         the replica's schema differs from the source's; take a new snapshot with `tributary connector retry-setup`",
        at(.lsn)
    )]
    NotATable {
        table: String,
        what: &'static str,
        lsn: Option<Lsn>,
        database: String,
    },

    #[error(
        "{table} (change at {}) has numeric or float columns ({columns}) whose NaN, Infinity \
         and -Infinity the source's wal2json (older than 2.6) sends as null, so the replica \
         could silently differ; upgrade wal2json on the source to 2.6 or newer and restart \
         the connector (`tributary connector retry-setup`), or accept that such values \
         arrive as NULL with `tributary connector update <name> --nan-as-null accept`",
        at(.lsn)
    )]
    NanAsNull {
        table: String,
        columns: String,
        lsn: Option<Lsn>,
    },

    #[error(
        "rows of {table} arrived (change at {}) before the command that created it, which \
         did not create it as a materialized view (CREATE TABLE AS or SELECT INTO?): they \
         cannot be placed; take a new snapshot with `tributary connector retry-setup \
         --resnapshot`",
        at(.lsn)
    )]
    Unplaced { table: String, lsn: Option<Lsn> },

    /// An error whose likely cause is a NaN or ±Infinity that arrived as NULL.
    #[error(
        "{error}. Likely cause: column {columns} probably holds NaN, Infinity or -Infinity on \
         the source, which the source's wal2json (older than 2.6) sends as null, and this \
         connector accepts that (--nan-as-null accept); upgrade wal2json on the source to 2.6 \
         or newer, then take a new snapshot with `tributary connector retry-setup \
         --resnapshot`"
    )]
    NanArrivedAsNull {
        columns: String,
        error: Box<SinkError>,
    },

    #[error(
        "refreshing materialized view {view} in the replica (the source refreshed it, change \
         at {}) failed: {}; the replica computes it from its own tables, so an error here \
         names what differs from the source",
        at(.lsn),
        describe(.source)
    )]
    Refresh {
        view: String,
        lsn: Option<Lsn>,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "column {column:?} of {table} (change at {}) does not exist in the replica: the \
         source's schema has probably changed (new or renamed column); take a new snapshot \
         with `tributary connector retry-setup`",
        at(.lsn)
    )]
    MissingColumn {
        table: String,
        column: String,
        lsn: Option<Lsn>,
    },

    #[error(
        "cannot identify the row for {} on {table} at {}: {reason}; give the source table a \
         primary key or REPLICA IDENTITY FULL, then take a new snapshot with `tributary connector retry-setup`",
        kind_sql(.kind),
        at(.lsn)
    )]
    NoRowIdentity {
        table: String,
        kind: ChangeKind,
        lsn: Option<Lsn>,
        reason: String,
    },

    /// A change's statement failed on the server.
    #[error(
        "{} on {table} at {} failed: {}; {}",
        kind_sql(.kind),
        at(.lsn),
        describe(.source),
        statement_advice(.source)
    )]
    Statement {
        table: String,
        kind: ChangeKind,
        lsn: Option<Lsn>,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A schema change captured on the source failed on the replica.
    #[error(
        "replaying {tag} from the source at {} on the replica failed: {}; the statement was: \
         {statement}; make the replica able to take it (a missing role, extension or object?) \
         and restart tributary, or take a new snapshot with `tributary connector retry-setup`",
        at(.lsn),
        describe(.source)
    )]
    Ddl {
        tag: String,
        statement: String,
        lsn: Option<Lsn>,
        #[source]
        source: tokio_postgres::Error,
    },

    /// An UPDATE or DELETE found no row to change.
    #[error(
        "row not found: {} on {table} at {} matched no row in the replica{}; the replica no \
         longer matches the source (rows changed or deleted on the replica directly, or \
         changes lost); take a new snapshot with `tributary connector retry-setup`",
        kind_sql(.kind),
        at(.lsn),
        if *.identity_always {
            " (or the source assigned a new value to a GENERATED ALWAYS identity column, which \
             cannot be replayed)"
        } else {
            ""
        }
    )]
    RowNotFound {
        table: String,
        kind: ChangeKind,
        lsn: Option<Lsn>,
        identity_always: bool,
    },

    /// A batch of changes failed on the server; the error does not say which row.
    #[error(
        "one of {rows} batched {}s on {table} from {} to {} failed: {}; {}",
        kind_sql(.kind),
        at(.first_lsn),
        at(.last_lsn),
        describe(.source),
        statement_advice(.source)
    )]
    BatchStatement {
        table: String,
        kind: ChangeKind,
        rows: usize,
        first_lsn: Option<Lsn>,
        last_lsn: Option<Lsn>,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A statement changed another number of rows than the one it was built for.
    #[error(
        "{} on {table} at {} changed {affected} rows instead of {expected} (a trigger enabled \
         for replicas on the replica table?); the changes are not applied as the source made \
         them: remove the trigger, then take a new snapshot with `tributary connector retry-setup`",
        kind_sql(.kind),
        at(.lsn)
    )]
    RowCount {
        table: String,
        kind: ChangeKind,
        lsn: Option<Lsn>,
        affected: u64,
        expected: u64,
    },

    #[error(
        "recording {lsn} as the applied LSN in the replica database {database:?} failed: {}; {}",
        progress_problem(.source.as_ref()),
        progress_advice(.source.as_ref())
    )]
    Progress {
        database: String,
        lsn: Lsn,
        #[source]
        source: Option<tokio_postgres::Error>,
    },

    #[error(
        "committing the target transaction up to {lsn} in the replica database {database:?} \
         failed: {}; {}",
        describe(.source),
        statement_advice(.source)
    )]
    Commit {
        database: String,
        lsn: Lsn,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "refusing to record {requested} as applied: the replica database {database:?} has \
         applied up to {applied} already, so this would apply changes twice; this is a bug in \
         tributary, or two connectors write into one replica database"
    )]
    ProgressBackwards {
        database: String,
        applied: Lsn,
        requested: Lsn,
    },

    /// Another daemon owns the connector now: its lease's token claimed the replica.
    #[error(
        "the replica database {database:?} was claimed by a newer owner of this connector \
         (fencing token {current}, ours is {token}): this daemon lost the connector's lease \
         and stops applying; nothing is committed under the old lease"
    )]
    Fenced {
        database: String,
        token: FencingToken,
        current: FencingToken,
    },

    /// The open target transaction failed earlier and must be rolled back.
    #[error(
        "the target transaction was abandoned after an earlier error ({first}); it was rolled \
         back and the pipeline must resume from the replica's applied LSN"
    )]
    Aborted { first: String, transient: bool },

    /// The sink was used against its contract (a bug in the caller).
    #[error("{0}; this is a bug in tributary")]
    Misuse(&'static str),
}

impl SinkError {
    /// Retry or stop ([`crate::pg::retry`]), retrying from the replica's applied LSN: lost
    /// connections, a server shutting down or restarting, resource limits, serialization
    /// failures may pass. Constraint violations, missing rows, tables or columns need the
    /// operator, on the branch store.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::of(self.is_transient(), NextStep::FixBranchStore)
    }

    /// Whether [`SinkError::kind`] is transient (the open transaction remembers it when it
    /// is abandoned).
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Connect { source, .. } => source.is_transient(),
            SinkError::Setup { source, .. }
            | SinkError::Statement { source, .. }
            | SinkError::BatchStatement { source, .. }
            | SinkError::Ddl { source, .. }
            | SinkError::Refresh { source, .. }
            | SinkError::Commit { source, .. } => retry::postgres(source),
            SinkError::ReplicationRole { .. } | SinkError::CloneFailed { .. } => false,
            SinkError::Progress { source, .. } => source.as_ref().is_some_and(retry::postgres),
            SinkError::Aborted { transient, .. } => *transient,
            SinkError::NanArrivedAsNull { .. } => false,
            SinkError::Refused { .. }
            | SinkError::MissingTable { .. }
            | SinkError::NotATable { .. }
            | SinkError::NanAsNull { .. }
            | SinkError::Unplaced { .. }
            | SinkError::MissingColumn { .. }
            | SinkError::NoRowIdentity { .. }
            | SinkError::RowNotFound { .. }
            | SinkError::RowCount { .. }
            | SinkError::ProgressBackwards { .. }
            | SinkError::Fenced { .. }
            | SinkError::Misuse(_) => false,
        }
    }

    /// The table a definite error belongs to, alone: its rows no longer match the source's
    /// (a row not found, a duplicate key), or a value of it cannot be stored as the source
    /// has it (a data exception, a NaN its wal2json cannot send). Copying that table again
    /// repairs it, so the pipeline holds it out and streams the others. `None` for what
    /// concerns the whole replica: connections, the store's settings and privileges,
    /// schema changes, a missing table or column (a new snapshot), and every transient
    /// error. Named as [`crate::change::TableName`] displays it.
    pub fn table_at_fault(&self) -> Option<&str> {
        if self.is_transient() {
            return None;
        }
        match self {
            SinkError::RowNotFound { table, .. }
            | SinkError::RowCount { table, .. }
            | SinkError::NoRowIdentity { table, .. }
            | SinkError::NanAsNull { table, .. } => Some(table),
            SinkError::Statement { table, .. } | SinkError::BatchStatement { table, .. } => self
                .sqlstate()
                .filter(|code| one_tables_data(code))
                .map(|_| table.as_str()),
            SinkError::NanArrivedAsNull { error, .. } => error.table_at_fault(),
            _ => None,
        }
    }

    /// For an error of [`SinkError::table_at_fault`]: what the operator fixes before that
    /// table is copied again (copying it again then repairs the replica).
    pub fn table_fix(&self) -> &'static str {
        match self {
            SinkError::NanAsNull { .. } => {
                "upgrade wal2json on the source to 2.6 or newer, or accept that NaN and \
                 ±Infinity arrive as NULL (`tributary connector update <name> --nan-as-null \
                 accept`)"
            }
            SinkError::NanArrivedAsNull { .. } => {
                "upgrade wal2json on the source to 2.6 or newer (with it NaN and ±Infinity \
                 arrive as they are)"
            }
            SinkError::RowCount { .. } => {
                "remove the trigger enabled for replicas (ENABLE REPLICA or ALWAYS) on the \
                 replica table"
            }
            SinkError::RowNotFound { .. } | SinkError::NoRowIdentity { .. } => {
                "find what wrote to the replica table directly (only tributary may)"
            }
            _ => {
                "make the replica table's definition the source's again, and find what wrote \
                 to it directly (only tributary may)"
            }
        }
    }

    /// The server's SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        let source = match self {
            SinkError::Setup { source, .. }
            | SinkError::ReplicationRole { source, .. }
            | SinkError::CloneFailed { source, .. }
            | SinkError::Statement { source, .. }
            | SinkError::BatchStatement { source, .. }
            | SinkError::Ddl { source, .. }
            | SinkError::Refresh { source, .. }
            | SinkError::Commit { source, .. } => source,
            SinkError::Progress {
                source: Some(source),
                ..
            } => source,
            SinkError::Connect {
                source: ConnectError::Postgres { error: source, .. },
                ..
            } => source,
            SinkError::NanArrivedAsNull { error, .. } => return error.sqlstate(),
            _ => return None,
        };
        source.as_db_error().map(|db| db.code().code())
    }
}

/// SQLSTATE classes of errors about the rows of the table written: data exceptions (a
/// value out of range, an invalid text representation), integrity constraint violations
/// (a duplicate key, a NOT NULL or CHECK violated) and WITH CHECK OPTION violations.
fn one_tables_data(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("22" | "23" | "44"))
}

/// SQLSTATE `disk_full`: the connector stops in `failed` until the operator has made room.
const DISK_FULL: &str = "53100";

/// `at LSN 0/16B3748`, or `at an unknown LSN`.
fn at(lsn: &Option<Lsn>) -> String {
    match lsn {
        Some(lsn) => format!("LSN {lsn}"),
        None => "an unknown LSN".to_owned(),
    }
}

pub(crate) fn kind_sql(kind: &ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Insert => "INSERT",
        ChangeKind::Update => "UPDATE",
        ChangeKind::Delete => "DELETE",
        ChangeKind::Truncate => "TRUNCATE",
    }
}

fn connect_error(error: &ConnectError) -> String {
    match error {
        ConnectError::Postgres {
            target,
            error: source,
        } => format!("{target}: {}", describe(source)),
        ConnectError::Tls { target, reason } => format!("TLS with {target}: {reason}"),
        ConnectError::NoServer { .. } => error.to_string(),
    }
}

/// The server's error without its DETAIL (which may quote row values): severity,
/// SQLSTATE, message, constraint and hint. Other errors as tokio-postgres prints them.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        // With its causes: "error connecting to server" alone does not say why.
        return crate::pg::error_message(error);
    };
    let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(constraint) = db.constraint() {
        text.push_str(&format!(" (constraint {constraint:?})"));
    }
    if let Some(hint) = db.hint() {
        text.push_str(&format!("; hint: {hint}"));
    }
    text
}

/// How the branch-store `role` comes to be allowed to set `session_replication_role`, on
/// a server of `server_major`: a grant from PostgreSQL 15 on, superuser before.
pub(crate) fn replication_role_advice(server_major: u32, role: &str) -> String {
    let role = crate::pg::quote_ident(role);
    if server_major >= 15 {
        format!(
            "as a superuser on the branch store, run `GRANT SET ON PARAMETER \
             session_replication_role TO {role};`"
        )
    } else {
        format!(
            "on PostgreSQL {server_major} only a superuser may set it (GRANT SET ON PARAMETER \
             exists from PostgreSQL 15 on): make the role a superuser (`ALTER ROLE {role} \
             SUPERUSER;`), or use a branch store of PostgreSQL 15 or newer"
        )
    }
}

fn transient_advice() -> &'static str {
    "the branch store's connection was lost or the server is busy or restarting; the pipeline \
     retries from the replica's applied LSN"
}

fn setup_advice(error: &tokio_postgres::Error) -> &'static str {
    let code = error.as_db_error().map(|db| db.code().code());
    // Retried by the pipeline like any object in use, but a command that drops a database
    // says who holds it.
    if code != Some("55006") && retry::postgres(error) {
        return transient_advice();
    }
    match code {
        Some("42501") => {
            "the branch-store user lacks a privilege: it needs CREATEDB, and to own the \
             replica and branch databases (it does when it created them)"
        }
        Some("55006") => {
            "other sessions are connected to that database: close them (see \
             pg_stat_activity), or use --force where the command offers it"
        }
        Some("42P01" | "3F000") => {
            "the replica database lacks tributary's progress table: the replica was not \
             prepared completely; take a new snapshot with `tributary connector retry-setup`"
        }
        _ => "check the branch store's log for the cause",
    }
}

/// What the operator can do about a failed change.
fn statement_advice(error: &tokio_postgres::Error) -> &'static str {
    if retry::postgres(error) {
        return transient_advice();
    }
    let Some(db) = error.as_db_error() else {
        return "this is probably a bug in tributary; please report it";
    };
    let code = db.code().code();
    match code {
        DISK_FULL => {
            "the branch store is out of disk space: free space there (or grow the volume), then \
             run `tributary connector retry-setup` for this connector; it resumes from the \
             replica's applied LSN, and nothing after it was acknowledged to the source"
        }
        "23505" => {
            "the replica already holds this row, so it no longer matches the source (written \
             to directly?); take a new snapshot with `tributary connector retry-setup`"
        }
        "23502" | "23514" | "23P01" | "23503" => {
            "the replica rejects a row the source accepted: its schema differs from the \
             source's; align the schema or take a new snapshot with `tributary connector retry-setup`"
        }
        "0A000" | "42P01" | "42703" | "42804" | "42883" | "42P10" => {
            "the replica's schema differs from the source's (schema changes on the source are \
             not replicated); take a new snapshot with `tributary connector retry-setup`"
        }
        "42501" => {
            "the branch-store user lacks a privilege on the replica table; grant it, or use \
             the owner of the replica database"
        }
        _ if code.starts_with("22") => {
            "a value does not fit the replica's column: its type differs from the source's; \
             align the schema or take a new snapshot with `tributary connector retry-setup`"
        }
        _ => "fix the cause, then restart the connector: it resumes from the replica's applied LSN",
    }
}

fn progress_problem(error: Option<&tokio_postgres::Error>) -> String {
    match error {
        Some(error) => describe(error),
        None => "the progress row was not written".to_owned(),
    }
}

fn progress_advice(error: Option<&tokio_postgres::Error>) -> &'static str {
    match error {
        Some(error) if retry::postgres(error) => transient_advice(),
        Some(error) => setup_advice(error),
        None => "another session moved the applied LSN ahead meanwhile: two connectors write into one replica database?",
    }
}

/// For `Debug`-free logging of the parts of a server error that may hold row values.
pub(crate) struct DetailForDebug<'a>(pub &'a tokio_postgres::Error);

impl fmt::Display for DetailForDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(db) => {
                write!(f, "{}", db.message())?;
                if let Some(detail) = db.detail() {
                    write!(f, "; detail: {detail}")?;
                }
                if let Some(r#where) = db.where_() {
                    write!(f, "; where: {where}")?;
                }
                Ok(())
            }
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_role_advice_matches_the_store_version() {
        for (major, expected, not_expected) in [
            (
                13,
                "make the role a superuser (`ALTER ROLE \"tributary\" SUPERUSER;`)",
                "TO tributary",
            ),
            (
                14,
                "on PostgreSQL 14 only a superuser may set it",
                "TO tributary",
            ),
            (
                15,
                "GRANT SET ON PARAMETER session_replication_role TO \"tributary\";",
                "SUPERUSER",
            ),
            (
                18,
                "GRANT SET ON PARAMETER session_replication_role TO \"tributary\";",
                "SUPERUSER",
            ),
        ] {
            let advice = replication_role_advice(major, "tributary");
            assert!(advice.contains(expected), "{major}: {advice}");
            assert!(!advice.contains(not_expected), "{major}: {advice}");
        }
        assert!(replication_role_advice(16, "Store Role").contains("TO \"Store Role\";"));
    }

    #[test]
    fn only_definite_errors_of_one_tables_rows_hold_that_table_out() {
        for (sqlstate, one_table) in [
            ("23505", true),  // unique_violation: a duplicate row
            ("23502", true),  // not_null_violation
            ("22003", true),  // numeric_value_out_of_range
            ("22P02", true),  // invalid_text_representation
            ("44000", true),  // with_check_option_violation
            ("42703", false), // undefined_column: the schema, a new snapshot
            ("42501", false), // insufficient_privilege: the store's role
            ("53100", false), // disk_full: the whole store
            ("40001", false), // serialization_failure: transient
            ("08006", false), // connection_failure
            ("2", false),
        ] {
            assert_eq!(one_tables_data(sqlstate), one_table, "{sqlstate}");
        }
        let not_found = SinkError::RowNotFound {
            table: "app.log".into(),
            kind: ChangeKind::Update,
            lsn: None,
            identity_always: false,
        };
        assert_eq!(not_found.table_at_fault(), Some("app.log"));
        let nan = SinkError::NanArrivedAsNull {
            columns: "x".into(),
            error: Box::new(not_found),
        };
        assert_eq!(nan.table_at_fault(), Some("app.log"));
        for whole in [
            SinkError::MissingColumn {
                table: "app.log".into(),
                column: "c".into(),
                lsn: None,
            },
            SinkError::MissingTable {
                table: "app.log".into(),
                lsn: None,
                database: "r".into(),
            },
            SinkError::Aborted {
                first: "x".into(),
                transient: false,
            },
        ] {
            assert_eq!(whole.table_at_fault(), None, "{whole}");
        }
    }
}
