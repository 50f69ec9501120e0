//! `tributary verify CONNECTOR`: the source and the replica compared at one source
//! position (`control/verify/`). Exit 0 when every table is equal, 1 when one differs or
//! the comparison could not be made, 2 for bad arguments.

use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::args::find;
use super::render::Format;
use super::Failure;
use crate::bookkeeping::Bookkeeping;
use crate::control::verify::{self, Progress, Range, Report, RowDifference, Side, VerifyRequest};
use crate::settings::Settings;
use crate::types::shell_word;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The connector.
    name: String,
    /// A table to compare: schema.name, or the name alone when no other schema has it.
    /// Repeat for several; all the connector's replicated tables when not given.
    #[arg(long = "table", value_name = "TABLE")]
    tables: Vec<String>,
    /// Sessions on each server, comparing key ranges in parallel.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// How long the pipeline may take to stand still at a source commit boundary, and the
    /// source to give a snapshot (it waits for the transactions running on it), in seconds.
    /// At most 60: replication stands still meanwhile.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    timeout: u64,
    /// Output: a table for people, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub async fn run(
    args: VerifyArgs,
    bookkeeping: &Bookkeeping,
    settings: &Settings,
) -> Result<(), Failure> {
    let connector = find(bookkeeping, &args.name).await?;
    let bar = Bar::default();
    let request = VerifyRequest {
        tables: args.tables,
        timeout: Duration::from_secs(args.timeout),
        jobs: usize::from(args.jobs),
    };
    let report = verify::verify(bookkeeping, settings.store(), &connector, request, &|p| {
        bar.show(p)
    })
    .await;
    bar.clear();
    let report = report.map_err(|e| {
        if e.is_usage() {
            Failure::usage(e)
        } else {
            e.into()
        }
    })?;
    match args.format {
        Format::Text => text(&report),
        Format::Json => say!("{}", serde_json::to_string_pretty(&view(&report))?),
    }
    if report.equal() {
        Ok(())
    } else {
        Err(Failure::quiet(1))
    }
}

/// On a terminal: a spinner while the pipeline holds and cuts, then a bar of key ranges.
#[derive(Default)]
struct Bar(OnceLock<ProgressBar>);

impl Bar {
    fn show(&self, progress: Progress) {
        if let Progress::CleanedUp(branch) = &progress {
            eprintln!("note: dropped {branch}, left by a verify that did not finish");
            return;
        }
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = self.0.get_or_init(|| {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        match progress {
            Progress::CleanedUp(_) => {}
            Progress::Holding => {
                bar.set_message("waiting for the pipeline to stand still at a commit boundary")
            }
            Progress::Snapshot { held_at } => bar.set_message(format!(
                "the pipeline stands still at {held_at}; taking a snapshot of the source"
            )),
            Progress::Cutting { at } => {
                bar.set_message(format!("the pipeline streams on to {at} and cuts there"))
            }
            Progress::Planned { tables, ranges } => {
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{bar:30}] {pos}/{len} key ranges  {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_length(ranges as u64);
                bar.set_message(format!("{tables} tables"));
            }
            Progress::Compared { done, .. } => bar.set_position(done as u64),
        }
    }

    fn clear(&self) {
        if let Some(bar) = self.0.get() {
            bar.finish_and_clear();
        }
    }
}

fn show_range(range: &Range) -> String {
    let bound = |b: &Option<Vec<String>>| match b {
        None => "…".to_owned(),
        Some(values) => format!("({})", values.join(", ")),
    };
    format!("key from {} to {}", bound(&range.from), bound(&range.to))
}

fn text(report: &Report) {
    let width = report
        .tables
        .iter()
        .map(|t| t.table.to_string().len())
        .max()
        .unwrap_or(5)
        .max(5);
    say!(
        "{:width$}  {:>14}  {:>14}  RESULT",
        "TABLE",
        "SOURCE ROWS",
        "REPLICA ROWS"
    );
    for table in &report.tables {
        let result = if table.equal() {
            "equal".to_owned()
        } else if let Some(side) = table.only_in {
            match side {
                Side::Source => "missing from the replica".to_owned(),
                Side::Replica => "in the replica only (not on the source)".to_owned(),
            }
        } else if table.rows.is_empty() {
            format!("differs in {} key ranges", table.differing_ranges.len())
        } else {
            let rows = table.rows.len() + table.more_rows;
            format!(
                "{rows} row{}",
                if rows == 1 { " differs" } else { "s differ" }
            )
        };
        say!(
            "{:width$}  {:>14}  {:>14}  {result}",
            table.table.to_string(),
            table.source_rows,
            table.replica_rows
        );
        for RowDifference { key, kind } in &table.rows {
            let label = if table.keyed { "key" } else { "row" };
            say!("    {label} {}: {}", verify::show_key(key), kind.describe());
        }
        if table.more_rows > 0 {
            say!("    … and {} more rows", table.more_rows);
        }
        // One range is the whole table: nothing to add.
        for range in table.differing_ranges.iter().filter(|_| table.ranges > 1) {
            say!("    differs in {}", show_range(range));
        }
    }
    let rows: u64 = report.tables.iter().map(|t| t.source_rows).sum();
    let at = format!(
        "at source position {} (the pipeline stood still {:.2} s), in {:.1} s",
        report.position,
        report.paused.as_secs_f64(),
        report.took.as_secs_f64()
    );
    let differing: Vec<String> = report
        .tables
        .iter()
        .filter(|t| !t.equal())
        .map(|t| t.table.to_string())
        .collect();
    if differing.is_empty() {
        say!(
            "✓ the replica equals the source: {} tables, {rows} rows, {at}",
            report.tables.len()
        );
    } else {
        say!(
            "✗ {} of {} tables differ from the source, {at}. Copy them again: `tributary \
             connector resync {} --table {}`",
            differing.len(),
            report.tables.len(),
            report.connector,
            differing
                .iter()
                .map(|t| shell_word(t))
                .collect::<Vec<_>>()
                .join(" --table ")
        );
    }
}

#[derive(Serialize)]
struct View<'a> {
    connector: &'a str,
    equal: bool,
    position: String,
    branch_lsn: String,
    paused_ms: u128,
    took_ms: u128,
    tables: Vec<TableView<'a>>,
}

#[derive(Serialize)]
struct TableView<'a> {
    table: String,
    equal: bool,
    /// `source` or `replica` for a table on one side only.
    only_in: Option<Side>,
    source_rows: u64,
    replica_rows: u64,
    key_ranges: usize,
    differing_ranges: Vec<RangeView<'a>>,
    rows: &'a [RowDifference],
    more_rows: usize,
}

#[derive(Serialize)]
struct RangeView<'a> {
    from: Option<&'a [String]>,
    to: Option<&'a [String]>,
}

fn view(report: &Report) -> View<'_> {
    View {
        connector: report.connector.as_str(),
        equal: report.equal(),
        position: report.position.to_string(),
        branch_lsn: report.branch_lsn.to_string(),
        paused_ms: report.paused.as_millis(),
        took_ms: report.took.as_millis(),
        tables: report
            .tables
            .iter()
            .map(|t| TableView {
                table: t.table.to_string(),
                equal: t.equal(),
                only_in: t.only_in,
                source_rows: t.source_rows,
                replica_rows: t.replica_rows,
                key_ranges: t.ranges,
                differing_ranges: t
                    .differing_ranges
                    .iter()
                    .map(|r| RangeView {
                        from: r.from.as_deref(),
                        to: r.to.as_deref(),
                    })
                    .collect(),
                rows: &t.rows,
                more_rows: t.more_rows,
            })
            .collect(),
    }
}
