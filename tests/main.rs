//! The integration tests: one binary (link once), every test against real PostgreSQL
//! servers with wal2json that the harness starts.

mod daemon;
mod harness;
mod harness_tests;
mod support;

mod alert_rules;
mod bookkeeping;
mod branch_roles;
mod branches;
mod cli;
mod connect;
mod conninfo;
mod crash_points;
mod create;
mod credentials;
mod faults;
mod health;
mod identifiers;
mod installations;
mod large_transaction;
mod leases;
mod lifecycle;
mod materialized_views;
mod metrics;
mod metrics_export;
mod nan;
mod operator_details;
mod pipeline;
mod preflight;
mod quickstart;
mod replication;
mod resumable_snapshot;
mod retry_policy;
mod schema_changes;
mod secrets;
mod silent_differences;
mod sink;
mod snapshot;
mod snapshot_fidelity;
mod source_users;
mod store;
mod timeline;
mod triggers;
mod value_fidelity;
mod versions;
