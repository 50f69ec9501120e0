//! The connector's replication slot at setup: whose it is (`source::slot::ownership`),
//! taking it over from a previous owner of this installation, and what a new snapshot does
//! with the one found.
//!
//! Never ended or dropped: a slot this installation did not create (an error), and a
//! session streaming from a slot whose name predates installation ids (it may be another
//! installation's daemon: waited for, as a transient error). A new snapshot of a connector
//! whose slot has such a legacy name moves it to a name carrying the installation; the old
//! slot is dropped only when its position proves it ours, else kept and reported.

use std::time::Duration;

use crate::bookkeeping::Connector;
use crate::pg::{self, PgClient};
use crate::pipeline::PipelineError;
use crate::source::catalog::CatalogError;
use crate::source::slot::{self, NotOurs, Ownership, SlotInfo};
use crate::types::{InstallationId, Lsn, SlotName, SlotOwner};

/// How long a terminated walsender may take to let go of the slot.
const SLOT_RELEASE: Duration = Duration::from_secs(10);

/// The slot the connector's bookkeeping names, as found on the source.
#[derive(Debug)]
pub(super) struct Found {
    pub info: SlotInfo,
    pub ownership: Ownership,
}

impl Found {
    /// Before streaming from it: a session still streaming from a legacy-named slot (not
    /// ended: it may be another installation's daemon) is waited for.
    pub fn wait_for_holder(&self, slot: &SlotName) -> Result<(), PipelineError> {
        match (self.info.active_pid, &self.ownership) {
            (Some(pid), Ownership::Legacy) => Err(PipelineError::SlotBusy {
                slot: slot.clone(),
                pid,
            }),
            _ => Ok(()),
        }
    }
}

/// Reads the connector's slot and judges whose it is (`applied`: the replica's applied
/// position). A session streaming from it is ended when the slot is this installation's
/// (that session belongs to a previous owner of the connector: see [`take_over`]); any
/// other slot is left as it is, for the caller to use, wait for, refuse or keep.
pub(super) async fn inspect(
    source: &PgClient,
    installation: &InstallationId,
    connector: &Connector,
    applied: Option<Lsn>,
) -> Result<Option<Found>, PipelineError> {
    let slot = &connector.slot_name;
    let Some(info) = read_slot(source, slot).await? else {
        return Ok(None);
    };
    let ownership = slot::ownership(
        installation,
        slot,
        connector.slot_created,
        info.confirmed_flush,
        applied,
    );
    if let (Some(pid), Ownership::Ours) = (info.active_pid, &ownership) {
        take_over(source, slot, pid).await?;
    }
    Ok(Some(Found { info, ownership }))
}

/// What a new snapshot does with the slot found under the connector's current name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Leftover {
    /// Nothing there.
    None,
    /// Ours: dropped before the new slot is created.
    Drop,
    /// Not ours, and the new slot has another name: left alone (and reported).
    Keep(NotOurs),
}

/// The slot a new snapshot of the connector creates: its current name when that carries
/// this installation, else (a legacy name) the name a connector created now gets.
pub(super) fn new_slot_name(installation: &InstallationId, connector: &Connector) -> SlotName {
    match connector.slot_name.owner() {
        SlotOwner::Installation(owner) if owner == *installation => connector.slot_name.clone(),
        _ => connector.name.slot_name(installation, connector.id),
    }
}

/// Decides what a new snapshot creating slot `new` does with `found`, the slot named
/// `current` in the bookkeeping; `Err` when a slot that is not ours stands where the new
/// one must go.
pub(super) fn leftover(
    current: &SlotName,
    new: &SlotName,
    found: Option<&Found>,
) -> Result<Leftover, NotOurs> {
    let Some(found) = found else {
        return Ok(Leftover::None);
    };
    let why = match (&found.ownership, found.info.active_pid) {
        // A session that streams from our slot has been ended already.
        (Ownership::Ours, _) | (Ownership::Legacy, None) => return Ok(Leftover::Drop),
        (Ownership::Legacy, Some(pid)) => NotOurs::LegacyInUse(pid),
        (Ownership::NotOurs(why), _) => why.clone(),
    };
    if current == new {
        Err(why)
    } else {
        Ok(Leftover::Keep(why))
    }
}

/// The error for a slot the connector's bookkeeping names that is not this installation's.
pub(super) fn not_ours(connector: &Connector, why: &NotOurs) -> PipelineError {
    let slot = &connector.slot_name;
    let resnapshot = format!(
        "tributary connector retry-setup {} --resnapshot",
        connector.name
    );
    // A legacy name is left for a name of this installation at the next snapshot.
    let next_step = if connector.slot_name.owner() == SlotOwner::Legacy {
        format!(
            "run `{resnapshot}`: the connector takes a new snapshot under a slot named for this \
             installation, and {slot} is left to whoever uses it (pg_stat_replication on the \
             source shows who; if nothing does, drop it there, since it retains WAL: SELECT \
             pg_drop_replication_slot('{slot}');)"
        )
    } else {
        format!(
            "find out who uses it (pg_replication_slots, pg_stat_replication on the source); if \
             nothing needs it, drop it there (SELECT pg_drop_replication_slot('{slot}');), then \
             run `{resnapshot}`"
        )
    };
    PipelineError::definite(
        format!("replication slot {slot} on the source is not this installation's: {why}; it is left alone"),
        next_step,
    )
}

/// Ends the session `pid` streaming from this installation's slot: this daemon holds the
/// connector's lease, so that session belongs to a previous owner that is paused or cut
/// off (the source would keep it until `wal_sender_timeout`), and the slot cannot be
/// used or dropped while it is active. The previous owner cannot commit anything anyway:
/// the replica is fenced against its token.
async fn take_over(source: &PgClient, slot: &SlotName, pid: i32) -> Result<(), PipelineError> {
    tracing::warn!(%slot, pid, "the slot is in use by another session (a previous owner of this connector): terminating it");
    if let Err(e) = source
        .execute("SELECT pg_catalog.pg_terminate_backend($1)", &[&pid])
        .await
    {
        // Another role's session: the slot stays busy, and START_REPLICATION says so.
        tracing::warn!(%slot, pid, "could not terminate it: {}", pg::error_message(&e));
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + SLOT_RELEASE;
    while read_slot(source, slot)
        .await?
        .is_some_and(|info| info.active_pid.is_some())
    {
        if tokio::time::Instant::now() > deadline {
            // The server's "slot is active" error at START_REPLICATION says the rest.
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub(super) async fn read_slot(
    source: &PgClient,
    slot: &SlotName,
) -> Result<Option<SlotInfo>, CatalogError> {
    slot::inspect(source, slot)
        .await
        .map_err(|source| CatalogError::Query {
            what: "the replication slot",
            source,
        })
}

/// Why a slot the replica streamed from may be missing, and how to keep it next time:
/// from the source's major version and, when this run found the source on a new timeline,
/// the timelines (`from`, `to`).
pub(super) fn missing_slot_cause(server_major: u32, moved: Option<(u32, u32)>) -> String {
    let event = match moved {
        Some((from, to)) => format!(
            "the source moved from timeline {from} to {to}: it is a promoted standby or a \
             restored backup, and "
        ),
        None => "if the source failed over to a standby or was restored from a backup, ".to_owned(),
    };
    if server_major < 17 {
        format!(
            "{event}PostgreSQL {server_major} does not carry logical slots to a standby or \
             into a backup, so a failover always costs a new snapshot (PostgreSQL 17 \
             synchronizes failover slots to standbys); otherwise someone dropped the slot"
        )
    } else {
        format!(
            "{event}the server it became had no synchronized copy of the slot: a standby \
             keeps one only with sync_replication_slots = on, hot_standby_feedback = on, \
             primary_slot_name set and a dbname in primary_conninfo, and only once it has \
             synchronized the slot (tributary creates slots with the failover property from \
             PostgreSQL 17 on; `tributary connector preflight` checks the standbys); \
             otherwise someone dropped the slot"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::slot::WalStatus;

    #[test]
    fn a_missing_slot_is_explained_by_what_the_version_keeps_across_a_failover() {
        for (major, moved, expected, not_expected) in [
            (
                16,
                Some((1, 2)),
                "moved from timeline 1 to 2",
                "sync_replication_slots",
            ),
            (
                16,
                None,
                "PostgreSQL 16 does not carry logical slots",
                "moved from",
            ),
            (
                17,
                Some((3, 4)),
                "sync_replication_slots = on",
                "does not carry",
            ),
            (18, None, "if the source failed over", "moved from"),
        ] {
            let cause = missing_slot_cause(major, moved);
            assert!(cause.contains(expected), "{major} {moved:?}: {cause}");
            assert!(!cause.contains(not_expected), "{major} {moved:?}: {cause}");
            assert!(
                cause.ends_with("otherwise someone dropped the slot"),
                "{cause}"
            );
        }
    }

    #[test]
    fn a_new_snapshot_drops_only_our_slot_and_never_takes_a_name_that_is_not_ours() {
        let name = |s: &str| SlotName::new(s).unwrap();
        let ours = name("tributary_k3x9qa7b_1_app");
        let legacy = name("tributary_1_app");
        let found = |ownership: Ownership, active_pid: Option<i32>| Found {
            info: SlotInfo {
                wal_status: WalStatus::Reserved,
                active_pid,
                confirmed_flush: Some(Lsn::new(5)),
                lag_bytes: None,
                retained_bytes: None,
                safe_wal_size: None,
                conflicting: None,
                invalidation_reason: None,
                inactive_seconds: None,
            },
            ownership,
        };
        let never = || Ownership::NotOurs(NotOurs::NeverCreated);
        let unverifiable = || Ownership::NotOurs(NotOurs::LegacyUnverifiable);
        let keep = |why| Ok(Leftover::Keep(why));
        #[rustfmt::skip]
        let cases = [
            // (current name, new name, found) => what the new snapshot does with it
            (&ours, &ours, None, Ok(Leftover::None)),
            (&ours, &ours, Some(found(Ownership::Ours, None)), Ok(Leftover::Drop)),
            (&ours, &ours, Some(found(Ownership::Ours, Some(7))), Ok(Leftover::Drop)),
            (&ours, &ours, Some(found(never(), None)), Err(NotOurs::NeverCreated)),
            (&legacy, &ours, None, Ok(Leftover::None)),
            (&legacy, &ours, Some(found(Ownership::Legacy, None)), Ok(Leftover::Drop)),
            (&legacy, &ours, Some(found(Ownership::Legacy, Some(7))), keep(NotOurs::LegacyInUse(7))),
            (&legacy, &ours, Some(found(unverifiable(), None)), keep(NotOurs::LegacyUnverifiable)),
            (&legacy, &ours, Some(found(never(), Some(7))), keep(NotOurs::NeverCreated)),
        ];
        for (current, new, found, expected) in cases {
            assert_eq!(
                leftover(current, new, found.as_ref()),
                expected,
                "{current} → {new}, found {found:?}"
            );
        }
    }
}
