//! The source layer's error type.
//!
//! Each variant says what happened and, where the operator can act, what to do. The
//! pipeline decides retry or stop through [`Error::kind`], by the one policy of
//! [`crate::pg::retry`].

use std::fmt;
use std::io;

use crate::pg::retry::{self, ErrorKind, NextStep};

/// An error reported by the server (`ErrorResponse`), with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// The setting that may refuse wal2json (`output_plugins.rs` is about it); named here so
/// that an error can recognise it without this module naming that one.
pub(super) const OUTPUT_PLUGIN_LIBRARIES: &str = "output_plugin_libraries";

impl ServerError {
    /// What the operator can do about this error, where we know better than the server.
    fn advice(&self) -> Option<&'static str> {
        Some(match self.code.as_str() {
            "28P01" => "check the user name and password in the source URL",
            "28000" if self.message.contains("pg_hba.conf") => {
                "add a pg_hba.conf line on the source that allows this user, database and \
                 address (logical replication connections are matched by database name, not \
                 by the 'replication' keyword), then reload the server"
            }
            // The refusal names the setting in its hint: a setting's name is the same in
            // every translation of the message.
            "42501" if self.names(OUTPUT_PLUGIN_LIBRARIES) => {
                "the source's output_plugin_libraries does not list wal2json: a superuser adds \
                 it after the entries listed now, each quoted on its own, and reloads (for the \
                 default list: ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', \
                 'test_decoding', 'wal2json'; SELECT pg_reload_conf();); `tributary connector \
                 preflight` prints the statement for the source's list"
            }
            "42501" => {
                "grant the role the REPLICATION attribute (ALTER ROLE … REPLICATION) or the \
                 provider's equivalent"
            }
            "53300" => "the server has no free connection slots: raise max_connections or close idle sessions",
            "53400" => {
                "the server is out of replication slots or WAL senders: raise \
                 max_replication_slots / max_wal_senders, or drop unused slots"
            }
            "55006" => "another process is using this replication slot: stop it, or wait for it to disconnect",
            "42704" if self.message.contains("replication slot") => {
                "the replication slot does not exist: it must be created (a new snapshot is needed)"
            }
            "3D000" => "check the database name in the source URL",
            _ => return None,
        })
    }
}

impl ServerError {
    /// Whether the message, its detail or its hint mention `word`.
    fn names(&self, word: &str) -> bool {
        [
            Some(&self.message),
            self.detail.as_ref(),
            self.hint.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|text| text.contains(word))
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        if let Some(advice) = self.advice() {
            write!(f, "; {advice}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidUrl(#[from] crate::pg::conninfo::InvalidUrl),

    /// A record the decoder does not understand: retrying reads the same record again.
    #[error(transparent)]
    Decode(#[from] super::wal2json::DecodeError),

    #[error(
        "could not connect to {target}: {source}; check that the server is running and reachable"
    )]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },

    #[error("timed out after {seconds} s connecting to {target}; check the host, port and firewall, or raise connect_timeout")]
    ConnectTimeout { target: String, seconds: u64 },

    #[error("TLS with {target}: {reason}")]
    Tls { target: String, reason: String },

    /// Several servers were named and none could be used; `transient` when one may become
    /// usable by itself (a standby being promoted, a server restarting).
    #[error("no server of the connection string could be used: {reasons}")]
    NoServer { reasons: String, transient: bool },

    #[error("authentication with {target} failed: {reason}")]
    Auth { target: String, reason: String },

    #[error("server {target} reported {error}")]
    Server {
        target: String,
        error: Box<ServerError>,
    },

    #[error("connection to {target} closed by the server")]
    Closed { target: String },

    #[error("connection to {target} failed: {source}")]
    Io {
        target: String,
        #[source]
        source: io::Error,
    },

    /// Nothing arrived on the replication connection, not even the answer to a status
    /// update that asked for one: the server is hung or the network dropped the connection
    /// without telling either side.
    #[error(
        "no answer from {target} for {seconds} s on the replication connection (the server is \
         paused or the network path was cut); reconnecting"
    )]
    Silent { target: String, seconds: u64 },

    #[error("unexpected reply from {target}: {reason}; the server may not be PostgreSQL, or this is a bug in tributary")]
    Protocol { target: String, reason: String },
}

impl Error {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Server { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::Server { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether the source refused the credentials (a wrong password, or none where one is
    /// needed): the connector needs new ones (`connector update --url`).
    pub fn is_credentials(&self) -> bool {
        match self {
            Error::Auth { .. } => true,
            Error::Server { error, .. } => error.code == "28P01",
            _ => false,
        }
    }

    /// Retry or stop ([`crate::pg::retry`]): lost connections, timeouts and what the
    /// server's SQLSTATE says may pass; bad credentials, TLS, an invalid URL and protocol
    /// surprises need the operator.
    pub fn kind(&self) -> ErrorKind {
        let transient = match self {
            Error::Decode(_) => return ErrorKind::Definite(NextStep::Report),
            Error::Connect { .. } | Error::ConnectTimeout { .. } | Error::Closed { .. } => true,
            Error::Io { .. } | Error::Silent { .. } => true,
            Error::Server { error, .. } => retry::sqlstate(&error.code),
            Error::NoServer { transient, .. } => *transient,
            Error::InvalidUrl(_)
            | Error::Tls { .. }
            | Error::Auth { .. }
            | Error::Protocol { .. } => false,
        };
        ErrorKind::of(transient, NextStep::FixCause)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_the_decoder_does_not_understand_is_reported_not_retried() {
        let error = Error::from(super::super::wal2json::decode(b"{}").unwrap_err());
        assert_eq!(error.kind(), ErrorKind::Definite(NextStep::Report));
        assert!(
            error.to_string().contains("invalid wal2json record"),
            "{error}"
        );
    }

    #[test]
    fn advice_follows_the_cause_not_only_the_code() {
        let error = |code: &str, message: &str, hint: Option<&str>| ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: hint.map(str::to_owned),
        };
        let cases = [
            (
                error(
                    "42501",
                    "library \"wal2json\" may not be used as an output plugin",
                    Some(
                        "If it is safe for all REPLICATION users to use this library as an \
                         output plugin, add it to \"output_plugin_libraries\" and reload the \
                         server configuration.",
                    ),
                ),
                "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
                 'wal2json'",
            ),
            // Translated, but for the setting's name.
            (
                error(
                    "42501",
                    "la bibliothèque « wal2json » ne peut pas être utilisée",
                    Some("ajoutez-la à « output_plugin_libraries »"),
                ),
                "does not list wal2json",
            ),
            (
                error("42501", "permission denied to use replication slots", None),
                "grant the role the REPLICATION attribute",
            ),
        ];
        for (error, advice) in cases {
            let shown = error.to_string();
            assert!(shown.contains(advice), "{shown}");
            assert_eq!(
                shown.contains("REPLICATION attribute"),
                !error.names("output_plugin_libraries"),
                "{shown}"
            );
        }
    }
}
