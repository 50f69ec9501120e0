//! The source's timeline, compared on every start of the pipeline with the one recorded.
//!
//! A source on another timeline than the recorded one (same system identifier) was
//! promoted (a standby taking over) or restored from a backup (point-in-time recovery).
//! Its history then leaves the recorded timeline at a fork point: what was written on the
//! old timeline after it is not on the new history. The replica is safe exactly when
//! everything it applied is at or before that point; then the new timeline is followed and
//! recorded. The slot itself is judged as on any start: missing (a logical slot is not in
//! a base backup, nor on a standby before PostgreSQL 17's failover slots) or ahead of the
//! replica, it stops the connector with its own next step. A promoted standby with a
//! failover slot whose replica is at or before the promotion point therefore goes on.
//! Anything else (the replica past the fork, or a history that does not come from the
//! recorded timeline, as after a restore of an older backup) is a definite error: the
//! replica holds changes the source no longer has, and only a new snapshot fixes it.

use super::error::retry_setup;
use super::PipelineError;
use crate::bookkeeping::Connector;
use crate::source::ReplicationClient;
use crate::types::Lsn;

/// What the recorded and the current timeline mean for the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The same timeline, none recorded yet, or a new snapshot to be taken (the old
    /// history no longer matters): go on.
    GoOn,
    /// The source left timeline `from` at `fork`, after everything the replica applied.
    Follow { from: u32, fork: Lsn },
    /// The replica may hold changes that are not on the source's history: `fork` is where
    /// that history left timeline `from`, `None` when it does not come from it (or was
    /// not read yet).
    Diverged { from: u32, fork: Option<Lsn> },
}

/// Decides from the recorded timeline, the current one, where the current history left
/// the recorded one (`fork`), the replica's applied position (`None`: no replica, a
/// snapshot comes) and whether a new snapshot was asked for.
pub(super) fn verdict(
    recorded: Option<u32>,
    current: u32,
    fork: Option<Lsn>,
    applied: Option<Lsn>,
    resnapshot: bool,
) -> Verdict {
    let (Some(from), Some(applied)) = (recorded, applied) else {
        return Verdict::GoOn;
    };
    if from == current || resnapshot {
        return Verdict::GoOn;
    }
    match fork {
        Some(fork) if applied <= fork => Verdict::Follow { from, fork },
        fork => Verdict::Diverged { from, fork },
    }
}

/// Where the history file of a timeline (`TIMELINE_HISTORY`: lines of `parent switchpoint
/// reason`, tab-separated) leaves timeline `from`; `None` when it does not come from it.
pub(super) fn fork_point(history: &str, from: u32) -> Option<Lsn> {
    history.lines().find_map(|line| {
        let mut fields = line.split('\t');
        let parent: u32 = fields.next()?.trim().parse().ok()?;
        let switchpoint: Lsn = fields.next()?.trim().parse().ok()?;
        (parent == from).then_some(switchpoint)
    })
}

/// Compares the source's `current` timeline with the connector's recorded one; `Ok` when
/// the pipeline may go on (the caller then records `current`), with the timeline left and
/// the fork point when it follows a new one.
pub(super) async fn check(
    repl: &mut ReplicationClient,
    connector: &Connector,
    current: u32,
    applied: Option<Lsn>,
) -> Result<Option<(u32, Lsn)>, PipelineError> {
    let decide = |fork| {
        verdict(
            connector.timeline,
            current,
            fork,
            applied,
            connector.resnapshot_requested,
        )
    };
    // The history is read only when the timelines differ and it matters.
    let verdict = match decide(None) {
        Verdict::Diverged { from, .. } if current > 1 => {
            let rows = repl
                .simple_query(&format!("TIMELINE_HISTORY {current}"))
                .await?;
            let history = rows.first().and_then(|row| row.get(1).cloned().flatten());
            decide(history.and_then(|h| fork_point(&h, from)))
        }
        verdict => verdict,
    };
    let applied = applied.unwrap_or(Lsn::ZERO);
    match verdict {
        Verdict::GoOn => Ok(None),
        Verdict::Follow { from, fork } => {
            tracing::warn!(
                server = %repl.endpoint().target(),
                "the source moved from timeline {from} to {current} at {fork} (it was promoted \
                 or restored), after everything the replica applied ({applied}): following it"
            );
            Ok(Some((from, fork)))
        }
        Verdict::Diverged { from, fork } => Err(PipelineError::definite(
            format!(
                "the source moved from timeline {from} to timeline {current} (it was promoted, \
                 or restored from a backup){}, but the replica has applied changes up to \
                 {applied}: what it applied past that point is not on the source's history, \
                 and the slot's position may not be either",
                match fork {
                    Some(fork) => format!(" and its history left timeline {from} at {fork}"),
                    None => format!(" and its history does not come from timeline {from}"),
                }
            ),
            format!(
                "if the source should not have changed, point the connector back at the \
                 original (`tributary connector update {} --url URL`); otherwise {}",
                connector.name,
                retry_setup(connector)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_timeline_is_followed_only_when_the_replica_is_on_its_history() {
        let lsn = |text: &str| text.parse::<Lsn>().unwrap();
        let fork = Some(lsn("0/3000000"));
        for (recorded, current, fork, applied, resnapshot, expected) in [
            // Same system, same timeline: go on.
            (
                Some(1),
                1,
                None,
                Some(lsn("0/5000000")),
                false,
                Verdict::GoOn,
            ),
            // Nothing recorded yet (first start).
            (None, 2, None, Some(lsn("0/5000000")), false, Verdict::GoOn),
            // No replica: a snapshot is taken from the source as it is.
            (Some(1), 2, None, None, false, Verdict::GoOn),
            // A new snapshot was asked for: the old history no longer matters.
            (
                Some(1),
                2,
                None,
                Some(lsn("0/5000000")),
                true,
                Verdict::GoOn,
            ),
            // Promoted after everything the replica applied (a failover slot): follow.
            (
                Some(1),
                2,
                fork,
                Some(lsn("0/2000000")),
                false,
                Verdict::Follow {
                    from: 1,
                    fork: lsn("0/3000000"),
                },
            ),
            (
                Some(1),
                2,
                fork,
                Some(lsn("0/3000000")),
                false,
                Verdict::Follow {
                    from: 1,
                    fork: lsn("0/3000000"),
                },
            ),
            // Same system, higher timeline, the replica past the fork: changes were lost.
            (
                Some(1),
                2,
                fork,
                Some(lsn("0/3000001")),
                false,
                Verdict::Diverged { from: 1, fork },
            ),
            // A history that does not come from the recorded timeline (an older backup
            // restored), or a lower timeline.
            (
                Some(3),
                2,
                None,
                Some(lsn("0/1000000")),
                false,
                Verdict::Diverged {
                    from: 3,
                    fork: None,
                },
            ),
        ] {
            assert_eq!(
                verdict(recorded, current, fork, applied, resnapshot),
                expected,
                "{recorded:?} → {current}, fork {fork:?}, applied {applied:?}"
            );
        }
    }

    #[test]
    fn the_fork_is_read_from_the_history_file() {
        let history = "1\t0/3000158\tno recovery target specified\n\
                       \n\
                       2\t0/5A00000\tbefore 2026-12-04 23:00:00+00\n";
        for (from, fork) in [(1, Some("0/3000158")), (2, Some("0/5A00000")), (3, None)] {
            assert_eq!(
                fork_point(history, from),
                fork.map(|f| f.parse().unwrap()),
                "{from}"
            );
        }
        assert_eq!(fork_point("garbage\n1 x\n", 1), None);
    }
}
