//! The bookkeeping layer's one error type. Each message says what happened and what the
//! operator can do; none carries a password or the key.

use std::io;
use std::path::PathBuf;

use sqlx::migrate::MigrateError;

use crate::pg::retry::{self, ErrorKind, NextStep};
use crate::pg::InvalidUrl;
use crate::types::{BranchName, ConnectorId, ConnectorName};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The first connection at start failed; `reason` is the server's or the network's.
    #[error(
        "cannot connect to the bookkeeping database at {target}: {reason}; check store.url \
         (or TRIBUTARY__STORE__URL) and that PostgreSQL is running and listening there"
    )]
    Connect { target: String, reason: String },
    /// The connection was lost, or the server is shutting down, starting or busy: what
    /// the retry policy says may pass.
    #[error(
        "the bookkeeping database is unreachable or busy: {0}; check store.url and that the \
         server is running"
    )]
    Unreachable(#[source] sqlx::Error),
    #[error("a bookkeeping query failed: {0}")]
    Query(#[source] sqlx::Error),
    #[error("migrating the bookkeeping schema failed: {source}; {advice}")]
    Migrate {
        #[source]
        source: MigrateError,
        advice: &'static str,
    },
    #[error("connector name {0} is taken: pick another or delete the old connector")]
    NameTaken(ConnectorName),
    #[error("connector {0} does not exist (was it deleted?)")]
    NotFound(ConnectorId),
    /// A pipeline's write refused because its lease has expired or passed to another daemon.
    #[error("this daemon no longer holds the lease of connector {0}: another daemon runs it")]
    LeaseLost(ConnectorId),
    /// A table the snapshot did not register: a bug in the caller.
    #[error(
        "connector {connector} has no row for table {table}: it must be listed in \
         set_snapshot_tables before its progress is recorded"
    )]
    UnknownTable {
        connector: ConnectorId,
        table: String,
    },
    #[error("source URL: {0}")]
    InvalidSourceUrl(#[from] InvalidUrl),
    #[error(
        "the encryption key from {origin} is unusable: {reason}; it must be 32 bytes written \
         as 64 hexadecimal characters"
    )]
    Key { origin: String, reason: String },
    #[error(
        "the key file {} may be accessed by other users (mode {mode:04o}): restrict it with \
         `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error(
        "cannot {action} the key file {}: {cause}; make its directory writable for this \
         user (`install -d -m 0700 -o USER {}`), or point secrets.key_file \
         (TRIBUTARY__SECRETS__KEY_FILE) at another file, or give the key as \
         TRIBUTARY__SECRETS__KEY",
        path.display(),
        path.parent().unwrap_or(path).display()
    )]
    KeyFile {
        path: PathBuf,
        action: &'static str,
        /// Not a `source`: the message says it already, and a chain would say it twice.
        cause: io::Error,
    },
    /// No key where the settings say, while the bookkeeping holds source URLs sealed with one.
    #[error(
        "no key to open the stored source URLs with: {looked_at} does not exist, and the \
         bookkeeping's source URLs were sealed with {sealed_with}. Put that key there (mode \
         0600), or point secrets.key_file (TRIBUTARY__SECRETS__KEY_FILE) at it, or give it as \
         TRIBUTARY__SECRETS__KEY. No key was created: only `connector create` makes one, for a \
         bookkeeping that holds no source URL yet",
        sealed_with = key_named(.expected.as_deref())
    )]
    NoKey {
        looked_at: String,
        expected: Option<String>,
    },
    /// The key is not the one the bookkeeping's source URLs were sealed with.
    #[error(
        "this is not the key this bookkeeping was written with (fingerprint {found}, expected \
         {}): it is {origin}. Nothing was written. Give tributary {sealed_with}: put it there, \
         or point secrets.key_file (TRIBUTARY__SECRETS__KEY_FILE) at it, or give it as \
         TRIBUTARY__SECRETS__KEY",
        expected.as_deref().unwrap_or("the key that opens the stored source URLs"),
        sealed_with = key_named(.expected.as_deref())
    )]
    WrongKey {
        found: String,
        expected: Option<String>,
        origin: String,
    },
    #[error(
        "cannot decrypt the source URL of connector {connector} with {key_origin}, the \
         bookkeeping's key: the URL was stored with another key before key fingerprints were \
         recorded, or its row was altered; restore the original key (secrets.key_file or \
         TRIBUTARY__SECRETS__KEY), or delete the connector and create it again"
    )]
    Decrypt {
        connector: ConnectorName,
        key_origin: String,
    },
    #[error(
        "cannot decrypt the password of branch {branch}'s role with {key_origin}, the \
         bookkeeping's key: its row was altered, or sealed with another key; restore the \
         original key, or set a new password (ALTER ROLE … PASSWORD) and hand it out yourself"
    )]
    DecryptBranchPassword {
        branch: BranchName,
        key_origin: String,
    },
    #[error("the bookkeeping schema holds an invalid value ({0}); was it edited by hand?")]
    Corrupt(String),
    /// A stored source URL that opens but does not parse (its text is masked).
    #[error(
        "the stored source URL of connector {connector} does not parse ({reason}); was the \
         bookkeeping edited by hand, or written by another tributary version?"
    )]
    StoredSourceUrl {
        connector: ConnectorName,
        reason: InvalidUrl,
    },
}

/// "the key of fingerprint …", or what is known of a key recorded before fingerprints were.
fn key_named(fingerprint: Option<&str>) -> String {
    match fingerprint {
        Some(fingerprint) => format!("the key of fingerprint {fingerprint}"),
        None => "the key they were sealed with (its fingerprint was not recorded yet)".to_owned(),
    }
}

impl Error {
    /// Retry or stop ([`crate::pg::retry`]): an unreachable or busy database may pass.
    /// A key that does not open the stored source URLs, or a row tributary never wrote,
    /// does not: retrying would only meet them again.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Definite(match self {
            Error::Connect { .. } | Error::Unreachable(_) => return ErrorKind::Transient,
            Error::NoKey { .. }
            | Error::WrongKey { .. }
            | Error::Decrypt { .. }
            | Error::DecryptBranchPassword { .. } => NextStep::RestoreKey,
            Error::Corrupt(_) => NextStep::RepairBookkeeping,
            Error::StoredSourceUrl { connector, .. } => NextStep::Explained(format!(
                "store the source URL again: tributary connector update {connector} --url URL"
            )),
            Error::UnknownTable { .. } => NextStep::Report,
            Error::Query(_)
            | Error::Migrate { .. }
            | Error::NameTaken(_)
            | Error::NotFound(_)
            | Error::LeaseLost(_)
            | Error::InvalidSourceUrl(_)
            | Error::Key { .. }
            | Error::KeyFilePermissions { .. }
            | Error::KeyFile { .. } => NextStep::FixCause,
        })
    }

    /// A migration failure, unless it was the connection that failed.
    pub(crate) fn migrate(source: MigrateError) -> Error {
        let source = match source {
            MigrateError::Execute(e) => match Error::from(e) {
                Error::Query(e) => MigrateError::Execute(e),
                lost => return lost,
            },
            MigrateError::ExecuteMigration(e, version) => match Error::from(e) {
                Error::Query(e) => MigrateError::ExecuteMigration(e, version),
                lost => return lost,
            },
            other => other,
        };
        let advice = match &source {
            MigrateError::VersionMissing(_) => {
                "the schema was migrated by a newer tributary: run that version (or newer)"
            }
            MigrateError::VersionMismatch(_) => {
                "an applied migration differs from this build's: run the tributary version \
                 that applied it"
            }
            MigrateError::Dirty(_) => {
                "a migration was left half applied: repair the schema by hand, then delete its \
                 row from tributary._sqlx_migrations"
            }
            _ => "check that the role in store.url may create schemas in its database",
        };
        Error::Migrate { source, advice }
    }
}

impl From<sqlx::Error> for Error {
    /// Unreachable when no answer came, or the answer's SQLSTATE may pass by itself.
    fn from(e: sqlx::Error) -> Error {
        let passes = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| retry::sqlstate(&code)),
            _ => false,
        };
        if passes {
            Error::Unreachable(e)
        } else {
            Error::Query(e)
        }
    }
}
