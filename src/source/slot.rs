//! What the source says about a connector's replication slot (`pg_replication_slots`):
//! whether it is there, who holds it, how far behind it is and how much WAL it keeps.
//! The pipeline decides between resuming and starting over from it, and `connector list`,
//! `retry-setup` and `delete` show or act on it.
//!
//! It also decides whether a slot named in the bookkeeping is really this installation's
//! ([`ownership`]): several installations (branch stores) may replicate one source, and
//! one must never end another's stream or drop its slot. A name carrying this
//! installation's id proves it, once the bookkeeping says the slot was created here. A
//! legacy name (`tributary_<id>_<name>`, from before installation ids) could be any
//! installation's connector `<name>` with that id, and nothing on the source records who
//! made it: it counts as ours while its confirmed position is not ahead of our replica's
//! applied one (a pipeline never confirms more than its replica applied, so a slot ahead
//! was moved by someone else), and even then a session streaming from it is never ended.

use std::fmt;

use tokio_postgres::Client;

use crate::types::{InstallationId, Lsn, SlotName, SlotOwner};

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
    /// Why the source invalidated the slot (PostgreSQL 17+: `wal_removed`, `rows_removed`,
    /// `wal_level_insufficient`, 18's `idle_timeout`); `None` while it is valid, and always
    /// on 13 to 16, where only `wal_status = lost` tells.
    pub invalidation_reason: Option<String>,
}

impl SlotInfo {
    /// Whether the slot can never stream again, and how the source says so.
    pub fn invalidation(&self) -> Option<String> {
        invalidation(self.wal_status, self.invalidation_reason.as_deref())
    }
}

/// How the source says a slot is invalidated: `wal_status = lost` on every version, and
/// from 17 on a reason, also for invalidations that leave its WAL in place (18's
/// `idle_timeout`).
pub fn invalidation(wal_status: WalStatus, reason: Option<&str>) -> Option<String> {
    match (wal_status, reason) {
        (_, Some(reason)) => Some(format!("invalidation_reason = {reason}")),
        (WalStatus::Lost, None) => Some("wal_status = lost".to_owned()),
        _ => None,
    }
}

/// What keeps a slot from being invalidated again for `reason` (`None`: before 17).
pub fn invalidation_advice(reason: Option<&str>) -> &'static str {
    match reason {
        Some("idle_timeout") => {
            "raise or disable idle_replication_slot_timeout on the source, and keep a daemon \
             running"
        }
        Some("wal_level_insufficient") => "keep wal_level = logical on the source",
        Some("rows_removed") => {
            "connect to the primary (a standby's slot conflicts with its primary's cleanup)"
        }
        _ => "raise max_slot_wal_keep_size on the source to keep this from recurring",
    }
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
                    safe_wal_size,
                    -- A column of 17+, NULL where the server has none: read through the
                    -- row as JSON, so one query serves 13 to 18.
                    pg_catalog.to_jsonb(s) ->> 'invalidation_reason'
               FROM pg_catalog.pg_replication_slots s WHERE slot_name = $1",
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
            invalidation_reason: row.get(6),
        }
    }))
}

/// Whose the existing slot named in a connector's bookkeeping is, as far as can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Named for this installation, which created it: a session streaming from it is a
    /// previous owner of the connector (of this installation) and may be ended.
    Ours,
    /// A legacy name whose position fits our replica: usable, and droppable once nobody
    /// streams from it; but a session streaming from it may be another installation's
    /// daemon and is never ended.
    Legacy,
    /// Not ours to stream from, end or drop.
    NotOurs(NotOurs),
}

/// Why a slot named in the bookkeeping is not this installation's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotOurs {
    #[error(
        "it exists, but this installation never created it (made by hand, or by a copy of          this installation's bookkeeping)"
    )]
    NeverCreated,
    #[error("its name is that of installation {0}, not this one")]
    OtherInstallation(InstallationId),
    #[error(
        "its name predates installation ids, so another tributary installation's connector \
         may own it, and it has confirmed {confirmed}, beyond this connector's replica \
         ({applied}), which this installation's pipeline never does"
    )]
    LegacyAhead { confirmed: Lsn, applied: Lsn },
    #[error(
        "its name predates installation ids, so another tributary installation's connector \
         may own it, and this connector's replica has no applied position to compare it with"
    )]
    LegacyUnverifiable,
    #[error(
        "its name predates installation ids, and source session {0} streams from it, which \
         may be another tributary installation's daemon"
    )]
    LegacyInUse(i32),
}

/// Whose the existing slot `slot` is, for the connector of `installation` whose bookkeeping
/// names it (`created`: [`crate::bookkeeping::Connector::slot_created`]) and whose replica
/// has applied up to `applied`; `confirmed` is the slot's confirmed position.
pub fn ownership(
    installation: &InstallationId,
    slot: &SlotName,
    created: bool,
    confirmed: Option<Lsn>,
    applied: Option<Lsn>,
) -> Ownership {
    if !created {
        return Ownership::NotOurs(NotOurs::NeverCreated);
    }
    match slot.owner() {
        SlotOwner::Installation(owner) if owner == *installation => Ownership::Ours,
        SlotOwner::Installation(owner) => Ownership::NotOurs(NotOurs::OtherInstallation(owner)),
        SlotOwner::Legacy | SlotOwner::Other => match (confirmed, applied) {
            (Some(confirmed), Some(applied)) if confirmed > applied => {
                Ownership::NotOurs(NotOurs::LegacyAhead { confirmed, applied })
            }
            (Some(_), Some(_)) => Ownership::Legacy,
            _ => Ownership::NotOurs(NotOurs::LegacyUnverifiable),
        },
    }
}

/// A tributary connector's slot in a source database that no connector of this
/// installation uses: it retains WAL for someone else, or for no one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranger {
    pub name: String,
    pub active: bool,
    pub whose: Whose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whose {
    /// Another installation (branch store) replicating the same database.
    Installation(InstallationId),
    /// An installation from before installation ids: another one, or this one's connector
    /// of an older version that was deleted without its slot.
    Legacy,
    /// This installation's, of a connector that no longer exists.
    Gone,
}

impl fmt::Display for Stranger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match &self.whose {
            Whose::Installation(id) => format!("installation {id}"),
            Whose::Legacy => "a tributary from before installation ids".to_owned(),
            Whose::Gone => "a deleted connector of this installation".to_owned(),
        };
        let state = if self.active { "streaming" } else { "inactive" };
        write!(f, "{} ({whose}, {state})", self.name)
    }
}

/// The persistent slots of a source database (`(name, active)`) that are tributary
/// connectors' slots but none of `ours`, this installation's (`installation`: `None` when
/// its bookkeeping predates installation ids). Probes' temporary slots are not connectors'.
pub fn strangers<'a>(
    installation: Option<&InstallationId>,
    ours: &[SlotName],
    slots: impl IntoIterator<Item = (&'a str, bool)>,
) -> Vec<Stranger> {
    slots
        .into_iter()
        .filter_map(|(name, active)| {
            let slot = SlotName::new(name).ok()?;
            if ours.contains(&slot) {
                return None;
            }
            let whose = match slot.owner() {
                SlotOwner::Installation(id) if Some(&id) == installation => Whose::Gone,
                SlotOwner::Installation(id) => Whose::Installation(id),
                SlotOwner::Legacy => Whose::Legacy,
                SlotOwner::Other => return None,
            };
            Some(Stranger {
                name: name.to_owned(),
                active,
                whose,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_invalidated_when_its_wal_is_lost_or_the_source_gives_a_reason() {
        let cases = [
            (WalStatus::Reserved, None, None),
            (WalStatus::Unreserved, None, None),
            (WalStatus::Lost, None, Some("wal_status = lost")),
            (
                WalStatus::Lost,
                Some("wal_removed"),
                Some("invalidation_reason = wal_removed"),
            ),
            // 18's idle timeout leaves the WAL reserved.
            (
                WalStatus::Reserved,
                Some("idle_timeout"),
                Some("invalidation_reason = idle_timeout"),
            ),
        ];
        for (status, reason, expected) in cases {
            assert_eq!(
                invalidation(status, reason).as_deref(),
                expected,
                "{status} {reason:?}"
            );
        }
        assert!(invalidation_advice(Some("idle_timeout")).contains("idle_replication_slot_timeout"));
        assert!(invalidation_advice(Some("wal_removed")).contains("max_slot_wal_keep_size"));
        assert!(invalidation_advice(None).contains("max_slot_wal_keep_size"));
        assert!(invalidation_advice(Some("wal_level_insufficient")).contains("wal_level"));
    }

    #[test]
    fn a_slot_is_ours_by_its_installation_or_a_legacy_position_that_fits() {
        let ours = InstallationId::new("k3x9qa7b").unwrap();
        let other = InstallationId::new("zz00aa11").unwrap();
        let lsn = |n: u64| Some(Lsn::new(n));
        let not = Ownership::NotOurs;
        #[rustfmt::skip]
        let cases = [
            // (slot, created, confirmed, applied) => ownership
            ("tributary_k3x9qa7b_1_app", true, lsn(5), lsn(9), Ownership::Ours),
            // The position does not matter for our own name (the pipeline checks it).
            ("tributary_k3x9qa7b_1_app", true, lsn(9), None, Ownership::Ours),
            ("tributary_k3x9qa7b_1_app", false, lsn(5), lsn(9), not(NotOurs::NeverCreated)),
            ("tributary_zz00aa11_1_app", true, lsn(5), lsn(9), not(NotOurs::OtherInstallation(other))),
            ("tributary_1_app", true, lsn(5), lsn(9), Ownership::Legacy),
            ("tributary_1_app", true, lsn(9), lsn(9), Ownership::Legacy),
            ("tributary_1_app", true, lsn(10), lsn(9),
             not(NotOurs::LegacyAhead { confirmed: Lsn::new(10), applied: Lsn::new(9) })),
            ("tributary_1_app", true, lsn(5), None, not(NotOurs::LegacyUnverifiable)),
            ("tributary_1_app", true, None, lsn(9), not(NotOurs::LegacyUnverifiable)),
            ("tributary_1_app", false, lsn(5), lsn(9), not(NotOurs::NeverCreated)),
        ];
        for (slot, created, confirmed, applied, expected) in cases {
            let slot = SlotName::new(slot).unwrap();
            assert_eq!(
                ownership(&ours, &slot, created, confirmed, applied),
                expected,
                "{slot} created={created} confirmed={confirmed:?} applied={applied:?}"
            );
        }
    }

    #[test]
    fn strangers_are_other_connectors_slots_named_with_their_installation() {
        let ours = InstallationId::new("k3x9qa7b").unwrap();
        let mine = [
            SlotName::new("tributary_k3x9qa7b_1_app").unwrap(),
            SlotName::new("tributary_3_old").unwrap(),
        ];
        let slots = [
            ("tributary_k3x9qa7b_1_app", true),
            ("tributary_3_old", true),
            ("tributary_k3x9qa7b_2_gone", false),
            ("tributary_zz00aa11_1_app", true),
            ("tributary_1_app", false),
            ("tributary_preflight_1_2", true),
            ("debezium", true),
            ("Not A Slot Name", false),
        ];
        let found = strangers(Some(&ours), &mine, slots);
        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "tributary_k3x9qa7b_2_gone (a deleted connector of this installation, inactive)",
                "tributary_zz00aa11_1_app (installation zz00aa11, streaming)",
                "tributary_1_app (a tributary from before installation ids, inactive)",
            ]
        );
        // A bookkeeping from before installation ids knows no slot of its own by name.
        let found = strangers(None, &[], [("tributary_k3x9qa7b_1_app", true)]);
        assert_eq!(
            found[0].whose,
            Whose::Installation(ours.clone()),
            "{found:?}"
        );
    }
}
