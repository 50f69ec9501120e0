//! `tributary status`: per connector, where its pipeline is and how far behind: state,
//! snapshot progress, slot lag, retained WAL, wal_status (why the source invalidated the
//! slot, with the fix, and on 17+ for how long nothing streamed from it), apply lag, last
//! error, and which daemon runs it (the holder of its lease).
//!
//! The apply lag is the one the daemon running the pipeline last recorded in the
//! bookkeeping (every `metrics.slot_interval_secs`).

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use serde::Serialize;

use super::connector::{inspect_slot, Format, SOURCE_TIMEOUT};
use super::Failure;
use crate::bookkeeping::{Bookkeeping, TableSyncState};
use crate::pg::{self, ConnInfo};
use crate::source::{prepared, slot};
use crate::types::SlotName;

/// The contract of `status --format json`: one object per connector.
#[derive(Serialize)]
struct StatusView {
    connector: String,
    state: &'static str,
    /// What the state is doing: snapshot progress, streaming, the error.
    phase: String,
    /// The daemon running the connector (`host:pid`, the holder of its lease); `null`
    /// when none does.
    owner: Option<String>,
    /// The fencing token of that lease.
    lease_token: Option<i64>,
    /// Seconds until that lease expires unless renewed.
    lease_expires_in_seconds: Option<f64>,
    snapshot: SnapshotView,
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
    /// As the daemon last recorded it; `null` when no daemon has.
    apply_lag_seconds: Option<f64>,
    /// How old that measurement is.
    apply_lag_age_seconds: Option<f64>,
    /// Changes applied by the daemon's pipeline since it started, at that measurement.
    changes_applied: Option<u64>,
    /// With `--watch`: the rate between two measurements.
    #[serde(skip_serializing_if = "Option::is_none")]
    changes_per_second: Option<f64>,
    #[serde(skip)]
    measured_at: Option<f64>,
    last_error: Option<String>,
    next_step: Option<String>,
    source_error: Option<String>,
}

#[derive(Serialize)]
struct SnapshotView {
    tables_total: usize,
    tables_copied: usize,
    rows_copied: u64,
    bytes_copied: u64,
}

/// `status`, once or (`watch`) every `interval` until interrupted.
pub async fn run(
    bookkeeping: &Bookkeeping,
    format: Format,
    watch: Option<Duration>,
) -> Result<(), Failure> {
    let Some(interval) = watch else {
        return print(&gather(bookkeeping).await?, format, false);
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
        if format == Format::Text && std::io::stdout().is_terminal() {
            let look = format!(
                "{} (every {} s; Ctrl-C to stop)\n{}",
                chrono::Utc::now().format("%H:%M:%S UTC"),
                interval.as_secs(),
                render(&views)
            );
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "{}", redraw(rows, &look));
            let _ = stdout.flush();
            rows = look.matches('\n').count();
        } else {
            print(&views, format, true)?;
        }
        previous = views;
        tokio::time::sleep(interval).await;
    }
}

async fn gather(bookkeeping: &Bookkeeping) -> Result<Vec<StatusView>, Failure> {
    let mut views = Vec::new();
    let leases = bookkeeping.leases().await?;
    for c in bookkeeping.connectors().await? {
        let lease = leases.get(&c.id).filter(|l| l.is_held());
        let tables = bookkeeping.tables(c.id).await?;
        let included: Vec<_> = tables.iter().filter(|t| t.decision == "include").collect();
        let snapshot = SnapshotView {
            tables_total: included.len(),
            tables_copied: included
                .iter()
                .filter(|t| t.state == TableSyncState::Copied)
                .count(),
            rows_copied: included.iter().map(|t| t.rows).sum(),
            bytes_copied: included.iter().map(|t| t.bytes).sum(),
        };
        let (slot, source_error) = match inspect_slot(bookkeeping, &c).await {
            Ok(slot) => (slot, None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let invalidation = slot.as_ref().and_then(|s| s.invalidation());
        let lag = bookkeeping.apply_lag(c.id).await?;
        let phase = match c.state.as_str() {
            "snapshotting" => {
                let source = ConnInfo::parse(&bookkeeping.source_url(&c).await?)?;
                let waiting = slot_wait(&source, &c.slot_name)
                    .await
                    .unwrap_or_else(|e| Some(format!("(the source could not be asked: {e:#})")));
                snapshot_phase(waiting.as_deref(), &snapshot)
            }
            "streaming" if c.last_error.is_some() => "streaming, retrying an error".to_owned(),
            "streaming" => "streaming".to_owned(),
            "failed" => "stopped by an error: see next_step".to_owned(),
            other => other.to_owned(),
        };
        views.push(StatusView {
            connector: c.name.to_string(),
            state: c.state.as_str(),
            phase,
            owner: lease.map(|l| l.owner.clone()),
            lease_token: lease.map(|l| l.token.0),
            lease_expires_in_seconds: lease.map(|l| l.expires_in),
            snapshot,
            slot_name: c.slot_name.to_string(),
            wal_status: slot.as_ref().map(|s| s.wal_status.as_str()),
            slot_lag_bytes: slot.as_ref().and_then(|s| s.lag_bytes),
            retained_wal_bytes: slot.as_ref().and_then(|s| s.retained_bytes),
            slot_invalidation: invalidation.as_ref().map(ToString::to_string),
            slot_invalidation_advice: invalidation.map(|i| i.cause.advice()),
            slot_inactive_seconds: slot.as_ref().and_then(|s| s.inactive_seconds),
            apply_lag_seconds: lag.map(|l| l.seconds),
            apply_lag_age_seconds: lag.map(|l| l.age_seconds),
            changes_applied: lag.map(|l| l.changes),
            changes_per_second: None,
            measured_at: lag.map(|l| l.measured_at),
            last_error: c.last_error.clone(),
            next_step: c.next_step.clone(),
            source_error,
        });
    }
    Ok(views)
}

/// What a new slot waits for while it is being created: `Some` when the connector's slot
/// exists without a confirmed position yet (no consistent point), else `None`.
pub(super) async fn slot_wait(
    source: &ConnInfo,
    slot_name: &SlotName,
) -> anyhow::Result<Option<String>> {
    tokio::time::timeout(SOURCE_TIMEOUT, async {
        let client = pg::connect(source).await?;
        let creating = slot::inspect(&client, slot_name)
            .await?
            .is_some_and(|s| s.confirmed_flush.is_none());
        if !creating {
            return Ok(None);
        }
        let pending = prepared::pending(&client).await?;
        Ok(Some(prepared::slot_wait_reason(&pending)))
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {SOURCE_TIMEOUT:?}"))?
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

fn print(views: &[StatusView], format: Format, watching: bool) -> Result<(), Failure> {
    if format == Format::Json {
        // One line per look when watching, each a JSON document of its own.
        let json = if watching {
            serde_json::to_string(views)?
        } else {
            serde_json::to_string_pretty(views)?
        };
        say!("{json}");
        return Ok(());
    }
    say!("{}", render(views).trim_end_matches('\n'));
    Ok(())
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

/// The text view: a table, a line per connector and its details below it.
fn render(views: &[StatusView]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // Writing to a String cannot fail.
    macro_rules! put {
        ($($arg:tt)*) => {{
            let _ = writeln!(out, $($arg)*);
        }};
    }
    if views.is_empty() {
        put!("no connectors; create one with `tributary connector create postgresql <url>`");
        return out;
    }
    let bytes = |b: Option<u64>| {
        b.map_or_else(
            || "-".to_owned(),
            |b| bytesize::ByteSize(b).display().iec().to_string(),
        )
    };
    put!(
        "{:<20} {:<13} {:<11} {:>10} {:>12} {:>10} {:>10}  PHASE",
        "CONNECTOR",
        "STATE",
        "WAL STATUS",
        "SLOT LAG",
        "RETAINED WAL",
        "APPLY LAG",
        "CHANGES/S"
    );
    for v in views {
        put!(
            "{:<20} {:<13} {:<11} {:>10} {:>12} {:>10} {:>10}  {}",
            v.connector,
            v.state,
            v.wal_status.unwrap_or("-"),
            bytes(v.slot_lag_bytes),
            bytes(v.retained_wal_bytes),
            v.apply_lag_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s")),
            v.changes_per_second
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.0}")),
            v.phase
        );
        if let Some(error) = &v.last_error {
            put!("    error: {error}");
        }
        if let Some(next) = &v.next_step {
            put!("    next step: {next}");
        }
        if let (Some(how), Some(advice)) = (&v.slot_invalidation, v.slot_invalidation_advice) {
            put!("    slot invalidated by the source ({how}): {advice}");
        }
        if let Some(seconds) = v.slot_inactive_seconds {
            put!("    slot inactive for {seconds:.0} s: nothing streams from it");
        }
        match &v.owner {
            Some(owner) => put!("    run by: {owner}"),
            None if v.state != "stopped" => {
                put!("    run by: no daemon (none running, or none took it yet)")
            }
            None => {}
        }
        if let Some(error) = &v.source_error {
            put!("    source not reachable: {error}");
        }
    }
    out
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
