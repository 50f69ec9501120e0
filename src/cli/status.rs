//! `tributary status`: per connector, where its pipeline is and how far behind: state,
//! snapshot progress, slot lag, retained WAL, wal_status, apply lag, last error.
//!
//! The apply lag is the one the daemon running the pipeline last recorded in the
//! bookkeeping (every `metrics.slot_interval_secs`).

use serde::Serialize;

use super::connector::{inspect_slot, Format};
use super::Failure;
use crate::bookkeeping::{Bookkeeping, TableSyncState};

/// The contract of `status --format json`: one object per connector.
#[derive(Serialize)]
struct StatusView {
    connector: String,
    state: &'static str,
    /// What the state is doing: snapshot progress, streaming, the error.
    phase: String,
    snapshot: SnapshotView,
    slot_name: String,
    wal_status: Option<&'static str>,
    slot_lag_bytes: Option<u64>,
    retained_wal_bytes: Option<u64>,
    /// As the daemon last recorded it; `null` when no daemon has.
    apply_lag_seconds: Option<f64>,
    /// How old that measurement is.
    apply_lag_age_seconds: Option<f64>,
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

pub async fn run(bookkeeping: &Bookkeeping, format: Format) -> Result<(), Failure> {
    let mut views = Vec::new();
    for c in bookkeeping.connectors().await? {
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
        let lag = bookkeeping.apply_lag(c.id).await?;
        let phase = match c.state.as_str() {
            "snapshotting" => format!(
                "copying: {} of {} tables, {} rows",
                snapshot.tables_copied, snapshot.tables_total, snapshot.rows_copied
            ),
            "streaming" if c.last_error.is_some() => "streaming, retrying an error".to_owned(),
            "streaming" => "streaming".to_owned(),
            "failed" => "stopped by an error: see next_step".to_owned(),
            other => other.to_owned(),
        };
        views.push(StatusView {
            connector: c.name.to_string(),
            state: c.state.as_str(),
            phase,
            snapshot,
            slot_name: c.slot_name.to_string(),
            wal_status: slot.as_ref().map(|s| s.wal_status.as_str()),
            slot_lag_bytes: slot.as_ref().and_then(|s| s.lag_bytes),
            retained_wal_bytes: slot.as_ref().and_then(|s| s.retained_bytes),
            apply_lag_seconds: lag.map(|(seconds, _)| seconds),
            apply_lag_age_seconds: lag.map(|(_, age)| age),
            last_error: c.last_error.clone(),
            next_step: c.next_step.clone(),
            source_error,
        });
    }
    if format == Format::Json {
        say!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        say!("no connectors; create one with `tributary connector create postgresql <url>`");
        return Ok(());
    }
    let bytes = |b: Option<u64>| {
        b.map_or_else(
            || "-".to_owned(),
            |b| bytesize::ByteSize(b).display().iec().to_string(),
        )
    };
    say!(
        "{:<20} {:<13} {:<11} {:>10} {:>12} {:>10}  PHASE",
        "CONNECTOR",
        "STATE",
        "WAL STATUS",
        "SLOT LAG",
        "RETAINED WAL",
        "APPLY LAG"
    );
    for v in &views {
        say!(
            "{:<20} {:<13} {:<11} {:>10} {:>12} {:>10}  {}",
            v.connector,
            v.state,
            v.wal_status.unwrap_or("-"),
            bytes(v.slot_lag_bytes),
            bytes(v.retained_wal_bytes),
            v.apply_lag_seconds
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s")),
            v.phase
        );
        if let Some(error) = &v.last_error {
            say!("    error: {error}");
        }
        if let Some(next) = &v.next_step {
            say!("    next step: {next}");
        }
        if let Some(error) = &v.source_error {
            say!("    source not reachable: {error}");
        }
    }
    Ok(())
}
