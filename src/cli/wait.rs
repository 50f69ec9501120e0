//! `tributary connector wait <name> [--caught-up]`: follows a connector until it streams
//! (and, with `--caught-up`, until it has applied everything the source had written when
//! it started streaming). A progress bar on a terminal, plain lines otherwise.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::args::find;
use super::Failure;
use crate::bookkeeping::{Bookkeeping, Connector, TableSyncState};
use crate::control::connectors::slot as source_slot;
use crate::control::health;
use crate::pg::{self, ConnInfo};
use crate::pipeline::PipelineState;
use crate::source::slot;
use crate::types::Lsn;

const POLL: Duration = Duration::from_millis(500);
/// How long to wait for a daemon to appear (one started just before the command).
const DAEMON_START: Duration = Duration::from_secs(10);
/// Without a terminal, a progress line at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The connector.
    name: String,
    /// Also wait until the replica has everything the source had written when the
    /// connector started streaming.
    #[arg(long)]
    caught_up: bool,
    /// Give up after this many seconds (exit 1).
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=604_800))]
    timeout: Option<u64>,
}

/// Where the wait is, shown one way or the other.
enum Display {
    Bar(ProgressBar),
    Plain { last: Option<Instant> },
}

impl Display {
    fn new() -> Display {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:.bold} [{bar:30}] {pos}/{len} tables  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            Display::Bar(bar)
        } else {
            Display::Plain { last: None }
        }
    }

    fn show(&mut self, name: &str, done: u64, total: u64, message: &str) {
        match self {
            Display::Bar(bar) => {
                bar.set_prefix(name.to_owned());
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(message.to_owned());
            }
            Display::Plain { last } => {
                if last.is_none_or(|at| at.elapsed() >= PLAIN_EVERY) {
                    say!("{name}: {done}/{total} tables, {message}");
                    *last = Some(Instant::now());
                }
            }
        }
    }

    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

pub async fn run(args: WaitArgs, bookkeeping: &Bookkeeping) -> Result<(), Failure> {
    let connector = find(bookkeeping, &args.name).await?;
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs(s));
    wait(bookkeeping, &connector, args.caught_up, deadline).await
}

/// Until the connector streams (for `retry-setup --wait`).
pub(super) async fn until_streaming(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
) -> Result<(), Failure> {
    wait(bookkeeping, connector, false, None).await
}

async fn wait(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    caught_up: bool,
    deadline: Option<Instant>,
) -> Result<(), Failure> {
    // A daemon started a moment ago takes a few seconds to announce itself; not longer
    // than the caller's deadline.
    let give_up = Instant::now() + DAEMON_START;
    let give_up = deadline.map_or(give_up, |d| d.min(give_up));
    let mut said = false;
    while bookkeeping.daemons_running().await? == 0 && Instant::now() < give_up {
        if !std::mem::replace(&mut said, true) {
            say!(
                "waiting for a daemon (`tributary run`) to take {}…",
                connector.name
            );
        }
        tokio::time::sleep(POLL).await;
    }
    if bookkeeping.daemons_running().await? == 0 {
        return Err(anyhow!(
            "no daemon runs on this bookkeeping to set up or stream {}: start `tributary \
             run`, then wait again",
            connector.name
        )
        .into());
    }
    let mut display = Display::new();
    let result = follow(bookkeeping, connector, caught_up, deadline, &mut display).await;
    display.finish();
    result
}

async fn follow(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    caught_up: bool,
    deadline: Option<Instant>,
    display: &mut Display,
) -> Result<(), Failure> {
    let name = connector.name.as_str();
    let started = Instant::now();
    let mut target: Option<Lsn> = None;
    let source = ConnInfo::parse(&bookkeeping.source_url(connector).await?)?;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(anyhow!(
                "{name} did not get there in time; `tributary status` shows where it is"
            )
            .into());
        }
        let now = bookkeeping
            .connector_by_id(connector.id)
            .await?
            .ok_or_else(|| anyhow!("connector {name} was deleted meanwhile"))?;
        let tables = bookkeeping.tables(now.id).await?;
        let included: Vec<_> = tables.iter().filter(|t| t.decision == "include").collect();
        let copied = included
            .iter()
            .filter(|t| t.state == TableSyncState::Copied)
            .count() as u64;
        let rows: u64 = included.iter().map(|t| t.rows).sum();
        let total = included.len() as u64;
        // Streaming counts only under a live daemon that recorded it, never a leftover row.
        let leases = bookkeeping.leases().await?;
        let health = health::assess(bookkeeping, &now, &leases, &health::Slot::Unknown)
            .await?
            .health;
        match now.state {
            PipelineState::Failed => {
                return Err(anyhow!(
                    "{name} failed: {}; next step: {}",
                    now.last_error.as_deref().unwrap_or("(no error recorded)"),
                    now.next_step.as_deref().unwrap_or("see the daemon's log")
                )
                .into())
            }
            PipelineState::Streaming if health.is_current() => {
                if !caught_up {
                    say!("✓ {name} is streaming ({rows} rows in its snapshot)");
                    return Ok(());
                }
                let client = pg::connect(&source).await?;
                let target = match target {
                    Some(target) => target,
                    None => {
                        let current: String = client
                            .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
                            .await?
                            .get(0);
                        *target.insert(current.parse().map_err(|_| {
                            anyhow!("the source reported an unreadable WAL position {current}")
                        })?)
                    }
                };
                let info = slot::inspect(&client, &now.slot_name).await?;
                match info.and_then(|i| i.confirmed_flush) {
                    Some(confirmed) if confirmed >= target => {
                        say!(
                            "✓ {name} has applied everything up to {target} ({:.1} s)",
                            started.elapsed().as_secs_f64()
                        );
                        return Ok(());
                    }
                    confirmed => display.show(
                        name,
                        total,
                        total,
                        &format!(
                            "catching up to {target} (at {})",
                            confirmed.map_or_else(|| "-".to_owned(), |c| c.to_string())
                        ),
                    ),
                }
            }
            PipelineState::Snapshotting => {
                let message = match source_slot::creation_wait(&source, &now.slot_name).await {
                    Ok(Some(why)) => format!("waiting for the slot's consistent point: {why}"),
                    _ => format!("snapshotting, {rows} rows copied"),
                };
                display.show(name, copied, total, &message)
            }
            _ => display.show(
                name,
                copied,
                total,
                &format!("{}, {rows} rows copied", health.shown_state),
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}
