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
//!
//! The view grew over the supported versions: `wal_status` and `safe_wal_size` (13),
//! `conflicting` (16), `invalidation_reason` and `inactive_since` (17). [`SlotColumns`]
//! picks the ones the server has. From 16 on every invalidated slot reports `wal_status =
//! lost`, whatever the cause (18's `idle_replication_slot_timeout`, in seconds and applied
//! at a checkpoint, too: `tests/faults.rs`); only 17+ says which cause ([`Cause`]).

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

#[derive(Debug, Clone, PartialEq)]
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
    /// Whether the slot was invalidated by a conflict with recovery on a standby
    /// (PostgreSQL 16+; `None` before).
    pub conflicting: Option<bool>,
    /// Why the source invalidated the slot (PostgreSQL 17+: `wal_removed`, `rows_removed`,
    /// `wal_level_insufficient`, 18's `idle_timeout`); `None` while it is valid, and always
    /// before 17.
    pub invalidation_reason: Option<String>,
    /// For how long nobody has streamed from the slot, by the source's clock (PostgreSQL
    /// 17+'s `inactive_since`); `None` while a session streams, and always before 17.
    pub inactive_seconds: Option<f64>,
}

impl SlotInfo {
    /// Whether the slot can never stream again, and why as far as the source tells.
    pub fn invalidation(&self) -> Option<Invalidation> {
        invalidation(
            self.wal_status,
            self.conflicting,
            self.invalidation_reason.as_deref(),
        )
    }
}

/// Why a slot was invalidated: 17+ says it (`invalidation_reason`); before, `wal_status =
/// lost` means its WAL was removed (the only cause 13 to 15 know), and 16's `conflicting`
/// tells the two causes of a standby's slot from that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Past `max_slot_wal_keep_size`: the WAL it needs is gone.
    WalRemoved,
    /// A standby's slot whose catalog rows the primary's vacuum removed.
    RowsRemoved,
    /// `wal_level` below `logical` on the primary.
    WalLevelInsufficient,
    /// 18: idle for longer than `idle_replication_slot_timeout`.
    IdleTimeout,
    /// 16: `rows_removed` or `wal_level_insufficient`, which 16 does not tell apart.
    RecoveryConflict,
    /// A reason this tributary does not know (a later release's).
    Other,
}

impl Cause {
    pub const ALL: [Cause; 6] = [
        Cause::WalRemoved,
        Cause::RowsRemoved,
        Cause::WalLevelInsufficient,
        Cause::IdleTimeout,
        Cause::RecoveryConflict,
        Cause::Other,
    ];

    fn of_reason(reason: &str) -> Cause {
        match reason {
            "wal_removed" => Cause::WalRemoved,
            "rows_removed" => Cause::RowsRemoved,
            "wal_level_insufficient" => Cause::WalLevelInsufficient,
            "idle_timeout" => Cause::IdleTimeout,
            _ => Cause::Other,
        }
    }

    /// A fixed word for metrics labels: 17's reason where there is one.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::WalRemoved => "wal_removed",
            Cause::RowsRemoved => "rows_removed",
            Cause::WalLevelInsufficient => "wal_level_insufficient",
            Cause::IdleTimeout => "idle_timeout",
            Cause::RecoveryConflict => "recovery_conflict",
            Cause::Other => "other",
        }
    }

    /// What keeps a slot from being invalidated again for this cause.
    pub fn advice(self) -> &'static str {
        match self {
            Cause::WalRemoved => {
                "raise max_slot_wal_keep_size on the source (or keep the daemon running and \
                 caught up) to keep this from recurring"
            }
            Cause::IdleTimeout => {
                "raise or disable idle_replication_slot_timeout on the source, and keep a daemon \
                 running"
            }
            Cause::WalLevelInsufficient => "keep wal_level = logical on the primary",
            Cause::RowsRemoved => {
                "connect to the primary, or keep hot_standby_feedback on with a physical slot \
                 between the standby and its primary (a standby's slot conflicts with the \
                 primary's cleanup)"
            }
            Cause::RecoveryConflict => {
                "keep wal_level = logical on the primary, and connect to the primary or keep \
                 hot_standby_feedback on with a physical slot between the standby and its \
                 primary"
            }
            Cause::Other => "see the source's log for why it invalidated the slot",
        }
    }
}

/// A slot the source invalidated: it can never stream again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    pub cause: Cause,
    /// How the source says so (`invalidation_reason = wal_removed`, `wal_status = lost`):
    /// the `Display`.
    told: String,
}

impl fmt::Display for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.told)
    }
}

/// Whether the slot is invalidated, from what its server's version reports (`conflicting`:
/// 16+, `reason`: 17+; `None` where the server has no such column or the slot is valid).
/// From 16 on, every invalidated slot shows `wal_status = lost`, whatever the cause.
pub fn invalidation(
    wal_status: WalStatus,
    conflicting: Option<bool>,
    reason: Option<&str>,
) -> Option<Invalidation> {
    let (cause, told) = match (wal_status, conflicting, reason) {
        (_, _, Some(reason)) => (
            Cause::of_reason(reason),
            format!("invalidation_reason = {reason}"),
        ),
        (_, Some(true), None) => (Cause::RecoveryConflict, "conflicting = true".to_owned()),
        (WalStatus::Lost, _, None) => (Cause::WalRemoved, "wal_status = lost".to_owned()),
        _ => return None,
    };
    Some(Invalidation { cause, told })
}

/// Which of `pg_replication_slots`' columns a server has, by its `server_version_num`: the
/// one place that knows. A column the server lacks is read as NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotColumns {
    /// `wal_status` and `safe_wal_size` (13+).
    pub wal_status: bool,
    /// `conflicting` (16+).
    pub conflicting: bool,
    /// `invalidation_reason` and `inactive_since` (17+).
    pub invalidation_reason: bool,
}

impl SlotColumns {
    pub fn of(server_version_num: u32) -> SlotColumns {
        SlotColumns {
            wal_status: server_version_num >= 130_000,
            conflicting: server_version_num >= 160_000,
            invalidation_reason: server_version_num >= 170_000,
        }
    }

    /// The query for one slot (`$1`: its name), in [`SlotInfo`]'s field order.
    fn query(self) -> String {
        let pick = |has: bool, column: &str, null: &str| if has { column } else { null }.to_owned();
        let wal_status = pick(self.wal_status, "s.wal_status", "NULL::text");
        let safe_wal_size = pick(self.wal_status, "s.safe_wal_size", "NULL::int8");
        let conflicting = pick(self.conflicting, "s.conflicting", "NULL::bool");
        let reason = pick(
            self.invalidation_reason,
            "s.invalidation_reason",
            "NULL::text",
        );
        let inactive = pick(
            self.invalidation_reason,
            "extract(epoch FROM pg_catalog.now() - s.inactive_since)::float8",
            "NULL::float8",
        );
        format!(
            "SELECT coalesce({wal_status}, 'reserved'), s.active_pid, s.confirmed_flush_lsn::text,
                    pg_catalog.pg_wal_lsn_diff({SERVER_LSN}, s.confirmed_flush_lsn)::int8,
                    pg_catalog.pg_wal_lsn_diff({SERVER_LSN}, s.restart_lsn)::int8,
                    {safe_wal_size}, {conflicting}, {reason}, {inactive}
               FROM pg_catalog.pg_replication_slots s WHERE s.slot_name = $1"
        )
    }
}

/// The end of the server's WAL: written on a primary, replayed on a standby (a source from
/// PostgreSQL 16 on), where `pg_current_wal_lsn()` is an error.
pub const SERVER_LSN: &str = "CASE WHEN pg_catalog.pg_is_in_recovery() \
     THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END";

/// The slot's state, `None` when the source has no such slot.
pub async fn inspect(
    client: &Client,
    slot: &SlotName,
) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    let version: i32 = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int4",
            &[],
        )
        .await?
        .get(0);
    let columns = SlotColumns::of(u32::try_from(version).unwrap_or(0));
    let row = client
        .query_opt(&columns.query(), &[&slot.as_str()])
        .await?;
    Ok(row.map(|row| {
        let bytes = |i: usize| {
            row.get::<_, Option<i64>>(i)
                .map(|n| u64::try_from(n).unwrap_or(0))
        };
        SlotInfo {
            // NULL (no WAL reserved yet, or a server before 13) is coalesced.
            wal_status: WalStatus::parse(row.get(0)).unwrap_or(WalStatus::Reserved),
            active_pid: row.get(1),
            confirmed_flush: row
                .get::<_, Option<String>>(2)
                .and_then(|text| text.parse().ok()),
            lag_bytes: bytes(3),
            retained_bytes: bytes(4),
            safe_wal_size: row.get(5),
            conflicting: row.get(6),
            invalidation_reason: row.get(7),
            inactive_seconds: row.get(8),
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
        "it exists, but this installation never created it (made by hand, or by a copy of \
         this installation's bookkeeping)"
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
    fn each_version_reads_the_slot_columns_it_has() {
        let has = |wal_status, conflicting, invalidation_reason| SlotColumns {
            wal_status,
            conflicting,
            invalidation_reason,
        };
        let cases = [
            (120_022, has(false, false, false)),
            (130_000, has(true, false, false)),
            (150_020, has(true, false, false)),
            (160_000, has(true, true, false)),
            (170_012, has(true, true, true)),
            (180_006, has(true, true, true)),
        ];
        for (version, expected) in cases {
            assert_eq!(SlotColumns::of(version), expected, "{version}");
        }
        // A column the server lacks is read as NULL, never named.
        let query = SlotColumns::of(150_020).query();
        for absent in ["conflicting", "invalidation_reason", "inactive_since"] {
            assert!(!query.contains(&format!("s.{absent}")), "{query}");
        }
        let query = SlotColumns::of(180_006).query();
        for present in [
            "s.wal_status",
            "s.conflicting",
            "s.invalidation_reason",
            "s.inactive_since",
        ] {
            assert!(query.contains(present), "{query}");
        }
    }

    #[test]
    fn a_slot_is_invalidated_when_its_wal_is_lost_or_the_source_gives_a_reason() {
        use Cause::*;
        #[rustfmt::skip]
        let cases = [
            // (wal_status, conflicting, invalidation_reason) => (cause, as told)
            (WalStatus::Reserved, None, None, None),
            (WalStatus::Unreserved, None, None, None),
            (WalStatus::Reserved, Some(false), None, None),
            // 13 to 15: only WAL removal invalidates.
            (WalStatus::Lost, None, None, Some((WalRemoved, "wal_status = lost"))),
            // 16: a conflict with recovery, or else WAL removal.
            (WalStatus::Lost, Some(false), None, Some((WalRemoved, "wal_status = lost"))),
            (WalStatus::Lost, Some(true), None, Some((RecoveryConflict, "conflicting = true"))),
            // 17 and 18 say why.
            (WalStatus::Lost, Some(false), Some("wal_removed"),
             Some((WalRemoved, "invalidation_reason = wal_removed"))),
            (WalStatus::Lost, Some(true), Some("rows_removed"),
             Some((RowsRemoved, "invalidation_reason = rows_removed"))),
            (WalStatus::Lost, Some(true), Some("wal_level_insufficient"),
             Some((WalLevelInsufficient, "invalidation_reason = wal_level_insufficient"))),
            (WalStatus::Lost, Some(false), Some("idle_timeout"),
             Some((IdleTimeout, "invalidation_reason = idle_timeout"))),
            (WalStatus::Lost, Some(false), Some("tomorrows_reason"),
             Some((Other, "invalidation_reason = tomorrows_reason"))),
        ];
        for (status, conflicting, reason, expected) in cases {
            let found = invalidation(status, conflicting, reason);
            assert_eq!(
                found.as_ref().map(|i| (i.cause, i.to_string())),
                expected.map(|(cause, told)| (cause, told.to_owned())),
                "{status} {conflicting:?} {reason:?}"
            );
        }
        for (cause, fix) in [
            (WalRemoved, "max_slot_wal_keep_size"),
            (IdleTimeout, "idle_replication_slot_timeout"),
            (WalLevelInsufficient, "wal_level = logical"),
            (RowsRemoved, "hot_standby_feedback"),
            (RecoveryConflict, "wal_level = logical"),
            (RecoveryConflict, "hot_standby_feedback"),
        ] {
            assert!(
                cause.advice().contains(fix),
                "{cause:?}: {}",
                cause.advice()
            );
        }
        let labels: Vec<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            labels,
            [
                "wal_removed",
                "rows_removed",
                "wal_level_insufficient",
                "idle_timeout",
                "recovery_conflict",
                "other"
            ]
        );
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
