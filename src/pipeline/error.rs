//! The pipeline's error: what went wrong in which layer, whether retrying can help, and
//! what the operator should do when it cannot.

use crate::bookkeeping::{self, Connector, Failure};
use crate::pg::retry::{self, ErrorKind, NextStep};
use crate::pg::ConnectError;
use crate::pipeline::snapshot::SnapshotError;
use crate::sink::SinkError;
use crate::source;
use crate::source::catalog::CatalogError;
use crate::types::{ConnectorName, SlotName};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("source: {0}")]
    Source(#[from] source::Error),
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("source catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("branch store: {0}")]
    Sink(#[from] SinkError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("bookkeeping: {0}")]
    Bookkeeping(#[from] bookkeeping::Error),
    /// Another session streams from a slot whose name predates installation ids: it may be
    /// another installation's daemon, so it is waited for, never ended.
    #[error(
        "replication slot {slot} is in use by source session {pid}, which may be another \
         tributary installation's (the slot's name predates installation ids): waiting for it \
         to end instead of ending it"
    )]
    SlotBusy { slot: SlotName, pid: i32 },
    /// A condition only the operator can resolve.
    #[error("{error}")]
    Definite { error: String, next_step: String },
    /// The source ended the replication stream without an error.
    #[error("the source ended the replication stream")]
    StreamEnded,
    /// Shutdown's grace period ended before the open target transaction could commit:
    /// stopping without it (it is applied again after restart).
    #[error("the shutdown grace period ended inside a transaction")]
    GraceExpired,
    /// The bookkeeping no longer shows this daemon's lease on the connector.
    #[error("this daemon no longer holds the connector's lease: another daemon runs it")]
    LeaseLost,
    /// A bug: the pipeline task panicked.
    #[error("internal error (a bug in tributary, please report it): {0}")]
    Panicked(String),
}

impl PipelineError {
    pub fn definite(error: impl Into<String>, next_step: impl Into<String>) -> PipelineError {
        PipelineError::Definite {
            error: error.into(),
            next_step: next_step.into(),
        }
    }

    /// A pipeline task that panicked (a bug) or was cancelled.
    pub fn from_join(e: tokio::task::JoinError) -> PipelineError {
        let message = e
            .try_into_panic()
            .ok()
            .and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            })
            .unwrap_or_else(|| "cancelled".into());
        PipelineError::Panicked(message)
    }

    /// Retry (with backoff) or stop in `failed`: each layer's error says which, by the one
    /// policy of [`crate::pg::retry`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Source(e) => e.kind(),
            PipelineError::Connect(e) => ErrorKind::of(e.is_transient(), NextStep::FixCause),
            PipelineError::Catalog(e) => e.kind(),
            PipelineError::Sink(e) => e.kind(),
            PipelineError::Snapshot(e) => e.kind(),
            PipelineError::Bookkeeping(e) => e.kind(),
            PipelineError::Definite { next_step, .. } => {
                ErrorKind::Definite(NextStep::Explained(next_step.clone()))
            }
            PipelineError::LeaseLost => ErrorKind::Definite(NextStep::FixCause),
            // A panic is a bug, but the progress is safe in the replica: the pipeline is
            // retried rather than left stopped.
            PipelineError::SlotBusy { .. }
            | PipelineError::StreamEnded
            | PipelineError::GraceExpired
            | PipelineError::Panicked(_) => ErrorKind::Transient,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// Whether the pipeline stopped because a newer owner of the connector claimed the
    /// replica: the connector is another daemon's now, and nothing is to be recorded.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            PipelineError::Sink(SinkError::Fenced { .. })
                | PipelineError::LeaseLost
                | PipelineError::Bookkeeping(bookkeeping::Error::LeaseLost(_))
        )
    }

    /// Whether the source refused the connector's credentials, on the replication
    /// connection or an SQL session.
    fn is_credentials(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_credentials(),
            PipelineError::Connect(ConnectError::Postgres { error: source, .. }) => {
                source.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
            }
            _ => false,
        }
    }

    /// The error as recorded for the operator, with the next step (naming `connector`).
    pub fn failure(&self, connector: &ConnectorName) -> Failure {
        let next_step = match (self, self.kind()) {
            _ if self.is_credentials() => format!(
                "give the connector its new credentials: `tributary connector update \
                 {connector} --url '<source URL>'` checks they reach the same source, and the \
                 pipeline resumes where it was (slot and replica kept, no new snapshot)"
            ),
            (PipelineError::SlotBusy { pid, .. }, _) => format!(
                "nothing, if it is a previous daemon of this installation (it lets go within \
                 wal_sender_timeout); if it is another installation's, both use this slot: \
                 run `tributary connector retry-setup {connector} --resnapshot` here to move \
                 this connector to a slot of its own (session {pid} is left alone)"
            ),
            (_, ErrorKind::Transient) => retry::RETRYING.to_owned(),
            (_, ErrorKind::Definite(next)) => next.text(),
        };
        Failure {
            error: self.to_string(),
            next_step,
        }
    }
}

/// The next step when only a new snapshot helps.
pub(super) fn retry_setup(connector: &Connector) -> String {
    format!(
        "a new snapshot is needed: run `tributary connector retry-setup {} --resnapshot`",
        connector.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ServerError;

    #[test]
    fn refused_credentials_ask_for_a_new_url_and_nothing_else_does() {
        let server = |code: &str| {
            PipelineError::Source(source::Error::Server {
                target: "db:5432".into(),
                error: Box::new(ServerError {
                    severity: "FATAL".into(),
                    code: code.into(),
                    message: "refused".into(),
                    detail: None,
                    hint: None,
                }),
            })
        };
        let shop = ConnectorName::new("shop").unwrap();
        for (error, asks) in [
            (server("28P01"), true),
            (
                PipelineError::Source(source::Error::Auth {
                    target: "db:5432".into(),
                    reason: "the server asked for a password and the URL has none".into(),
                }),
                true,
            ),
            (server("3D000"), false),
            (server("57P01"), false),
            (PipelineError::StreamEnded, false),
        ] {
            let next = error.failure(&shop).next_step;
            assert_eq!(
                next.contains("`tributary connector update shop --url '<source URL>'`"),
                asks,
                "{error}: {next}"
            );
            assert!(!next.contains("restart tributary") || !asks, "{next}");
        }
    }

    #[test]
    fn each_layer_says_retry_or_stop_and_the_next_step_follows() {
        let decrypt = bookkeeping::Error::Decrypt {
            connector: ConnectorName::new("shop").unwrap(),
            key_origin: "the key file k".into(),
        };
        let misuse = SinkError::Misuse("x");
        let cases: [(PipelineError, bool, &str); 7] = [
            (decrypt.into(), false, "TRIBUTARY__SECRETS__KEY"),
            (
                bookkeeping::Error::Corrupt("table sync state \"x\"".into()).into(),
                false,
                "restore the bookkeeping row",
            ),
            (
                bookkeeping::Error::from(sqlx::Error::PoolTimedOut).into(),
                true,
                "retries by itself",
            ),
            (misuse.into(), false, "on the branch store"),
            (PipelineError::definite("e", "do this"), false, "do this"),
            (PipelineError::StreamEnded, true, "retries by itself"),
            (
                PipelineError::SlotBusy {
                    slot: crate::types::SlotName::new("s").unwrap(),
                    pid: 7,
                },
                true,
                "session 7 is left alone",
            ),
        ];
        for (error, transient, next) in cases {
            assert_eq!(error.is_transient(), transient, "{error}");
            let failure = error.failure(&ConnectorName::new("shop").unwrap());
            assert!(
                failure.next_step.contains(next),
                "{error}: {}",
                failure.next_step
            );
        }
    }
}
