//! Deleting a connector: stop its pipeline, drop its slot (checking it is gone), its
//! replica database and its bookkeeping, in that order, so that whatever fails (or kills
//! the process) leaves the connector listed, disabled, with what is left to do; running
//! delete again finishes the job (`tests/crash_points.rs` kills it between the slot and
//! the replica).

use std::time::Duration;

use crate::bookkeeping::{self, Bookkeeping, Branch, Connector};
use crate::control::chain;
use crate::crash::{self, CrashPoint};
use crate::pg::{self, ConnInfo, ConnectError, InvalidUrl};
use crate::pipeline::PipelineState;
use crate::sink::{self, SinkError};
use crate::source::capture::{self, CaptureStatus};
use crate::source::catalog::CatalogError;
use crate::source::slot::{self, NotOurs, Ownership};
use crate::types::{ConnectorName, Lsn, SlotName};

/// How long delete waits for a running daemon to let go of the slot.
const SLOT_RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long delete waits for the source to answer.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connector was not (completely) deleted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(transparent)]
    Url(#[from] InvalidUrl),
    #[error(
        "{key}. Nothing was deleted. If the key is lost for good, `tributary connector delete \
         {name} --force` deletes the connector without its source URL: the replica database \
         and bookkeeping go, and it prints the SQL that drops slot {slot} on the source \
         (`{}`)", drop_sql(.slot)
    )]
    KeyLost {
        key: bookkeeping::Error,
        name: ConnectorName,
        slot: SlotName,
    },
    #[error("{}. Nothing was deleted and {name} runs on; run delete again, or use --force", chain(.cause))]
    NotStopped {
        cause: StopError,
        name: ConnectorName,
    },
    #[error("reading the replica's applied position (to tell whether the slot is ours)")]
    ReadApplied(#[source] SinkError),
    #[error(
        "{}. Nothing was deleted and {name} runs on. Fix this and run delete again, or use \
         --force to delete anyway (the slot is then yours to drop: `{}`).",
        chain(.cause), drop_sql(.slot)
    )]
    SlotNotDropped {
        cause: SlotError,
        name: ConnectorName,
        slot: SlotName,
    },
    #[error(
        "dropping the replica database {database} (the connector is disabled{}); run delete \
         again",
        match .slot_dropped {
            Some(true) => ", its slot dropped",
            Some(false) => ", its slot kept",
            None => "",
        }
    )]
    DropReplica {
        database: String,
        /// `None` when the source was not touched.
        slot_dropped: Option<bool>,
        #[source]
        source: SinkError,
    },
}

/// Why the pipeline could not be seen stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error("the running daemon did not stop the pipeline of {0} within {SLOT_RELEASE_TIMEOUT:?}")]
    Timeout(ConnectorName),
}

/// Why the slot could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("the source did not answer within {SOURCE_TIMEOUT:?}")]
    NoAnswer,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Inspect(#[from] tokio_postgres::Error),
    #[error("dropping slot {slot}")]
    Drop {
        slot: SlotName,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("ending session {pid}, which streams from {slot}")]
    Terminate {
        pid: i32,
        slot: SlotName,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "replication slot {slot} is still in use by source session {pid} after \
         {SLOT_RELEASE_TIMEOUT:?}: a daemon whose bookkeeping is elsewhere, or another \
         client, streams from it"
    )]
    InUse { slot: SlotName, pid: i32 },
}

/// Why the source's schema change capture objects could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

/// What the operator should hear of while the delete goes on (said as it happens, so that
/// it is heard even when a later step fails).
#[derive(Debug)]
pub enum Step<'a> {
    /// `--force` with the source URL unreadable: deleting without touching the source.
    WithoutSource(&'a bookkeeping::Error),
    /// `--force`: the pipeline was not seen to stop; deleting anyway.
    NotStopped(&'a StopError),
    /// `--force`: the session streaming from our slot was ended.
    SessionEnded {
        pid: i32,
        slot: &'a SlotName,
    },
    /// The slot is not this installation's: kept on the source.
    SlotKept(&'a NotOurs),
    /// `--force`: the slot could not be dropped; kept.
    SlotNotDropped(&'a SlotError),
    CaptureRemoved,
    CaptureNotRemoved(&'a CaptureError),
}

/// A deleted connector.
#[derive(Debug)]
pub struct Deleted {
    /// Whether its slot was dropped (and checked gone); `None` when the source was not
    /// touched (its URL could not be decrypted).
    pub slot_dropped: Option<bool>,
    /// Its branches, which are kept.
    pub branches: Vec<Branch>,
}

/// The SQL that drops `slot` on the source, for the operator.
pub fn drop_sql(slot: &SlotName) -> String {
    format!("SELECT pg_drop_replication_slot('{slot}');")
}

/// Deletes `connector`. With `force`: also when the pipeline does not stop, the slot
/// cannot be dropped, or the source URL cannot be decrypted or parsed (then the source is
/// not touched). `step` hears what the operator should know, as it happens.
pub async fn delete(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    force: bool,
    step: &mut dyn FnMut(Step<'_>),
) -> Result<Deleted, Error> {
    let source = match bookkeeping.source(connector).await {
        Ok(source) => source,
        Err(e) if e.source_unusable() && force => {
            step(Step::WithoutSource(&e));
            return delete_without_source(bookkeeping, store, connector, step).await;
        }
        Err(key) if key.is_key_problem() => {
            return Err(Error::KeyLost {
                key,
                name: connector.name.clone(),
                slot: connector.slot_name.clone(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    stop(bookkeeping, connector, force, step).await?;
    let applied = sink::replica_applied_lsn(store, &connector.replica_database)
        .await
        .map_err(Error::ReadApplied)?;
    let slot_dropped = match drop_slot(bookkeeping, &source, connector, applied, force, step).await
    {
        Ok(None) => true,
        Ok(Some(not_ours)) => {
            step(Step::SlotKept(&not_ours));
            false
        }
        Err(e) if force => {
            step(Step::SlotNotDropped(&e));
            false
        }
        Err(cause) => {
            bookkeeping
                .set_enabled(connector.id, connector.enabled)
                .await?;
            return Err(Error::SlotNotDropped {
                cause,
                name: connector.name.clone(),
                slot: connector.slot_name.clone(),
            });
        }
    };
    crash::reach(CrashPoint::DuringDelete);
    drop_replica(store, connector, Some(slot_dropped)).await?;
    if slot_dropped {
        match remove_capture(&source).await {
            Ok(true) => step(Step::CaptureRemoved),
            Ok(false) => {}
            Err(e) => step(Step::CaptureNotRemoved(&e)),
        }
    }
    let branches = bookkeeping.branches(Some(connector.id)).await?;
    bookkeeping.delete_connector(connector.id).await?;
    Ok(Deleted {
        slot_dropped: Some(slot_dropped),
        branches,
    })
}

/// When the source URL cannot be decrypted: the replica database and the bookkeeping go;
/// the source is not touched, so its slot (and capture objects) are the operator's to
/// drop. The pipeline is stopped first (a running daemon with the right key may still
/// stream).
async fn delete_without_source(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    step: &mut dyn FnMut(Step<'_>),
) -> Result<Deleted, Error> {
    stop(bookkeeping, connector, true, step).await?;
    drop_replica(store, connector, None).await?;
    let branches = bookkeeping.branches(Some(connector.id)).await?;
    bookkeeping.delete_connector(connector.id).await?;
    Ok(Deleted {
        slot_dropped: None,
        branches,
    })
}

/// Disables the connector: a running daemon stops its pipeline (the current target
/// transaction commits first) and marks it `stopped`; from then on nothing creates or
/// uses the slot. Without `force`, a pipeline that does not stop is enabled again.
async fn stop(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    force: bool,
    step: &mut dyn FnMut(Step<'_>),
) -> Result<(), Error> {
    bookkeeping.set_enabled(connector.id, false).await?;
    if let Err(cause) = wait_stopped(bookkeeping, connector).await {
        if !force {
            bookkeeping
                .set_enabled(connector.id, connector.enabled)
                .await?;
            return Err(Error::NotStopped {
                cause,
                name: connector.name.clone(),
            });
        }
        step(Step::NotStopped(&cause));
    }
    Ok(())
}

async fn drop_replica(
    store: &ConnInfo,
    connector: &Connector,
    slot_dropped: Option<bool>,
) -> Result<(), Error> {
    sink::drop_database(store, &connector.replica_database, true)
        .await
        .map_err(|source| Error::DropReplica {
            database: connector.replica_database.clone(),
            slot_dropped,
            source,
        })
}

/// After the connector's slot is gone: removes the source's capture objects unless another
/// tributary slot remains in that database (another connector, perhaps of another
/// installation, still needs them: every installation's slot names, legacy ones too,
/// start with `tributary_`; so do probes', which only makes this more careful). Returns
/// whether it removed them.
async fn remove_capture(source: &ConnInfo) -> Result<bool, CaptureError> {
    const OTHERS: &str = "SELECT count(*) FROM pg_catalog.pg_replication_slots \
        WHERE database = current_database() AND slot_name LIKE 'tributary\\_%'";
    let client = pg::connect(source).await?;
    if capture::inspect(&client).await?.status == CaptureStatus::Missing {
        return Ok(false);
    }
    let others: i64 = client.query_one(OTHERS, &[]).await?.get(0);
    if others > 0 {
        return Ok(false);
    }
    capture::uninstall(&client).await?;
    Ok(true)
}

/// Waits until no daemon runs the connector's pipeline: at once when no daemon is running,
/// else until the supervisor marks the disabled connector `stopped`.
async fn wait_stopped(bookkeeping: &Bookkeeping, connector: &Connector) -> Result<(), StopError> {
    let deadline = tokio::time::Instant::now() + SLOT_RELEASE_TIMEOUT;
    loop {
        if bookkeeping.daemons_running().await? == 0 {
            return Ok(());
        }
        let state = bookkeeping
            .connector_by_id(connector.id)
            .await?
            .map(|c| c.state);
        if matches!(state, None | Some(PipelineState::Stopped)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StopError::Timeout(connector.name.clone()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Drops the slot once nothing streams from it (ending the session that does at once
/// with `force`, else waiting up to [`SLOT_RELEASE_TIMEOUT`]), then checks it is gone;
/// returns why instead when the slot is not this installation's to drop (see
/// `source::slot::ownership`; `applied` is the replica's applied position). A session
/// streaming from a legacy-named slot is never ended: it may be another installation's.
async fn drop_slot(
    bookkeeping: &Bookkeeping,
    source: &ConnInfo,
    connector: &Connector,
    applied: Option<Lsn>,
    force: bool,
    step: &mut dyn FnMut(Step<'_>),
) -> Result<Option<NotOurs>, SlotError> {
    let slot_name = &connector.slot_name;
    let client = tokio::time::timeout(SOURCE_TIMEOUT, pg::connect(source))
        .await
        .map_err(|_| SlotError::NoAnswer)??;
    let deadline = tokio::time::Instant::now() + SLOT_RELEASE_TIMEOUT;
    loop {
        let Some(info) = slot::inspect(&client, slot_name).await? else {
            return Ok(None); // never created, or dropped already
        };
        let ownership = slot::ownership(
            bookkeeping.installation(),
            slot_name,
            connector.slot_created,
            info.confirmed_flush,
            applied,
        );
        let ours = match ownership {
            Ownership::NotOurs(why) => return Ok(Some(why)),
            Ownership::Ours => true,
            Ownership::Legacy => false,
        };
        match info.active_pid {
            None => {
                let dropped = client
                    .execute(
                        "SELECT pg_catalog.pg_drop_replication_slot($1)",
                        &[&slot_name.as_str()],
                    )
                    .await;
                match dropped {
                    // Taken again between the look and the drop (55006): look again.
                    Err(e) if e.code().is_some_and(|c| c.code() == "55006") => {}
                    Err(e) if e.code().is_some_and(|c| c.code() == "42704") => {}
                    Err(source) => {
                        return Err(SlotError::Drop {
                            slot: slot_name.clone(),
                            source,
                        })
                    }
                    Ok(_) => {}
                }
                if slot::inspect(&client, slot_name).await?.is_none() {
                    return Ok(None);
                }
            }
            Some(pid) if force && ours => {
                client
                    .execute("SELECT pg_catalog.pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|source| SlotError::Terminate {
                        pid,
                        slot: slot_name.clone(),
                        source,
                    })?;
                step(Step::SessionEnded {
                    pid,
                    slot: slot_name,
                });
            }
            Some(pid) if force => return Ok(Some(NotOurs::LegacyInUse(pid))),
            Some(pid) if tokio::time::Instant::now() >= deadline => {
                return Err(SlotError::InUse {
                    slot: slot_name.clone(),
                    pid,
                })
            }
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
