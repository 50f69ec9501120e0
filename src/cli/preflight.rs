//! `tributary connector preflight`: runs [`crate::source::preflight`] and shows its report,
//! as a checklist for people or as one JSON object for scripts.
//!
//! The exit code is the verdict (0: every required check passed, 1: one failed), and the
//! report says everything, so nothing more goes to stderr. The URL is shown only through
//! [`ConnInfo`]'s `Display`, which masks the password.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::connector::{schema_list, Format, SourceKind};
use super::create::DecisionArgs;
use super::{Failure, DEFAULT_CONFIG};
use crate::bookkeeping::{Bookkeeping, Connector};
use crate::control::decisions;
use crate::pg::ConnInfo;
use crate::settings::Settings;
use crate::source::preflight::{
    self, Check, KnownSource, KnownSources, Outcome, Report, SourceIdentity,
};
use crate::types::{ConnectorId, InstallationId};

/// Check names longer than this push their value further right instead of widening the
/// whole column.
const NAME_COLUMN_MAX: usize = 30;

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
    let store = settings.store();
    let read = async {
        let installation = Bookkeeping::peek_installation(store).await?;
        let connectors = Bookkeeping::peek_connectors(store).await?;
        Ok::<_, crate::bookkeeping::Error>(known(installation.as_ref(), &connectors, None))
    };
    Ok(read.await.unwrap_or_else(|e| {
        KnownSources::Unavailable(format!("the branch store could not be read: {e}"))
    }))
}

/// What preflight compares the source with: `connectors` of `installation`, all but
/// `setting_up` (the one set up again, which is no duplicate of itself) as known sources.
pub(super) fn known(
    installation: Option<&InstallationId>,
    connectors: &[Connector],
    setting_up: Option<ConnectorId>,
) -> KnownSources {
    KnownSources::Known {
        installation: installation.cloned(),
        slots: connectors.iter().map(|c| c.slot_name.clone()).collect(),
        connectors: connectors
            .iter()
            .filter(|c| Some(c.id) != setting_up)
            .map(known_source)
            .collect(),
    }
}

fn known_source(connector: &Connector) -> KnownSource {
    let identity = connector
        .system_id
        .clone()
        .zip(connector.source_database.clone())
        .map(|(system_id, database)| SourceIdentity {
            system_id,
            database,
        });
    // The display URL has its password masked, which does not change where it points.
    let address = ConnInfo::parse(&connector.source_display)
        .ok()
        .map(|source| (source.target(), source.dbname));
    KnownSource {
        connector: connector.name.to_string(),
        identity,
        address,
    }
}

fn print_text(info: &ConnInfo, schemas: &[String], decisions: &DecisionArgs, report: &Report) {
    say!("Preflight of {info}, schemas {}", schemas.join(", "));
    say!();
    print_checks(report.checks.iter());
    say!();
    say!("{}", summary(schemas, decisions, report));
    print_grant_script(report, "preflight");
}

/// Before a command that sets a connector up: prints the failed required checks with the
/// grant script and `refused` (what was not done), and exits 1; otherwise prints the
/// warnings, if any.
pub(super) fn require_passed(
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
pub(super) fn print_checks<'a>(checks: impl Iterator<Item = &'a Check> + Clone) {
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
pub(super) fn print_grant_script(report: &Report, check: &str) {
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

/// The contract of `connector preflight --format json`.
#[derive(Serialize)]
pub(super) struct ReportView<'a> {
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

pub(super) fn view(report: &Report) -> ReportView<'_> {
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
