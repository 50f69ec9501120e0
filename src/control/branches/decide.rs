//! The decisions of branch commands, from facts gathered by the callers: pure, so that
//! each is pinned by a table test here.

use crate::bookkeeping::BranchState;
use crate::state::PipelineState;

/// Whether `name` may never be a branch's: the control database, the system databases,
/// and `<connector>_replica`, reserved also for connectors created later.
pub(super) fn reserved(name: &str, control_database: &str) -> bool {
    name == control_database
        || matches!(name, "template0" | "template1" | "postgres")
        || name.ends_with("_replica")
}

/// Who cuts a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cutter {
    /// The connector's pipeline, at a source commit boundary.
    Pipeline,
    /// The command, copying a replica no pipeline uses.
    Here,
}

/// What decides who may cut a connector's branch.
#[derive(Debug, Clone, Copy)]
pub(super) struct CutFacts {
    pub enabled: bool,
    pub state: PipelineState,
    /// A daemon runs (any connector: the pipeline of this one may start any moment).
    pub daemon_running: bool,
    /// The replica has an applied position: its snapshot is complete.
    pub replica_applied: bool,
}

/// A branch needs a complete snapshot: a streaming pipeline to cut it, or a replica with
/// an applied position that no pipeline may be writing; `None` when neither.
pub(super) fn who_cuts(facts: CutFacts) -> Option<Cutter> {
    let streaming = facts.enabled && facts.state == PipelineState::Streaming;
    if streaming && facts.daemon_running {
        return Some(Cutter::Pipeline);
    }
    let pipeline_may_run = facts.enabled
        && !matches!(facts.state, PipelineState::Failed | PipelineState::Stopped)
        && facts.daemon_running;
    (facts.replica_applied && !pipeline_may_run).then_some(Cutter::Here)
}

/// Which connector a command without `--connector` means: the index of the active one,
/// else of the only one.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Choice {
    Chosen(usize),
    NoConnectors,
    NoneActive,
}

pub(super) fn default_connector(active: &[bool]) -> Choice {
    match (active.iter().position(|a| *a), active.len()) {
        (Some(i), _) => Choice::Chosen(i),
        (None, 1) => Choice::Chosen(0),
        (None, 0) => Choice::NoConnectors,
        (None, _) => Choice::NoneActive,
    }
}

/// What deleting a recorded branch takes, by its state and whether anyone holds its lock
/// (a cutter does, for as long as it cuts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeleteStep {
    /// Its database exists, or may (an interrupted cut's partial copy): drop it.
    DropDatabase,
    /// Requested, unclaimed: withdraw the request (nothing was copied).
    Withdraw,
    /// Being cut by a live holder: refuse.
    BeingCut,
    /// Its copy failed: there is no database to drop.
    Forget,
}

pub(super) fn delete_step(state: BranchState, lock_free: bool) -> DeleteStep {
    match state {
        BranchState::Copied | BranchState::Ready => DeleteStep::DropDatabase,
        BranchState::Requested => DeleteStep::Withdraw,
        // Whoever cut it died (its lock went with its session): what it left is nobody's.
        BranchState::Cutting if lock_free => DeleteStep::DropDatabase,
        BranchState::Cutting => DeleteStep::BeingCut,
        BranchState::Failed => DeleteStep::Forget,
    }
}

/// Whether a recorded branch of the name a new branch wants was left unfinished by a
/// command that died, judged by a caller holding the name's making lock (so no other
/// command is making it): not ready, and nobody cutting it (a pipeline still cutting one
/// leaves it `copied`, abandoned then). What it left is dropped and the name is free
/// again.
pub(super) fn abandoned(state: BranchState, cut_lock_free: bool) -> bool {
    state != BranchState::Ready && cut_lock_free
}

/// The value and `is_called` to `setval` a branch's sequence to, from the source's
/// `last_value` (`None` before its first `nextval`) and `start_value`.
pub(super) fn sequence_value(last_value: Option<i64>, start_value: i64) -> (i64, bool) {
    match last_value {
        Some(last) => (last, true),
        None => (start_value, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names() {
        for (name, reserved_) in [
            ("tributary", true),
            ("template0", true),
            ("template1", true),
            ("postgres", true),
            ("shop_replica", true),
            ("later_replica", true),
            ("feature-x", false),
            ("replica", false),
            ("shop_replica2", false),
        ] {
            assert_eq!(reserved(name, "tributary"), reserved_, "{name}");
        }
    }

    #[test]
    fn who_cuts_by_facts() {
        use PipelineState::*;
        let t = true;
        let f = false;
        for (enabled, state, daemon, applied, expected) in [
            (t, Streaming, t, t, Some(Cutter::Pipeline)),
            (t, Streaming, t, f, Some(Cutter::Pipeline)),
            // Streaming recorded, but no daemon: the replica stands still.
            (t, Streaming, f, t, Some(Cutter::Here)),
            (t, Streaming, f, f, None),
            // A pipeline that may resume any moment is not raced.
            (t, Snapshotting, t, t, None),
            (t, Failed, t, t, Some(Cutter::Here)),
            (t, Stopped, t, t, Some(Cutter::Here)),
            (f, Streaming, t, t, Some(Cutter::Here)),
            (f, Snapshotting, t, f, None),
            (t, Snapshotting, f, t, Some(Cutter::Here)),
        ] {
            let facts = CutFacts {
                enabled,
                state,
                daemon_running: daemon,
                replica_applied: applied,
            };
            assert_eq!(who_cuts(facts), expected, "{facts:?}");
        }
    }

    #[test]
    fn default_connector_choice() {
        for (active, expected) in [
            (&[][..], Choice::NoConnectors),
            (&[false][..], Choice::Chosen(0)),
            (&[true][..], Choice::Chosen(0)),
            (&[false, true][..], Choice::Chosen(1)),
            (&[false, false][..], Choice::NoneActive),
        ] {
            assert_eq!(default_connector(active), expected, "{active:?}");
        }
    }

    #[test]
    fn delete_steps() {
        use BranchState::*;
        for (state, lock_free, expected) in [
            (Ready, true, DeleteStep::DropDatabase),
            (Copied, false, DeleteStep::DropDatabase),
            (Requested, true, DeleteStep::Withdraw),
            (Cutting, false, DeleteStep::BeingCut),
            (Cutting, true, DeleteStep::DropDatabase),
            (Failed, true, DeleteStep::Forget),
        ] {
            assert_eq!(
                delete_step(state, lock_free),
                expected,
                "{state:?} {lock_free}"
            );
        }
    }

    #[test]
    fn abandoned_branches() {
        use BranchState::*;
        for (state, cut_lock_free, expected) in [
            (Requested, true, true),
            // A pipeline claims it right now, or cuts it: it will be `copied` for nobody.
            (Requested, false, false),
            (Cutting, true, true),
            (Cutting, false, false),
            (Copied, true, true),
            (Failed, true, true),
            (Ready, true, false),
            (Ready, false, false),
        ] {
            assert_eq!(
                abandoned(state, cut_lock_free),
                expected,
                "{state:?} {cut_lock_free}"
            );
        }
    }

    #[test]
    fn sequence_values() {
        assert_eq!(sequence_value(Some(42), 1), (42, true));
        assert_eq!(sequence_value(None, 1), (1, false));
        assert_eq!(sequence_value(None, 100), (100, false));
    }
}
