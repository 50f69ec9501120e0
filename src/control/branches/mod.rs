//! Branches: writable copies of a connector's replica, made, listed, reset and deleted
//! here for the CLI (which parses and renders) and the tests alike.
//!
//! ```text
//!  create / reset
//!    name checked (syntax, reserved, taken; an interrupted cut of it cleaned up)
//!    cut:  a daemon streams the connector ──► request in the bookkeeping; its pipeline
//!                                             pauses at a source commit boundary, closes
//!                                             its session, CREATE DATABASE … TEMPLATE,
//!                                             resumes (pipeline/stream.rs)
//!          no pipeline uses the replica    ──► CREATE DATABASE … TEMPLATE from here
//!    finish: drop the connector's drop-extensions, sequences from the source's current
//!            values, the branch's record in its own `tributary.branch`, the branch given
//!            to its role (control/branch_access.rs)
//!    ──► ready; a failure drops the half-made branch (and the role made for it)
//! ```
//!
//! - `decide.rs`: the decisions, pure functions from facts (table-tested).
//! - `cut.rs`: who cuts, asking the pipeline and waiting, or copying the replica here.
//! - `finish.rs`: making a copied branch ready.
//! - `manage.rs`: create, reset, delete, the URL and the list.

use std::time::Duration;

use crate::bookkeeping;
use crate::control::branch_access::AccessError;
use crate::pg::ConnectError;
use crate::sink::SinkError;
use crate::state::PipelineState;
use crate::types::{BranchName, ConnectorName, InvalidBranchName, InvalidConnectorName};

mod cut;
mod decide;
mod finish;
mod manage;

pub use cut::{cut_by_pipeline, Progress};
pub use finish::{Finished, Given, Missing};
pub use manage::{
    create, delete, list, reset, url, CreateRequest, Created, Deleted, Listed, UrlFacts,
};

#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error(transparent)]
    InvalidName(#[from] InvalidBranchName),
    #[error(transparent)]
    InvalidConnectorName(#[from] InvalidConnectorName),
    #[error(
        "{name} is reserved: it is the bookkeeping's or a system database, or a name of the \
         form <connector>_replica; choose another branch name"
    )]
    Reserved { name: BranchName },
    #[error("no connectors: create one with `tributary connector create` first")]
    NoConnectors,
    #[error(
        "several connectors and none is active: pass --connector, or choose one with \
         `tributary connector switch <name>`"
    )]
    NoneActive,
    #[error("no connector named {name}; `tributary connector list` shows them")]
    NoSuchConnector { name: ConnectorName },
    #[error(
        "branch {name} exists: `tributary branch reset {word}` re-creates it, `tributary \
         branch delete {word}` removes it",
        word = name.shell_word()
    )]
    Exists { name: BranchName },
    #[error("a database named {name} exists on the branch store already: choose another name")]
    DatabaseExists { name: BranchName },
    #[error(
        "no branch named {name}; `tributary branch list` shows them (only branches created \
         by tributary can be deleted or reset here)"
    )]
    NoSuchBranch { name: BranchName },
    #[error(
        "branch {name} is {state}, not ready: it has no URL yet; `tributary branch list` \
         shows when it is"
    )]
    NoUrlYet {
        name: BranchName,
        state: &'static str,
    },
    #[error(
        "branch {name} was cut from connector {connector}, which no longer exists: nothing \
         to reset it from (delete it instead)"
    )]
    ConnectorGone { name: BranchName, connector: String },
    #[error(
        "branch {name} is being created or reset right now; try again when `tributary branch \
         list` shows it ready"
    )]
    BeingCut { name: BranchName },
    #[error(
        "branch {name} was left unfinished by a command that ended: `tributary branch create \
         {word}` makes it anew, `tributary branch delete {word}` removes it",
        word = name.shell_word()
    )]
    Abandoned { name: BranchName },
    #[error(
        "connector {connector} is not ready to branch ({state}): a branch needs a complete \
         snapshot; wait until `tributary connector list` shows it ready"
    )]
    NotReadyToBranch {
        connector: ConnectorName,
        state: PipelineState,
    },
    #[error(
        "connector {connector} holds {} out of the stream (a change of {} was lost), so its \
         replica is not the source at one instant: `tributary connector tables {connector}` \
         says why and what to do; `tributary connector resync {connector} --table <table>` \
         copies a table again",
        tables.join(", "),
        if tables.len() == 1 { "it" } else { "each" }
    )]
    TablesHeldOut {
        connector: ConnectorName,
        tables: Vec<String>,
    },
    #[error("{stale}.{next} Or pass --allow-stale to create it anyway.")]
    Stale { stale: String, next: String },
    #[error(
        "{} client session{} connected to branch {name} (pid {}): disconnect {them} or use \
         --force to end {them}",
        pids.len(),
        if pids.len() == 1 { " is" } else { "s are" },
        pids.iter().map(i32::to_string).collect::<Vec<_>>().join(", "),
        them = if pids.len() == 1 { "it" } else { "them" },
    )]
    SessionsConnected { name: BranchName, pids: Vec<i32> },
    #[error("branch {name} was created or reset meanwhile by another command")]
    RequestedMeanwhile { name: BranchName },
    #[error("branch {name} was deleted meanwhile")]
    DeletedMeanwhile { name: BranchName },
    #[error("branch {name} was recorded without an LSN")]
    NoLsn { name: BranchName },
    #[error("could not create branch {name}: {reason}")]
    CopyFailed { name: BranchName, reason: String },
    #[error("the pipeline could not create branch {name}: {reason}")]
    PipelineFailed { name: BranchName, reason: String },
    #[error(
        "connector {connector}'s pipeline did not start cutting branch {name} within \
         {timeout:?} (a long source transaction delays the next commit boundary; is the \
         daemon running?); the request is withdrawn"
    )]
    NotStarted {
        connector: ConnectorName,
        name: BranchName,
        timeout: Duration,
    },
    #[error("branch {name} was not created: {reason}")]
    NotCreated { name: BranchName, reason: String },
    #[error("{doing} on the branch store: {message}")]
    Store {
        doing: &'static str,
        message: String,
    },
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl BranchError {
    /// A mistake in the command's arguments (exit 2) rather than a refused or failed
    /// operation (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BranchError::InvalidName(_)
                | BranchError::InvalidConnectorName(_)
                | BranchError::Reserved { .. }
                | BranchError::NoneActive
        )
    }
}

/// A query on the branch store's control database that failed while `doing`.
fn store_error(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> BranchError {
    move |e| BranchError::Store {
        doing,
        message: crate::pg::error_message(&e),
    }
}
