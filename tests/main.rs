//! The integration tests: one binary (link once), every test against real PostgreSQL
//! servers with wal2json that the harness starts.

mod daemon;
mod harness;
mod harness_tests;
mod support;

mod bookkeeping;
mod branches;
mod cli;
mod connect;
mod create;
mod faults;
mod identifiers;
mod large_transaction;
mod leases;
mod lifecycle;
mod metrics;
mod pipeline;
mod preflight;
mod quickstart;
mod replication;
mod schema_changes;
mod silent_differences;
mod sink;
mod snapshot;
mod value_fidelity;
