//! The pipeline's error: what went wrong in which layer, whether retrying can help, and
//! what the operator should do when it cannot.

use crate::bookkeeping::{self, Failure};
use crate::pg::ConnectError;
use crate::pipeline::snapshot::SnapshotError;
use crate::sink::SinkError;
use crate::source;
use crate::source::catalog::CatalogError;
use crate::source::wal2json::DecodeError;
use crate::types::{ConnectorName, SlotName};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("source: {0}")]
    Source(#[from] source::Error),
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("source catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    Decode(#[from] DecodeError),
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

    /// Whether the supervisor should retry (with backoff) rather than stop in `failed`.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Connect(ConnectError::Postgres { source, .. }) => {
                source.as_db_error().is_none()
            }
            PipelineError::Connect(ConnectError::Tls { .. }) => false,
            PipelineError::Catalog(e) => e.is_transient(),
            PipelineError::Decode(_) => false,
            PipelineError::Sink(e) => e.is_transient(),
            PipelineError::Snapshot(e) => e.is_transient(),
            PipelineError::Bookkeeping(_) | PipelineError::SlotBusy { .. } => true,
            PipelineError::Definite { .. } | PipelineError::LeaseLost => false,
            PipelineError::StreamEnded
            | PipelineError::GraceExpired
            | PipelineError::Panicked(_) => true,
        }
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
            PipelineError::Connect(ConnectError::Postgres { source, .. }) => {
                source.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
            }
            _ => false,
        }
    }

    /// The error as recorded for the operator, with the next step (naming `connector`).
    pub fn failure(&self, connector: &ConnectorName) -> Failure {
        let next_step = match self {
            _ if self.is_credentials() => format!(
                "give the connector its new credentials: `tributary connector update \
                 {connector} --url '<source URL>'` checks they reach the same source, and the \
                 pipeline resumes where it was (slot and replica kept, no new snapshot)"
            ),
            PipelineError::Definite { next_step, .. } => next_step.clone(),
            PipelineError::SlotBusy { pid, .. } => format!(
                "nothing, if it is a previous daemon of this installation (it lets go within \
                 wal_sender_timeout); if it is another installation's, both use this slot: \
                 run `tributary connector retry-setup {connector} --resnapshot` here to move \
                 this connector to a slot of its own (session {pid} is left alone)"
            ),
            _ if self.is_transient() => {
                "nothing: tributary retries by itself; check connectivity if this persists".into()
            }
            PipelineError::Decode(_) => {
                "report this record to the tributary developers; the pipeline stops so that \
                 nothing is skipped"
                    .into()
            }
            PipelineError::Sink(_) => {
                "fix the cause on the branch store (see the error), then run `tributary \
                 connector retry-setup` for this connector (or restart tributary); the change \
                 is applied again from the last committed position"
                    .into()
            }
            _ => "fix the cause named in the error, then restart tributary".into(),
        };
        Failure {
            error: self.to_string(),
            next_step,
        }
    }
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
}
