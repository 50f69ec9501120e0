//! `tributary status`: per connector, where its pipeline is and how far behind: state,
//! snapshot progress, slot lag, retained WAL, wal_status (why the source invalidated the
//! slot, with the fix, and on 17+ for how long nothing streamed from it), apply lag, last
//! error, which daemon runs it (the holder of its lease), and whether it is healthy
//! (`control/health.rs`, the one definition). Exit code 0 only when every enabled
//! connector is healthy, 1 otherwise; `--watch` runs until interrupted or its output is
//! closed.
//!
//! The apply lag is the one the daemon running the pipeline last recorded in the
//! bookkeeping (every `metrics.slot_interval_secs`), shown only while that daemon streams
//! the connector; otherwise it is unknown, and status says since when the replica has
//! held the source (which grows).

use std::io::IsTerminal as _;
use std::io::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::render::Format;
use super::tables::TablesView;
use super::Failure;
use crate::bookkeeping::Bookkeeping;
use crate::control::chain;
use crate::control::connectors::slot as source_slot;
use crate::control::connectors::tables;
use crate::control::health::{self, Slot, Verdict};
use crate::pipeline::PipelineState;

/// The contract of `status --format json`: one object per connector.
#[derive(Serialize)]
struct StatusView {
    connector: String,
    /// The pipeline's state as its daemon last recorded it (`live` says whether one runs
    /// it now).
    state: &'static str,
    /// The state as the text output shows it: qualified when it is not what happens
    /// (`streaming (no daemon)`, `streaming (retrying)`).
    shown_state: String,
    /// Whether it is healthy (`control/health.rs`); `null` for a disabled connector.
    healthy: Option<bool>,
    /// Why not, when not healthy.
    reason: Option<String>,
    /// What the operator does next (when not healthy, or the recorded one).
    next_step: Option<String>,
    /// What the state is doing: snapshot progress, streaming, the reason it is not healthy.
    phase: String,
    /// The daemon holding the connector's unexpired lease (`host:pid`); `null` when none.
    owner: Option<String>,
    /// Whether that daemon is still connected to the bookkeeping (a killed one is not).
    live: bool,
    /// The fencing token of that lease.
    lease_token: Option<i64>,
    /// Seconds until that lease expires unless renewed.
    lease_expires_in_seconds: Option<f64>,
    snapshot: SnapshotView,
    /// Its tables per state, and the replicated ones not streaming (the first by name).
    tables: TablesView,
    slot_name: String,
    wal_status: Option<&'static str>,
    slot_lag_bytes: Option<u64>,
    retained_wal_bytes: Option<u64>,
    /// How the source says it invalidated the slot (`invalidation_reason = idle_timeout`,
    /// `wal_status = lost` before 17); `null` while it is valid.
    slot_invalidation: Option<String>,
    /// What keeps that from recurring.
    slot_invalidation_advice: Option<&'static str>,
    /// For how long nobody has streamed from the slot (PostgreSQL 17+; `null` before, and
    /// while a session streams).
    slot_inactive_seconds: Option<f64>,
    /// As the daemon streaming the connector last recorded it; `null` when unknown (no
    /// live daemon streams it).
    apply_lag_seconds: Option<f64>,
    /// How old the last recorded measurement is.
    apply_lag_age_seconds: Option<f64>,
    /// The replica held every source transaction committed before this time (RFC 3339),
    /// as of the last measurement; `null` when never measured.
    replica_current_as_of: Option<String>,
    /// How long ago that is: grows while nothing is applied.
    replica_age_seconds: Option<f64>,
    /// Changes applied by the daemon's pipeline since it started, at that measurement.
    changes_applied: Option<u64>,
    /// With `--watch`: the rate between two measurements.
    #[serde(skip_serializing_if = "Option::is_none")]
    changes_per_second: Option<f64>,
    #[serde(skip)]
    measured_at: Option<f64>,
    #[serde(skip)]
    freshness: Option<health::Freshness>,
    #[serde(skip)]
    health: health::Health,
    last_error: Option<String>,
    source_error: Option<String>,
    /// The source's timeline as last recorded; `null` before the first setup.
    source_timeline: Option<u32>,
    /// The last new timeline of the source the pipeline followed (a failover or a restore
    /// that kept everything the replica applied); `null` when none.
    timeline_change: Option<TimelineChangeView>,
}

#[derive(Serialize)]
struct TimelineChangeView {
    from: u32,
    to: u32,
    /// Where the new timeline's history left the old one.
    fork_lsn: String,
    /// The server on the new timeline (`host:port`).
    server: String,
    /// When the pipeline followed it (RFC 3339).
    followed_at: String,
}

#[derive(Serialize)]
struct SnapshotView {
    tables_total: u64,
    tables_copied: u64,
    rows_copied: u64,
    bytes_copied: u64,
}

/// `status`, once or (`watch`) every `interval` until interrupted or stdout is closed
/// (`status --watch | head -1`). Once: exit 1 unless every enabled connector is healthy.
pub async fn run(
    bookkeeping: &Bookkeeping,
    format: Format,
    watch: Option<Duration>,
) -> Result<(), Failure> {
    let Some(interval) = watch else {
        let views = gather(bookkeeping).await?;
        // Nobody reading the output any more does not change the verdict.
        let _ = emit(&render(&views, format, false)?);
        let unhealthy = health::unhealthy(views.iter().map(|v| (v.connector.as_str(), &v.health)));
        return match unhealthy.as_slice() {
            [] => Ok(()),
            [one] => Err(anyhow::anyhow!("connector {one} is not healthy").into()),
            many => Err(anyhow::anyhow!(
                "{} connectors are not healthy: {}",
                many.len(),
                many.join(", ")
            )
            .into()),
        };
    };
    let mut previous: Vec<StatusView> = Vec::new();
    // Rows the last look took on the terminal.
    let mut rows = 0;
    loop {
        let mut views = gather(bookkeeping).await?;
        for view in &mut views {
            let Some(before) = previous.iter().find(|p| p.connector == view.connector) else {
                continue;
            };
            view.changes_per_second = match (
                before.measured_at,
                before.changes_applied,
                view.measured_at,
                view.changes_applied,
            ) {
                (Some(then_at), Some(then), Some(now_at), Some(now)) if now_at > then_at => {
                    Some(now.saturating_sub(then) as f64 / (now_at - then_at))
                }
                _ => before.changes_per_second,
            };
        }
        let text = if format == Format::Text && std::io::stdout().is_terminal() {
            let look = format!(
                "{} (every {} s; Ctrl-C to stop)\n{}",
                chrono::Utc::now().format("%H:%M:%S UTC"),
                interval.as_secs(),
                render(&views, format, true)?
            );
            let text = redraw(rows, &look);
            rows = look.matches('\n').count();
            text
        } else {
            render(&views, format, true)?
        };
        if let Err(e) = emit(&text) {
            // The reader has gone (`| head -1`): done, quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
        previous = views;
        tokio::time::sleep(interval).await;
    }
}

/// What `status --watch` writes to a terminal for each look: back to the first line of
/// the last look (`rows` lines up) and erase from there down, then the look, with line
/// wrapping off so that each line takes one row. What was printed above stays visible (the
/// quickstart's branch URL and psql command), where clearing the screen wiped it.
fn redraw(rows: usize, look: &str) -> String {
    let up = if rows > 0 {
        format!("\x1b[{rows}F\x1b[J")
    } else {
        String::new()
    };
    format!("{up}\x1b[?7l{look}\x1b[?7h")
}

/// Writes one look to stdout at once, telling whether anyone reads it.
fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

async fn gather(bookkeeping: &Bookkeeping) -> Result<Vec<StatusView>, Failure> {
    let mut views = Vec::new();
    let leases = bookkeeping.leases().await?;
    for c in bookkeeping.connectors().await? {
        let lease = leases.get(&c.id).filter(|l| l.is_held());
        let progress = tables::progress(&bookkeeping.tables(c.id).await?);
        let listed = TablesView::named(c.name.as_str(), &tables::list(bookkeeping, &c).await?);
        let snapshot = SnapshotView {
            tables_total: progress.total,
            tables_copied: progress.copied,
            rows_copied: progress.rows,
            bytes_copied: progress.bytes,
        };
        let (slot, source_error) = match source_slot::inspect(bookkeeping, &c).await {
            Ok(slot) => (slot, None),
            Err(e) => (None, Some(chain(&e))),
        };
        let slot_fact = match &source_error {
            Some(_) => Slot::Unknown,
            None => Slot::from_info(slot.as_ref()),
        };
        let assessment = health::assess(bookkeeping, &c, &leases, &slot_fact).await?;
        let health = &assessment.health;
        let invalidation = slot.as_ref().and_then(|s| s.invalidation());
        let lag = assessment.lag;
        let phase = match (&health.verdict, c.state) {
            (Verdict::Unhealthy(problem), _) => problem.reason.clone(),
            (Verdict::SettingUp, PipelineState::Snapshotting) => {
                let source = bookkeeping.source(&c).await?;
                let waiting = source_slot::creation_wait(&source, &c.slot_name)
                    .await
                    .unwrap_or_else(|e| {
                        Some(format!("(the source could not be asked: {})", chain(&e)))
                    });
                snapshot_phase(waiting.as_deref(), &snapshot)
            }
            (Verdict::SettingUp, PipelineState::Streaming) => {
                "a new snapshot is asked for".to_owned()
            }
            (Verdict::Disabled, _) => "disabled".to_owned(),
            (_, state) => state.to_string(),
        };
        let freshness = health.freshness;
        views.push(StatusView {
            connector: c.name.to_string(),
            state: c.state.as_str(),
            shown_state: health.shown_state.clone(),
            healthy: health.healthy(),
            reason: health.problem().map(|p| p.reason.clone()),
            next_step: health
                .problem()
                .map(|p| p.next_step.clone())
                .or_else(|| c.next_step.clone()),
            phase,
            owner: assessment.owner.name().map(str::to_owned),
            live: assessment.owner.is_live(),
            lease_token: lease.map(|l| l.token.0),
            lease_expires_in_seconds: lease.map(|l| l.expires_in),
            snapshot,
            tables: listed,
            slot_name: c.slot_name.to_string(),
            wal_status: slot.as_ref().map(|s| s.wal_status.as_str()),
            slot_lag_bytes: slot.as_ref().and_then(|s| s.lag_bytes),
            retained_wal_bytes: slot.as_ref().and_then(|s| s.retained_bytes),
            slot_invalidation: invalidation.as_ref().map(ToString::to_string),
            slot_invalidation_advice: invalidation.map(|i| i.cause.advice()),
            slot_inactive_seconds: slot.as_ref().and_then(|s| s.inactive_seconds),
            apply_lag_seconds: health.apply_lag_seconds,
            apply_lag_age_seconds: lag.map(|l| l.age_seconds),
            replica_current_as_of: freshness.map(|f| {
                f.current_as_of
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }),
            replica_age_seconds: freshness.map(|f| f.age_seconds),
            changes_applied: lag.map(|l| l.changes),
            changes_per_second: None,
            measured_at: lag.map(|l| l.measured_at),
            freshness,
            health: assessment.health.clone(),
            last_error: c.last_error.clone(),
            source_error,
            source_timeline: c.timeline,
            timeline_change: bookkeeping.last_timeline_change(c.id).await?.map(|change| {
                TimelineChangeView {
                    from: change.from,
                    to: change.to,
                    fork_lsn: change.fork.to_string(),
                    server: change.server,
                    followed_at: change
                        .followed_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                }
            }),
        });
    }
    Ok(views)
}

/// A snapshot's phase: waiting for its slot (`waiting` says why; the table list is not
/// there yet, or is the last snapshot's), listing its tables, or copying them.
fn snapshot_phase(waiting: Option<&str>, snapshot: &SnapshotView) -> String {
    match waiting {
        Some(why) => format!("waiting for the slot's consistent point: {why}"),
        None if snapshot.tables_total == 0 => "preparing: no table listed yet".to_owned(),
        None => format!(
            "copying: {} of {} tables, {} rows",
            snapshot.tables_copied, snapshot.tables_total, snapshot.rows_copied
        ),
    }
}

/// One look, as text or JSON.
fn render(views: &[StatusView], format: Format, watching: bool) -> Result<String, Failure> {
    use std::fmt::Write as _;
    if format == Format::Json {
        // One line per look when watching, each a JSON document of its own.
        let json = if watching {
            serde_json::to_string(views)?
        } else {
            serde_json::to_string_pretty(views)?
        };
        return Ok(format!("{json}\n"));
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    macro_rules! line {
        ($($arg:tt)*) => {{ let _ = writeln!(out, $($arg)*); }};
    }
    if views.is_empty() {
        line!("no connectors; create one with `tributary connector create postgresql <url>`");
        return Ok(out);
    }
    let bytes = |b: Option<u64>| {
        b.map_or_else(
            || "-".to_owned(),
            |b| bytesize::ByteSize(b).display().iec().to_string(),
        )
    };
    line!(
        "{:<20} {:<22} {:<11} {:>10} {:>12} {:>10} {:>10}  PHASE",
        "CONNECTOR",
        "STATE",
        "WAL STATUS",
        "SLOT LAG",
        "RETAINED WAL",
        "APPLY LAG",
        "CHANGES/S"
    );
    for v in views {
        let apply_lag = match (v.apply_lag_seconds, v.replica_age_seconds) {
            (Some(s), _) => format!("{s:.1} s"),
            (None, Some(_)) => "unknown".to_owned(),
            (None, None) => "-".to_owned(),
        };
        line!(
            "{:<20} {:<22} {:<11} {:>10} {:>12} {:>10} {:>10}  {}",
            v.connector,
            v.shown_state,
            v.wal_status.unwrap_or("-"),
            bytes(v.slot_lag_bytes),
            bytes(v.retained_wal_bytes),
            apply_lag,
            v.changes_per_second
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.0}")),
            v.phase
        );
        if let Some(error) = v.last_error.as_ref().filter(|e| !v.phase.contains(*e)) {
            line!("    error: {error}");
        }
        if let Some(next) = &v.next_step {
            line!("    next step: {next}");
        }
        if let Some(tables) = v.tables.line() {
            line!("    {tables}");
        }
        if let (None, Some(freshness)) = (v.apply_lag_seconds, v.freshness) {
            line!("    replica holds the source at least as of {freshness}; apply lag unknown");
        }
        if let (Some(how), Some(advice)) = (&v.slot_invalidation, v.slot_invalidation_advice) {
            line!("    slot invalidated by the source ({how}): {advice}");
        }
        if let Some(change) = &v.timeline_change {
            line!(
                "    source on timeline {} since {}: followed from timeline {} (forked at {}) \
                 on {}, a promoted standby or a restore",
                change.to,
                change.followed_at,
                change.from,
                change.fork_lsn,
                change.server
            );
        }
        if let Some(seconds) = v.slot_inactive_seconds {
            line!("    slot inactive for {seconds:.0} s: nothing streams from it");
        }
        match (&v.owner, v.live) {
            (Some(owner), true) => line!("    run by: {owner}"),
            (Some(owner), false) => {
                line!("    run by: {owner}, which is gone (its bookkeeping session ended)")
            }
            (None, _) if v.healthy.is_some() => {
                line!("    run by: no daemon (none running, or none took it yet)")
            }
            (None, _) => {}
        }
        if let Some(error) = &v.source_error {
            line!("    source not reachable: {error}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_look_replaces_the_last_one_and_nothing_above_it() {
        assert_eq!(redraw(0, "a\nb\n"), "\x1b[?7la\nb\n\x1b[?7h");
        // Up to the start of the last look's first row, erase below, no wrapping.
        assert_eq!(redraw(2, "c\n"), "\x1b[2F\x1b[J\x1b[?7lc\n\x1b[?7h");
        let look = redraw(5, "x\n");
        assert!(
            !look.contains("\x1b[2J"),
            "never the whole screen: {look:?}"
        );
    }

    #[test]
    fn a_snapshot_waiting_for_its_slot_says_so_rather_than_counting_tables() {
        let view = |total, copied| SnapshotView {
            tables_total: total,
            tables_copied: copied,
            rows_copied: 7,
            bytes_copied: 0,
        };
        assert_eq!(
            snapshot_phase(Some("1 prepared transaction is pending"), &view(0, 0)),
            "waiting for the slot's consistent point: 1 prepared transaction is pending"
        );
        // A new snapshot's slot waits while the last snapshot's list is still recorded.
        assert!(snapshot_phase(Some("why"), &view(3, 3)).starts_with("waiting"));
        assert_eq!(
            snapshot_phase(None, &view(0, 0)),
            "preparing: no table listed yet"
        );
        assert_eq!(
            snapshot_phase(None, &view(3, 1)),
            "copying: 1 of 3 tables, 7 rows"
        );
    }
}
