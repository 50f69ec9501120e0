//! `tributary store check`: the branch store's checklist (`control::store_check`), rendered
//! as preflight's.

use clap::Subcommand;

use super::render::{print_checks, print_grant_script, view, Format};
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
