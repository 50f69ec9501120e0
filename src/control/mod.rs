//! Decisions the commands and the daemon's endpoints share, taken from facts in pure
//! functions (table-tested), and the work of commands that is more than one bookkeeping
//! call, so that `cli/` only gathers arguments and renders.
//!
//! - `decisions.rs`: preflight judged with the operator's replica identity decisions.
//! - `health.rs`: whether a connector is healthy, and if not why and what to do; the one
//!   definition `status`, `connector list`, `branch create` and `/readyz` use.
//! - `branches/`: branches made, reset, deleted, listed; their decisions in `decide.rs`.
//! - `branch_access.rs`: each branch's own login role, and what it may reach.
//! - `store_check.rs`: the branch store's checklist (`tributary store check`, `create`,
//!   `run`), judged in a pure function like source preflight.
//! - `connectors/`: a connector's lifecycle (delete), with typed errors the CLI renders.
//! - `credentials.rs`: a connector's new source URL, checked to reach the same system and
//!   database before it replaces the old one.

pub mod branch_access;
pub mod branches;
pub mod connectors;
pub mod credentials;
pub mod decisions;
pub mod health;
pub mod store_check;
pub mod verify;

/// An error with its causes, `: `-separated (as `anyhow`'s `{:#}` shows it): for messages
/// that carry another error's whole story.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}
