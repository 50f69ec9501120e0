//! The states of a connector's pipeline, as persisted in the bookkeeping schema.
//!
//! ```text
//! pending ──► validating ──► snapshotting ──► streaming
//!                 │               │               │
//!                 └───────────────┴──► failed ◄───┘      (any state) ──► stopped
//! ```
//!
//! Every state is persisted, with a row in the history, by the pipeline itself; only
//! `pending` is set by whoever creates the connector (or asks for a new snapshot) and
//! `stopped` by the supervisor when the connector is disabled.
//!
//! A module of its own, not part of `pipeline`: the bookkeeping stores these states and the
//! commands judge them, and neither depends on the pipeline.
//!
//! Also the state of one of a connector's tables as operators see it ([`TableState`]): the
//! commands show it and the metrics label by it, and `metrics` names nothing above this.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipelineState {
    /// Created, never run, or reset for a new snapshot; the next run starts from scratch.
    Pending,
    /// Connecting to the source and the branch store, checking the slot.
    Validating,
    /// Copying schema and data under the slot's exported snapshot. A crash here restarts
    /// the snapshot from the beginning with a new slot.
    Snapshotting,
    /// Applying changes from the slot; restarts resume from the replica's applied LSN.
    Streaming,
    /// Stopped by an error that needs the operator; the error and the next step are
    /// recorded beside the state. Retried only when the error was transient.
    Failed,
    /// Disabled by the operator.
    Stopped,
}

impl PipelineState {
    pub const ALL: [PipelineState; 6] = [
        PipelineState::Pending,
        PipelineState::Validating,
        PipelineState::Snapshotting,
        PipelineState::Streaming,
        PipelineState::Failed,
        PipelineState::Stopped,
    ];

    /// Whether setup (validation and snapshot) is running in this state.
    pub fn is_setting_up(self) -> bool {
        matches!(
            self,
            PipelineState::Validating | PipelineState::Snapshotting
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Pending => "pending",
            PipelineState::Validating => "validating",
            PipelineState::Snapshotting => "snapshotting",
            PipelineState::Streaming => "streaming",
            PipelineState::Failed => "failed",
            PipelineState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for PipelineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pipeline state {0:?}")]
pub struct UnknownState(String);

impl FromStr for PipelineState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<PipelineState, UnknownState> {
        PipelineState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// One of a connector's tables as operators see it (`connector tables`, `status`, the
/// `tributary_tables` metric): its sync state in the bookkeeping (`TableSyncState`), or
/// `excluded` when the snapshot leaves it out (a replica identity decision, or unlogged).
/// `control::connectors::tables` tells which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableState {
    Pending,
    Copying,
    /// Copied, exact at its copy position, which the stream has not reached yet.
    Copied,
    Streaming,
    /// Streaming without a usable replica identity.
    NeedsDecision,
    /// Held out of the stream after a change of it was lost.
    Failed,
    /// Never replicated.
    Excluded,
}

impl TableState {
    pub const ALL: [TableState; 7] = [
        TableState::Pending,
        TableState::Copying,
        TableState::Copied,
        TableState::Streaming,
        TableState::NeedsDecision,
        TableState::Failed,
        TableState::Excluded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TableState::Pending => "pending",
            TableState::Copying => "copying",
            TableState::Copied => "copied",
            TableState::Streaming => "streaming",
            TableState::NeedsDecision => "needs_decision",
            TableState::Failed => "failed",
            TableState::Excluded => "excluded",
        }
    }
}

impl fmt::Display for TableState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text() {
        for state in PipelineState::ALL {
            assert_eq!(state.as_str().parse::<PipelineState>(), Ok(state));
        }
        assert!("running".parse::<PipelineState>().is_err());
    }
}
