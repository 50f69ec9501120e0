//! What the source says about a connector's replication slot (`pg_replication_slots`):
//! whether it is there, who holds it, how far behind it is and how much WAL it keeps.
//! The pipeline decides between resuming and starting over from it, and `connector list`,
//! `retry-setup` and `delete` show or act on it.

use std::fmt;

use tokio_postgres::Client;

use crate::types::{Lsn, SlotName};

/// `wal_status` (PostgreSQL 13+): how safe the WAL the slot needs is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalStatus {
    /// Within `max_wal_size`.
    Reserved,
    /// Beyond `max_wal_size`, kept for the slot (or `wal_keep_size`).
    Extended,
    /// Past `max_slot_wal_keep_size`: lost at the next checkpoint unless the slot catches up.
    Unreserved,
    /// Removed: the slot can never stream again.
    Lost,
}

impl WalStatus {
    fn parse(text: &str) -> Option<WalStatus> {
        Some(match text {
            "reserved" => WalStatus::Reserved,
            "extended" => WalStatus::Extended,
            "unreserved" => WalStatus::Unreserved,
            "lost" => WalStatus::Lost,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WalStatus::Reserved => "reserved",
            WalStatus::Extended => "extended",
            WalStatus::Unreserved => "unreserved",
            WalStatus::Lost => "lost",
        }
    }
}

impl fmt::Display for WalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub wal_status: WalStatus,
    /// The backend streaming from the slot, if one is.
    pub active_pid: Option<i32>,
    /// Up to where the consumer has confirmed changes as durable.
    pub confirmed_flush: Option<Lsn>,
    /// Bytes of WAL between the confirmed position and the source's current one.
    pub lag_bytes: Option<u64>,
    /// Bytes of WAL the slot keeps on the source's disk (from its restart LSN).
    pub retained_bytes: Option<u64>,
    /// Bytes that can still be written before the slot is invalidated; `None` without
    /// `max_slot_wal_keep_size` (negative once past it).
    pub safe_wal_size: Option<i64>,
}

/// The slot's state, `None` when the source has no such slot.
pub async fn inspect(
    client: &Client,
    slot: &SlotName,
) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT coalesce(wal_status, 'reserved'), active_pid, confirmed_flush_lsn::text,
                    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),
                                               confirmed_flush_lsn)::int8,
                    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),
                                               restart_lsn)::int8,
                    safe_wal_size
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot.as_str()],
        )
        .await?;
    Ok(row.map(|row| {
        let bytes = |i: usize| {
            row.get::<_, Option<i64>>(i)
                .map(|n| u64::try_from(n).unwrap_or(0))
        };
        SlotInfo {
            // PostgreSQL 13 to 18 know these four; NULL (no WAL reserved yet) is coalesced.
            wal_status: WalStatus::parse(row.get(0)).unwrap_or(WalStatus::Reserved),
            active_pid: row.get(1),
            confirmed_flush: row
                .get::<_, Option<String>>(2)
                .and_then(|text| text.parse().ok()),
            lag_bytes: bytes(3),
            retained_bytes: bytes(4),
            safe_wal_size: row.get(5),
        }
    }))
}
