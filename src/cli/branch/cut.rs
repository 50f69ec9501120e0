//! Cutting a branch: who cuts (the connector's pipeline when a daemon streams it, else this
//! command), asking the pipeline and waiting for its cut at a source commit boundary, or
//! copying the replica here when no pipeline uses it.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::super::Failure;
use crate::bookkeeping::{Bookkeeping, BranchLock, BranchState, Connector};
use crate::pg::ConnInfo;
use crate::pipeline::PipelineState;
use crate::sink;
use crate::types::{BranchName, Lsn};

/// How often `branch create` looks whether the pipeline has cut the branch.
const CUT_POLL: Duration = Duration::from_millis(50);

/// Who cuts: the connector's pipeline when a daemon runs it, else this command.
pub(super) enum Cutter {
    Pipeline,
    Here,
}

/// A branch needs a complete snapshot: a streaming pipeline, or a replica with an applied
/// position that no pipeline is using.
pub(super) async fn ready_to_branch(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
) -> Result<Cutter, Failure> {
    let streaming = connector.enabled && connector.state == PipelineState::Streaming;
    if streaming && bookkeeping.daemons_running().await? > 0 {
        return Ok(Cutter::Pipeline);
    }
    let pipeline_may_run = connector.enabled
        && !matches!(
            connector.state,
            PipelineState::Failed | PipelineState::Stopped
        );
    let applied = sink::replica_applied_lsn(store, &connector.replica_database).await?;
    match applied {
        Some(_) if !(pipeline_may_run && bookkeeping.daemons_running().await? > 0) => {
            Ok(Cutter::Here)
        }
        _ => Err(anyhow!(
            "connector {} is not ready to branch ({}): a branch needs a complete snapshot; \
             wait until `tributary connector list` shows it ready",
            connector.name,
            connector.state
        )
        .into()),
    }
}

/// Has the branch's database created; returns the source position it represents and how
/// long the pipeline stood still. `reset` holds the branch's lock of a `branch reset`,
/// whose database is dropped already: the branch is requested again.
pub(super) async fn cut(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    name: &BranchName,
    cutter: Cutter,
    timeout: Duration,
    reset: Option<BranchLock>,
) -> Result<(Lsn, Duration), Failure> {
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
            Err(Failure::from(anyhow!(
                "branch {name} was created or reset meanwhile by another command"
            )))
        }
    };
    let Cutter::Pipeline = cutter else {
        // No pipeline uses the replica: copy it from here, holding the branch's lock.
        let _lock = match reset {
            Some(lock) => lock,
            None => bookkeeping
                .try_lock_branch(name)
                .await?
                .ok_or_else(|| being_cut(name))?,
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
            Err(e) => {
                let _ = sink::drop_database(store, name.as_str(), true).await;
                bookkeeping.forget_branch(name).await?;
                Err(anyhow!("could not create branch {name}: {e}").into())
            }
        };
    };
    request(BranchState::Requested).await?;
    drop(reset); // the pipeline may claim it now
    let deadline = Instant::now() + timeout;
    let spinner = std::io::stderr().is_terminal().then(|| {
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(120));
        spinner
    });
    let result = wait_for_cut(
        bookkeeping,
        connector,
        name,
        deadline,
        timeout,
        spinner.as_ref(),
    )
    .await;
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    result
}

/// Follows a requested branch until the pipeline has copied it.
async fn wait_for_cut(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    name: &BranchName,
    deadline: Instant,
    timeout: Duration,
    spinner: Option<&indicatif::ProgressBar>,
) -> Result<(Lsn, Duration), Failure> {
    loop {
        let branch = bookkeeping
            .branch(name)
            .await?
            .ok_or_else(|| anyhow!("branch {name} was deleted meanwhile"))?;
        match branch.state {
            BranchState::Copied | BranchState::Ready => {
                let lsn = branch
                    .lsn
                    .ok_or_else(|| anyhow!("branch {name} was recorded without an LSN"))?;
                return Ok((lsn, branch.pause.unwrap_or_default()));
            }
            BranchState::Failed => {
                bookkeeping.forget_branch(name).await?;
                return Err(anyhow!(
                    "the pipeline could not create branch {name}: {}",
                    branch.error.as_deref().unwrap_or("no reason recorded")
                )
                .into());
            }
            BranchState::Requested if Instant::now() >= deadline => {
                if bookkeeping.withdraw_branch(name).await? {
                    return Err(anyhow!(
                        "connector {}'s pipeline did not start cutting branch {name} within \
                         {timeout:?} (a long source transaction delays the next commit \
                         boundary; is the daemon running?); the request is withdrawn",
                        connector.name
                    )
                    .into());
                }
            }
            // Requested, or being copied: a copy is always waited for.
            BranchState::Requested | BranchState::Cutting => {
                if let Some(spinner) = spinner {
                    spinner.set_message(if branch.state == BranchState::Requested {
                        format!(
                            "waiting for {}'s pipeline to reach a commit boundary",
                            connector.name
                        )
                    } else {
                        format!("copying the replica of {} into {name}", connector.name)
                    });
                }
            }
        }
        tokio::time::sleep(CUT_POLL).await;
    }
}

pub(super) fn being_cut(name: &BranchName) -> Failure {
    anyhow!(
        "branch {name} is being created or reset right now; try again when `tributary branch \
         list` shows it ready"
    )
    .into()
}
