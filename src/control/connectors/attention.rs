//! What needs attention in a connector, one sentence each (`connector list`'s warnings),
//! decided from facts in a pure function (which tables are not replicated is
//! `tables.rs`'s).

use bytesize::ByteSize;

use crate::bookkeeping::Connector;
use crate::pipeline::PipelineState;
use crate::source::slot::{SlotInfo, WalStatus};

/// Slot lag beyond which a connector needs attention: the daemon is down or cannot keep up.
const HIGH_LAG_BYTES: u64 = 1 << 30;

/// What the warnings are decided from.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub connector: &'a Connector,
    /// The slot as the source reports it (`None`: none there, or not asked).
    pub slot: Option<&'a SlotInfo>,
    /// Why the source could not be asked.
    pub source_error: Option<&'a str>,
    /// Tables not replicated, each with the decision why.
    pub excluded: &'a [(String, &'a str)],
}

/// What needs attention, one sentence each.
pub fn warnings(facts: &Facts<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    if !facts.connector.enabled {
        warnings.push(format!(
            "disabled: an interrupted `connector delete`? Run `tributary connector delete {}` \
             again",
            facts.connector.name
        ));
    }
    if let Some(error) = facts.source_error {
        warnings.push(format!("source not reachable: {error}"));
    }
    if facts.connector.nan_as_null {
        warnings.push(
            "NaN, Infinity and -Infinity in numeric and float columns arrive as NULL while the \
             source's wal2json predates 2.6 (accepted with --nan-as-null accept)"
                .to_owned(),
        );
    }
    match facts.slot {
        None if facts.source_error.is_none()
            && facts.connector.state == PipelineState::Streaming =>
        {
            warnings.push(format!(
                "replication slot {} is missing on the source: run `tributary connector \
                 retry-setup {}` for a new snapshot",
                facts.connector.slot_name, facts.connector.name
            ))
        }
        Some(s) => {
            let retained = s.retained_bytes.map_or_else(String::new, |b| {
                format!(" ({} retained)", ByteSize(b).display().iec())
            });
            match (s.invalidation(), s.wal_status) {
                (Some(how), _) => warnings.push(format!(
                    "slot was invalidated by the source ({how}): run `tributary connector \
                     retry-setup {}` for a new snapshot; then {}",
                    facts.connector.name,
                    how.cause.advice()
                )),
                (None, WalStatus::Extended) => warnings.push(format!(
                    "slot keeps WAL beyond max_wal_size (wal_status extended){retained}"
                )),
                (None, WalStatus::Unreserved) => warnings.push(format!(
                    "slot is past max_slot_wal_keep_size (wal_status unreserved){retained}: the \
                     source invalidates it at its next checkpoint unless it catches up"
                )),
                // A lost slot is an invalidation.
                (None, WalStatus::Reserved | WalStatus::Lost) => {}
            }
            if let Some(lag) = s.lag_bytes.filter(|&lag| lag > HIGH_LAG_BYTES) {
                warnings.push(format!(
                    "slot lag {}: is the daemon running and keeping up?",
                    ByteSize(lag).display().iec()
                ));
            }
        }
        None => {}
    }
    if !facts.excluded.is_empty() {
        let tables: Vec<String> = facts
            .excluded
            .iter()
            .map(|(table, decision)| format!("{table} ({decision})"))
            .collect();
        warnings.push(format!(
            "{} table{} not replicated: {}",
            tables.len(),
            if tables.len() == 1 { "" } else { "s" },
            tables.join(", ")
        ));
    }
    warnings
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
