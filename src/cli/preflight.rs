//! `tributary connector preflight`: runs [`crate::source::preflight`] and shows its report,
//! as a checklist for people or as one JSON object for scripts.
//!
//! The exit code is the verdict (0: every required check passed, 1: one failed), and the
//! report says everything, so nothing more goes to stderr. The URL is shown only through
//! [`ConnInfo`]'s `Display`, which masks the password.

use std::path::{Path, PathBuf};

use clap::Args;

use super::args::{schema_list, SourceKind};
use super::decisions::DecisionArgs;
use super::render::{print_checks, print_grant_script, view, Format};
use super::{Failure, DEFAULT_CONFIG};
use crate::control::connectors::peek_known;
use crate::control::decisions;
use crate::pg::ConnInfo;
use crate::settings::Settings;
use crate::source::preflight::{self, KnownSources, Outcome, Report};

#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The kind of source; only `postgresql` exists.
    kind: SourceKind,
    /// Source URL: postgresql://user:password@host:port/dbname?sslmode=… (not stored).
    url: String,
    /// Schemas to check, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "public")]
    schemas: Vec<String>,
    /// Output: a checklist for people, or one JSON object for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    // Tables without a usable replica identity judged with these decisions, as `connector
    // create` takes them: a decided table is a warning, not a failure.
    #[command(flatten)]
    decisions: DecisionArgs,
}

pub async fn run(args: PreflightArgs, config: Option<&Path>) -> Result<(), Failure> {
    let SourceKind::Postgresql = args.kind;
    let info = ConnInfo::parse(&args.url).map_err(Failure::usage)?;
    let schemas = schema_list(args.schemas)?;
    let file = args.decisions.read_file()?;
    let known = known_sources(config).await?;
    let mut report = preflight::run(&info, &schemas, &known).await;
    // Without decision flags preflight never asks: every table without an identity fails.
    if args.decisions.given() {
        let decisions = args.decisions.decide(file, &report, &schemas, &[], "")?;
        report = decisions::judge(&report, &decisions);
    }
    match args.format {
        Format::Json => say!("{}", serde_json::to_string_pretty(&view(&report))?),
        Format::Text => print_text(&info, &schemas, &args.decisions, &report),
    }
    if report.passed() {
        Ok(())
    } else {
        Err(Failure::quiet(1))
    }
}

/// The connectors of the configured branch store, read without changing anything there.
/// Preflight works without a store: the duplicate-source check is then skipped, saying
/// why. A configuration file named with `--config` must load, though (exit 2).
async fn known_sources(config: Option<&Path>) -> Result<KnownSources, Failure> {
    let path = config.map_or_else(|| PathBuf::from(DEFAULT_CONFIG), Path::to_path_buf);
    let settings = match Settings::load(&path, config.is_some()) {
        Ok(settings) => settings,
        Err(e) if config.is_some() => return Err(Failure::usage(e)),
        Err(e) => {
            return Ok(KnownSources::Unavailable(format!(
                "no branch store configured ({e}): set store.url or TRIBUTARY__STORE__URL to \
                 look for connectors of this database"
            )))
        }
    };
    Ok(peek_known(settings.store()).await.unwrap_or_else(|e| {
        KnownSources::Unavailable(format!("the branch store could not be read: {e}"))
    }))
}

fn print_text(info: &ConnInfo, schemas: &[String], decisions: &DecisionArgs, report: &Report) {
    say!("Preflight of {info}, schemas {}", schemas.join(", "));
    say!();
    print_checks(report.checks.iter());
    say!();
    say!("{}", summary(schemas, decisions, report));
    print_grant_script(report, "preflight");
}

fn summary(schemas: &[String], decisions: &DecisionArgs, report: &Report) -> String {
    let count =
        |status: fn(&Outcome) -> bool| report.checks.iter().filter(|c| status(&c.outcome)).count();
    let failed = count(|o| matches!(o, Outcome::Fail { .. }));
    let warnings = count(|o| matches!(o, Outcome::Warn { .. }));
    let skipped = count(|o| matches!(o, Outcome::Skip { .. }));
    let mut notes = Vec::new();
    if warnings > 0 {
        notes.push(format!("{warnings} warning{}", plural(warnings)));
    }
    if skipped > 0 {
        notes.push(format!("{skipped} skipped"));
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join(", "))
    };
    if failed == 0 {
        format!(
            "✓ Preflight passed{notes}. Next: tributary connector create postgresql '<url>' \
             --name <name> --schemas {}{}",
            schemas.join(","),
            decisions.flags()
        )
    } else {
        format!(
            "✗ Preflight failed: {failed} required check{} failed{notes}. Fix them and run \
             preflight again.",
            plural(failed)
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
