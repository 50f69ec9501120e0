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
use crate::bookkeeping::{Bookkeeping, Connector};
use crate::control::connectors::wait::{Follower, Look};

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
    let mut follower = Follower::new(bookkeeping, connector, caught_up).await?;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(anyhow!(
                "{name} did not get there in time; `tributary status` shows where it is"
            )
            .into());
        }
        match follower.look().await? {
            Look::Streaming(progress) => {
                say!(
                    "✓ {name} is streaming ({} rows in its snapshot)",
                    progress.rows
                );
                return Ok(());
            }
            Look::CaughtUp { target } => {
                say!(
                    "✓ {name} has applied everything up to {target} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Look::CatchingUp {
                target,
                confirmed,
                progress,
            } => display.show(
                name,
                progress.total,
                progress.total,
                &format!(
                    "catching up to {target} (at {})",
                    confirmed.map_or_else(|| "-".to_owned(), |c| c.to_string())
                ),
            ),
            Look::Snapshotting {
                progress,
                slot_wait,
            } => {
                let message = match slot_wait {
                    Some(why) => format!("waiting for the slot's consistent point: {why}"),
                    None => format!("snapshotting, {} rows copied", progress.rows),
                };
                display.show(name, progress.copied, progress.total, &message)
            }
            Look::Other {
                shown_state,
                progress,
            } => display.show(
                name,
                progress.copied,
                progress.total,
                &format!("{shown_state}, {} rows copied", progress.rows),
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}
