//! Decisions and work of the commands that are more than one bookkeeping call, kept out of
//! `cli/` (which parses arguments and renders results).

pub mod branch_access;
