//! `tributary store check`: the branch store's checklist (`control::store_check`), rendered
//! as preflight's.

use clap::Subcommand;

use super::connector::Format;
use super::preflight::{print_checks, print_grant_script, view};
use super::Failure;
use crate::control::store_check;
use crate::pg::ConnInfo;
use crate::source::preflight::Report;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Check that the branch store's role can do what tributary does there: log in, create
    /// databases, set session_replication_role, own the bookkeeping schema, create branch
    /// roles; the server's version, free disk and how branches copy. Exit 0 when every
    /// required check passes, 1 otherwise; prints a grant script for what grants fix.
    Check {
        /// Output: a checklist for people, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

pub async fn run(command: StoreCommand, store: &ConnInfo) -> Result<(), Failure> {
    let StoreCommand::Check { format } = command;
    let report = store_check::check(store, &[]).await;
    match format {
        Format::Json => say!("{}", serde_json::to_string_pretty(&view(&report))?),
        Format::Text => {
            say!("Branch store check of {store}");
            say!();
            print_checks(report.checks.iter());
            say!();
            say!("{}", summary(&report));
            print_grant_script(&report, "`tributary store check`");
        }
    }
    if report.passed() {
        Ok(())
    } else {
        Err(Failure::quiet(1))
    }
}

fn summary(report: &Report) -> String {
    let failed = report.failures().count();
    if failed == 0 {
        "✓ The branch store can serve tributary.".to_owned()
    } else {
        format!(
            "✗ {failed} required check{} failed: fix {} and run `tributary store check` again.",
            if failed == 1 { "" } else { "s" },
            if failed == 1 { "it" } else { "them" }
        )
    }
}

/// Before a connector is created, and at daemon start: the failed checks with their fixes
/// and the grant script, then `refused`; `Err` when one failed.
pub(super) async fn require(
    store: &ConnInfo,
    sources: &[(String, u32)],
    refused: &str,
) -> Result<(), Failure> {
    let report = store_check::check(store, sources).await;
    let failed: Vec<_> = report.failures().collect();
    if failed.is_empty() {
        return Ok(());
    }
    say!("Branch store check of {store}: the branch store cannot serve tributary\n");
    print_checks(failed.iter().copied());
    print_grant_script(&report, "`tributary store check`");
    say!("\n✗ {refused} Fix the checks above (`tributary store check` shows them all) and run this again.");
    Err(Failure::quiet(1))
}
