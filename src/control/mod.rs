//! Decisions the commands and the daemon's endpoints share, taken from facts in pure
//! functions (table-tested), so that `cli/` only gathers arguments and renders.
//!
//! - `decisions.rs`: preflight judged with the operator's replica identity decisions.
//! - `health.rs`: whether a connector is healthy, and if not why and what to do; the one
//!   definition `status`, `connector list`, `branch create` and `/readyz` use.

pub mod decisions;
pub mod health;
