//! Rendering shared by several commands: the output format flag, preflight's and the
//! store check's checklists, their JSON, and the replica identity decisions. A leaf: it
//! names no other `cli` module, so that every command can use it.

use std::collections::BTreeMap;

use clap::ValueEnum;
use serde::Serialize;

use super::Failure;
use crate::bookkeeping::TableDecision;
use crate::change::TableName;
use crate::control::connectors::StoreRefusal;
use crate::pg::ConnInfo;
use crate::source::preflight::{replica_identity_full_sql, Check, Outcome, Report};

/// Check names longer than this push their value further right instead of widening the
/// whole column.
const NAME_COLUMN_MAX: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Before a command that sets a connector up: prints the failed required checks with the
/// grant script and `refused` (what was not done), and exits 1; otherwise prints the
/// warnings, if any.
pub fn require_passed(
    info: &ConnInfo,
    schemas: &[String],
    report: &Report,
    refused: &str,
) -> Result<(), Failure> {
    let blocking: Vec<_> = report.blocking_failures().collect();
    if !blocking.is_empty() {
        say!(
            "Preflight of {info}, schemas {}: {} required check{} failed\n",
            schemas.join(", "),
            blocking.len(),
            if blocking.len() == 1 { "" } else { "s" }
        );
        print_checks(blocking.iter().copied());
        print_grant_script(report, "preflight");
        say!(
            "\n✗ {refused} Fix the checks above (`tributary connector preflight` shows them \
             all) and run this again."
        );
        return Err(Failure::quiet(1));
    }
    let warnings: Vec<_> = report
        .checks
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Warn { .. }))
        .collect();
    if !warnings.is_empty() {
        say!("Preflight passed with warnings:");
        print_checks(warnings.iter().copied());
        say!();
    }
    Ok(())
}

/// The checklist lines of `checks`: a mark, the name, what was found, and the fix.
pub fn print_checks<'a>(checks: impl Iterator<Item = &'a Check> + Clone) {
    let width = checks
        .clone()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .min(NAME_COLUMN_MAX);
    for check in checks {
        let (mark, value, fix) = match &check.outcome {
            Outcome::Pass { value } => ('✓', value.clone(), None),
            Outcome::Warn { value, fix } => ('!', value.clone(), Some(fix)),
            Outcome::Fail { value, fix } => ('✗', value.clone(), Some(fix)),
            Outcome::Skip { reason } => ('-', format!("skipped: {reason}"), None),
        };
        say!("  {mark} {:<width$}  {value}", check.name);
        if let Some(fix) = fix {
            say!("      fix: {fix}");
        }
    }
}

/// The grant script with how to use it, when the report has one; `check` is the command
/// to run again after it.
pub fn print_grant_script(report: &Report, check: &str) {
    if let Some(script) = &report.grant_script {
        say!();
        say!(
            "Grant script: save it to a file, review it, run it as a superuser with psql, then \
             run {check} again."
        );
        say!();
        say!("{}", script.trim_end_matches('\n'));
    }
}

/// A branch store that cannot serve a source (`control::connectors::check_store`): the
/// failed checks with their fixes and the grant script, then `refused` (what was
/// therefore not done).
pub fn store_refused(store: &ConnInfo, refusal: StoreRefusal, refused: &str) -> Failure {
    let report = match refusal {
        StoreRefusal::Checks(report) => report,
        StoreRefusal::TooOld(e) => return anyhow::anyhow!("{e}. {refused}").into(),
        StoreRefusal::Store(e) => return e.into(),
    };
    say!("Branch store check of {store}: the branch store cannot serve tributary\n");
    let failed: Vec<&Check> = report.failures().collect();
    print_checks(failed.iter().copied());
    print_grant_script(&report, "`tributary store check`");
    say!("\n✗ {refused} Fix the checks above (`tributary store check` shows them all) and run this again.");
    Failure::quiet(1)
}

pub fn print_decisions(decisions: &[(TableName, TableDecision)]) {
    let mut by_decision: BTreeMap<&str, Vec<&TableName>> = BTreeMap::new();
    for (table, decision) in decisions {
        by_decision
            .entry(decision.as_str())
            .or_default()
            .push(table);
    }
    for decision in TableDecision::ALL {
        let Some(tables) = by_decision.get(decision.as_str()) else {
            continue;
        };
        match decision {
            TableDecision::Exclude => say!("  excluded (exclude):"),
            TableDecision::AddPk => say!(
                "  excluded until they have a primary key (add_pk); a snapshot taken after the \
                 key was added includes them:"
            ),
            TableDecision::ReplicaIdentityFull => say!(
                "  replica_identity_full: run this on the source before the snapshot starts \
                 (tributary never changes a replica identity); until then they are excluded:"
            ),
        }
        for table in tables {
            match decision {
                TableDecision::ReplicaIdentityFull => {
                    say!("    {}", replica_identity_full_sql(table))
                }
                _ => say!("    {}", table),
            }
        }
    }
}

/// The contract of `connector preflight --format json`.
#[derive(Serialize)]
pub struct ReportView<'a> {
    ok: bool,
    checks: Vec<CheckView<'a>>,
    grant_script: Option<&'a str>,
}

#[derive(Serialize)]
struct CheckView<'a> {
    name: &'a str,
    /// `pass`, `warn`, `fail` or `skip`.
    status: &'static str,
    /// What was found; for a skipped check, why it was skipped.
    value: &'a str,
    fix: Option<&'a str>,
}

pub fn view(report: &Report) -> ReportView<'_> {
    let checks = report
        .checks
        .iter()
        .map(|check| {
            let (status, value, fix) = match &check.outcome {
                Outcome::Pass { value } => ("pass", value, None),
                Outcome::Warn { value, fix } => ("warn", value, Some(fix.as_str())),
                Outcome::Fail { value, fix } => ("fail", value, Some(fix.as_str())),
                Outcome::Skip { reason } => ("skip", reason, None),
            };
            CheckView {
                name: &check.name,
                status,
                value,
                fix,
            }
        })
        .collect();
    ReportView {
        ok: report.passed(),
        checks,
        grant_script: report.grant_script.as_deref(),
    }
}
