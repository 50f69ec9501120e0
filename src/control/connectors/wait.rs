//! `connector wait` (and `retry-setup --wait`): one look at where a connector is on its
//! way to streaming, or to having applied what the source had written; the command polls
//! and shows it.

use crate::bookkeeping::{self, Bookkeeping, Connector};
use crate::control::connectors::slot::{self as source_slot, SourceError};
use crate::control::connectors::tables::{self, Progress};
use crate::control::health;
use crate::pg::{self, ConnInfo, ConnectError};
use crate::pipeline::PipelineState;
use crate::source::slot;
use crate::types::{ConnectorName, Lsn};

/// Why the wait cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
    #[error("connector {0} was deleted meanwhile")]
    Deleted(ConnectorName),
    #[error("{name} failed: {error}; next step: {next_step}")]
    Failed {
        name: ConnectorName,
        error: String,
        next_step: String,
    },
    #[error("the source reported an unreadable WAL position {0}")]
    UnreadablePosition(String),
}

/// Where the connector is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// Streaming under a live daemon (the end of a wait without `caught_up`).
    Streaming(Progress),
    /// It has applied everything up to `target` (the end of a wait with `caught_up`).
    CaughtUp { target: Lsn },
    /// Streaming, not yet at `target`.
    CatchingUp {
        target: Lsn,
        confirmed: Option<Lsn>,
        progress: Progress,
    },
    /// Snapshotting; `slot_wait` says what a slot being created waits for.
    Snapshotting {
        progress: Progress,
        slot_wait: Option<String>,
    },
    /// Any other state, as shown (`pending`, `streaming (no daemon)`, …).
    Other {
        shown_state: String,
        progress: Progress,
    },
}

/// Follows one connector: `target` is the source's WAL position when it was first seen
/// streaming (with `caught_up`).
pub struct Follower<'a> {
    bookkeeping: &'a Bookkeeping,
    connector: &'a Connector,
    source: ConnInfo,
    caught_up: bool,
    target: Option<Lsn>,
}

impl<'a> Follower<'a> {
    pub async fn new(
        bookkeeping: &'a Bookkeeping,
        connector: &'a Connector,
        caught_up: bool,
    ) -> Result<Follower<'a>, SourceError> {
        let source = bookkeeping.source(connector).await?;
        Ok(Follower {
            bookkeeping,
            connector,
            source,
            caught_up,
            target: None,
        })
    }

    /// One look; `Err(Error::Failed)` when the connector failed.
    pub async fn look(&mut self) -> Result<Look, Error> {
        let bookkeeping = self.bookkeeping;
        let name = &self.connector.name;
        let now = bookkeeping
            .connector_by_id(self.connector.id)
            .await?
            .ok_or_else(|| Error::Deleted(name.clone()))?;
        let listed = bookkeeping.tables(now.id).await?;
        let progress = tables::progress(&listed);
        // Streaming counts only under a live daemon that recorded it, never a leftover row.
        let leases = bookkeeping.leases().await?;
        let health = health::assess(bookkeeping, &now, &leases, &health::Slot::Unknown)
            .await?
            .health;
        Ok(match now.state {
            PipelineState::Failed => {
                return Err(Error::Failed {
                    name: name.clone(),
                    error: now
                        .last_error
                        .unwrap_or_else(|| "(no error recorded)".to_owned()),
                    next_step: now
                        .next_step
                        .unwrap_or_else(|| "see the daemon's log".to_owned()),
                })
            }
            // A table held out of the stream stays out until the operator acts: waiting
            // would never end.
            PipelineState::Streaming if health::HeldOut::of(&listed).is_some() => {
                let problem = health.problem();
                return Err(Error::Failed {
                    name: name.clone(),
                    error: problem.map_or_else(String::new, |p| p.reason.clone()),
                    next_step: problem.map_or_else(String::new, |p| p.next_step.clone()),
                });
            }
            PipelineState::Streaming if health.is_current() => {
                if !self.caught_up {
                    return Ok(Look::Streaming(progress));
                }
                self.catching_up(&now, progress).await?
            }
            PipelineState::Snapshotting => Look::Snapshotting {
                progress,
                slot_wait: source_slot::creation_wait(&self.source, &now.slot_name)
                    .await
                    .ok()
                    .flatten(),
            },
            _ => Look::Other {
                shown_state: health.shown_state,
                progress,
            },
        })
    }

    async fn catching_up(&mut self, now: &Connector, progress: Progress) -> Result<Look, Error> {
        let client = pg::connect(&self.source).await?;
        let target = match self.target {
            Some(target) => target,
            None => {
                let current: String = client
                    .query_one(&format!("SELECT ({})::text", slot::SERVER_LSN), &[])
                    .await?
                    .get(0);
                *self.target.insert(
                    current
                        .parse()
                        .map_err(|_| Error::UnreadablePosition(current))?,
                )
            }
        };
        let confirmed = slot::inspect(&client, &now.slot_name)
            .await?
            .and_then(|i| i.confirmed_flush);
        Ok(match confirmed {
            Some(confirmed) if confirmed >= target => Look::CaughtUp { target },
            confirmed => Look::CatchingUp {
                target,
                confirmed,
                progress,
            },
        })
    }
}
