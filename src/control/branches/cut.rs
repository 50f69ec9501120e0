//! Cutting a branch: who cuts (the connector's pipeline when a daemon streams it, else the
//! caller), asking the pipeline and waiting for its cut at a source commit boundary, or
//! copying the replica here when no pipeline uses it.

use std::time::{Duration, Instant};

use super::decide::{self, CutFacts, Cutter};
use super::BranchError;
use crate::bookkeeping::{Bookkeeping, BranchLock, BranchState, Connector};
use crate::pg::ConnInfo;
use crate::sink;
use crate::types::{BranchName, ConnectorName, Lsn};

/// How often a waiting caller looks whether the pipeline has cut the branch.
const CUT_POLL: Duration = Duration::from_millis(50);

/// What a caller may show while a branch is being made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// `--allow-stale` let a connector that is not current be branched: why it is not.
    Stale(String),
    /// The connector's pipeline has not reached a source commit boundary yet.
    WaitingForBoundary { connector: ConnectorName },
    /// The connector's replica is being copied into the branch.
    Copying {
        connector: ConnectorName,
        branch: BranchName,
    },
    /// A branch of the name that a command which died left unfinished was cleaned up: its
    /// database, the role made for it and its record dropped.
    CleanedUp { branch: BranchName },
    /// `--force` ended this many client sessions connected to the branch.
    EndedSessions { count: usize, branch: BranchName },
}

/// Who cuts the connector's branch now, or why nobody can.
pub(super) async fn ready_to_branch(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
) -> Result<Cutter, BranchError> {
    let held_out = bookkeeping.held_out_tables(connector.id).await?;
    if !held_out.is_empty() {
        return Err(BranchError::TablesHeldOut {
            connector: connector.name.clone(),
            tables: held_out.iter().map(ToString::to_string).collect(),
        });
    }
    let facts = CutFacts {
        enabled: connector.enabled,
        state: connector.state,
        daemon_running: bookkeeping.daemons_running().await? > 0,
        replica_applied: sink::replica_applied_lsn(store, &connector.replica_database)
            .await?
            .is_some(),
    };
    decide::who_cuts(facts).ok_or_else(|| BranchError::NotReadyToBranch {
        connector: connector.name.clone(),
        state: connector.state,
    })
}

/// Whether the connector's running pipeline would cut its branches now (rather than the
/// caller, copying a replica no pipeline uses), or why none can be cut.
pub async fn cut_by_pipeline(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
) -> Result<bool, BranchError> {
    Ok(ready_to_branch(bookkeeping, store, connector).await? == Cutter::Pipeline)
}

/// How a branch is to be cut.
pub(super) struct Order {
    pub cutter: Cutter,
    /// How long the pipeline may take to reach a source commit boundary.
    pub timeout: Duration,
    /// The branch's lock, held by a `branch reset` whose database is dropped already: the
    /// branch is requested again.
    pub reset: Option<BranchLock>,
}

/// Has the branch's database created; returns the source position it represents and how
/// long the pipeline stood still.
pub(super) async fn cut(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    name: &BranchName,
    Order {
        cutter,
        timeout,
        reset,
    }: Order,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(Lsn, Duration), BranchError> {
    let resetting = reset.is_some();
    let request = |state| async move {
        let requested = if resetting {
            bookkeeping.rerequest_branch(name, state).await?
        } else {
            bookkeeping
                .request_branch(name, connector.id, connector.name.as_str(), state)
                .await?
        };
        if requested {
            Ok(())
        } else {
            Err(BranchError::RequestedMeanwhile { name: name.clone() })
        }
    };
    let Cutter::Pipeline = cutter else {
        // No pipeline uses the replica: copy it from here, holding the branch's lock.
        let _lock = match reset {
            Some(lock) => lock,
            None => bookkeeping
                .try_lock_branch(name)
                .await?
                .ok_or_else(|| BranchError::BeingCut { name: name.clone() })?,
        };
        request(BranchState::Cutting).await?;
        let started = Instant::now();
        let copied = sink::copy_database(store, &connector.replica_database, name.as_str()).await;
        let took = started.elapsed();
        // The position is the copy's own: the replica may have moved since it was checked.
        let lsn = match copied {
            Ok(()) => sink::replica_applied_lsn(store, name.as_str())
                .await
                .map_err(|e| e.to_string())
                .and_then(|lsn| lsn.ok_or_else(|| "the copy has no applied position".into())),
            Err(e) => Err(e.to_string()),
        };
        bookkeeping
            .branch_cut(name, lsn.clone().map(|lsn| (lsn, took)))
            .await?;
        return match lsn {
            Ok(lsn) => Ok((lsn, took)),
            Err(reason) => {
                let _ = sink::drop_database(store, name.as_str(), true).await;
                bookkeeping.forget_branch(name).await?;
                Err(BranchError::CopyFailed {
                    name: name.clone(),
                    reason,
                })
            }
        };
    };
    request(BranchState::Requested).await?;
    drop(reset); // the pipeline may claim it now
    wait_for_cut(
        bookkeeping,
        connector,
        name,
        Instant::now() + timeout,
        timeout,
        progress,
    )
    .await
}

/// Follows a requested branch until the pipeline has copied it.
async fn wait_for_cut(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    name: &BranchName,
    deadline: Instant,
    timeout: Duration,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(Lsn, Duration), BranchError> {
    loop {
        let branch = bookkeeping
            .branch(name)
            .await?
            .ok_or_else(|| BranchError::DeletedMeanwhile { name: name.clone() })?;
        match branch.state {
            BranchState::Copied | BranchState::Ready => {
                let lsn = branch
                    .lsn
                    .ok_or_else(|| BranchError::NoLsn { name: name.clone() })?;
                return Ok((lsn, branch.pause.unwrap_or_default()));
            }
            BranchState::Failed => {
                bookkeeping.forget_branch(name).await?;
                return Err(BranchError::PipelineFailed {
                    name: name.clone(),
                    reason: branch
                        .error
                        .unwrap_or_else(|| "no reason recorded".to_owned()),
                });
            }
            BranchState::Requested if Instant::now() >= deadline => {
                if bookkeeping.withdraw_branch(name).await? {
                    return Err(BranchError::NotStarted {
                        connector: connector.name.clone(),
                        name: name.clone(),
                        timeout,
                    });
                }
            }
            // Requested, or being copied: a copy is always waited for.
            BranchState::Requested => progress(Progress::WaitingForBoundary {
                connector: connector.name.clone(),
            }),
            BranchState::Cutting => progress(Progress::Copying {
                connector: connector.name.clone(),
                branch: name.clone(),
            }),
        }
        tokio::time::sleep(CUT_POLL).await;
    }
}
