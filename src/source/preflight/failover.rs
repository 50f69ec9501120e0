//! Whether a failover of the source would keep the connector's slot.
//!
//! From PostgreSQL 17 on, tributary creates its slot with the failover property; a physical
//! standby keeps a synchronized copy of it when it runs with `sync_replication_slots = on`,
//! `hot_standby_feedback = on`, a `primary_slot_name` and a `dbname` in `primary_conninfo`.
//! And the copy covers everything the connector confirmed only when the primary's
//! `synchronized_standby_slots` names that standby's physical slot: otherwise the primary
//! may send changes the standby has not received, and after a promotion the replica would
//! be ahead of the new primary (which costs a new snapshot). The primary shows its physical
//! slots and how many standbys stream; a standby's own settings are read from the other
//! hosts of a multi-host URL.

use super::gather::{one_row, rows};
use super::script::psql_quote;
use super::{Check, FAILOVER};
use crate::pg::conninfo::{names_keyword, Host, SessionAttrs};
use crate::pg::{quote_literal, ConnInfo, Endpoint};
use crate::source::error::Result;
use crate::source::wire::Connection;

/// What the primary says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Failover {
    /// Standbys (and other physical clients) streaming from the primary now; logical
    /// walsenders (tributary's own among them) do not count.
    pub(super) streaming: usize,
    /// `synchronized_standby_slots` (17+), split at commas; empty when unset or older.
    pub(super) synchronized_standby_slots: Vec<String>,
    pub(super) physical_slots: Vec<PhysicalSlot>,
    /// The other hosts of the URL, as found.
    pub(super) standbys: Vec<StandbyLook>,
    /// When the server checked is itself a standby (a source on PostgreSQL 16+):
    /// `hot_standby_feedback` and `primary_slot_name`.
    pub(super) own: Option<(bool, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PhysicalSlot {
    pub(super) name: String,
    pub(super) active: bool,
    /// The standby's `hot_standby_feedback` reaches the primary through it (`xmin`).
    pub(super) feedback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StandbyLook {
    Unreachable {
        server: String,
        reason: String,
    },
    /// Another primary (or a server that is not in recovery).
    NotAStandby {
        server: String,
    },
    Standby(Standby),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Standby {
    pub(super) endpoint: Endpoint,
    pub(super) sync_replication_slots: bool,
    pub(super) hot_standby_feedback: bool,
    pub(super) primary_slot_name: String,
    /// Whether `primary_conninfo` names a database; `None` when this role may not read it
    /// (it needs `pg_read_all_settings`).
    pub(super) conninfo_has_dbname: Option<bool>,
}

impl Standby {
    fn server(&self) -> String {
        self.endpoint.target()
    }

    /// What it lacks to keep a synchronized copy of the slot, as settings to change.
    fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.sync_replication_slots {
            missing.push("sync_replication_slots = on");
        }
        if !self.hot_standby_feedback {
            missing.push("hot_standby_feedback = on");
        }
        if self.primary_slot_name.is_empty() {
            missing.push("primary_slot_name");
        }
        if self.conninfo_has_dbname == Some(false) {
            missing.push("a dbname in primary_conninfo");
        }
        missing
    }
}

/// Reads the primary's side over the preflight session.
pub(super) async fn read_primary(conn: &mut Connection, major: u32) -> Result<Failover> {
    let (streaming, synchronized, in_recovery, feedback, slot) = one_row(
        conn,
        "the standbys",
        "SELECT (SELECT count(*) FROM pg_catalog.pg_stat_replication r
                  WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots s
                                     WHERE s.active_pid = r.pid AND s.slot_type = 'logical')),
                pg_catalog.current_setting('synchronized_standby_slots', true),
                pg_catalog.pg_is_in_recovery(),
                pg_catalog.current_setting('hot_standby_feedback'),
                pg_catalog.current_setting('primary_slot_name')",
        |row| {
            Ok((
                row.number(0)?,
                row.optional(1).unwrap_or_default(),
                row.flag(2)?,
                row.text(3)? == "on",
                row.text(4)?.to_owned(),
            ))
        },
    )
    .await?;
    let physical_slots = rows(
        conn,
        "the physical slots",
        "SELECT slot_name, active, xmin IS NOT NULL
           FROM pg_catalog.pg_replication_slots
          WHERE slot_type = 'physical'
          ORDER BY slot_name",
        |row| {
            Ok(PhysicalSlot {
                name: row.text(0)?.to_owned(),
                active: row.flag(1)?,
                feedback: row.flag(2)?,
            })
        },
    )
    .await?;
    Ok(Failover {
        streaming,
        synchronized_standby_slots: if major >= 17 {
            split_list(&synchronized)
        } else {
            Vec::new()
        },
        physical_slots,
        standbys: Vec::new(),
        own: in_recovery.then_some((feedback, slot)),
    })
}

/// Looks at each host of `info` but `connected`, whatever its role.
pub(super) async fn look_at_standbys(info: &ConnInfo, connected: &Endpoint) -> Vec<StandbyLook> {
    let mut looks = Vec::new();
    for endpoint in info.endpoints.iter().filter(|e| *e != connected) {
        let mut one = info.pinned(endpoint);
        one.session_attrs = SessionAttrs::Any;
        let server = endpoint.target();
        let look = match Connection::connect(&one, &[]).await {
            Err(e) => StandbyLook::Unreachable {
                server,
                reason: e.to_string(),
            },
            Ok(mut conn) => {
                let look = read_standby(&mut conn, endpoint).await;
                conn.terminate().await;
                look.unwrap_or_else(|e| StandbyLook::Unreachable {
                    server,
                    reason: e.to_string(),
                })
            }
        };
        looks.push(look);
    }
    looks
}

async fn read_standby(conn: &mut Connection, endpoint: &Endpoint) -> Result<StandbyLook> {
    let (in_recovery, sync, feedback, slot, conninfo) = one_row(
        conn,
        "the standby's settings",
        "SELECT pg_catalog.pg_is_in_recovery(),
                pg_catalog.current_setting('sync_replication_slots', true),
                pg_catalog.current_setting('hot_standby_feedback'),
                pg_catalog.current_setting('primary_slot_name'),
                CASE WHEN pg_catalog.pg_has_role('pg_read_all_settings', 'USAGE')
                     THEN pg_catalog.current_setting('primary_conninfo') END",
        |row| {
            Ok((
                row.flag(0)?,
                row.optional(1),
                row.text(2)? == "on",
                row.text(3)?.to_owned(),
                row.optional(4),
            ))
        },
    )
    .await?;
    if !in_recovery {
        return Ok(StandbyLook::NotAStandby {
            server: endpoint.target(),
        });
    }
    Ok(StandbyLook::Standby(Standby {
        endpoint: endpoint.clone(),
        sync_replication_slots: sync.as_deref() == Some("on"),
        hot_standby_feedback: feedback,
        primary_slot_name: slot,
        conninfo_has_dbname: conninfo.map(|c| names_keyword(&c, "dbname")),
    }))
}

/// A list setting as the server splits it: at commas, each entry trimmed and unquoted.
fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether a failover would keep the slot, and what to change where it would not. Never
/// fails preflight: losing the slot at a failover costs a new snapshot, not data.
pub(super) fn judge_failover(major: u32, failover: &Failover) -> Check {
    let standbys: Vec<&Standby> = failover
        .standbys
        .iter()
        .filter_map(|look| match look {
            StandbyLook::Standby(s) => Some(s),
            _ => None,
        })
        .collect();
    if failover.own.is_some() {
        return Check::warn(
            FAILOVER,
            "the slot lives on this standby: it survives this server's promotion, but not \
             its loss or replacement (a slot made on a standby cannot be a failover slot)",
            "to keep the slot through a failover, replicate from the primary (PostgreSQL 17+ \
             with slot synchronization), listing the standbys in the URL",
        );
    }
    let no_standby = failover.streaming == 0 && standbys.is_empty();
    if major < 17 {
        return if no_standby {
            Check::pass(
                FAILOVER,
                format!(
                    "no standby streams from this server (PostgreSQL {major} cannot keep a \
                     logical slot across a failover; 17 can)"
                ),
            )
        } else {
            Check::warn(
                FAILOVER,
                format!(
                    "a failover would lose the slot: PostgreSQL {major} does not synchronize \
                     logical slots to standbys"
                ),
                "after a promotion the connector stops (slot missing) and needs `tributary \
                 connector retry-setup NAME --resnapshot`; PostgreSQL 17 or newer, with slot \
                 synchronization on a standby, keeps the slot",
            )
        };
    }
    if no_standby {
        return Check::pass(
            FAILOVER,
            "the slot is created with the failover property; no standby streams from this \
             server yet",
        );
    }
    let mut problems = Vec::new();
    for look in &failover.standbys {
        match look {
            StandbyLook::Unreachable { server, reason } => {
                problems.push(format!("standby {server} could not be checked: {reason}"))
            }
            StandbyLook::NotAStandby { server } => {
                problems.push(format!("{server} is not a standby"))
            }
            StandbyLook::Standby(s) => {
                let missing = s.missing();
                if !missing.is_empty() {
                    problems.push(format!(
                        "standby {} lacks {}",
                        s.server(),
                        missing.join(", ")
                    ));
                }
                if s.conninfo_has_dbname.is_none() {
                    problems.push(format!(
                        "whether standby {}'s primary_conninfo names a database cannot be \
                         read (grant pg_read_all_settings to check it)",
                        s.server()
                    ));
                }
                if let Some(problem) = physical_slot_problem(s, &failover.physical_slots) {
                    problems.push(problem);
                }
            }
        }
    }
    if failover.standbys.is_empty() {
        let in_use: Vec<&str> = failover
            .physical_slots
            .iter()
            .filter(|p| p.active)
            .map(|p| p.name.as_str())
            .collect();
        problems.push(format!(
            "{} standby connection(s) stream from this server (physical slots in use: {}), \
             but their settings are not known: list them in the URL \
             (host=primary,standby target_session_attrs=read-write) so that preflight can \
             read them (a single address that moves to the new primary, a virtual IP or a \
             proxy, also lets the connector follow a promotion)",
            failover.streaming,
            if in_use.is_empty() {
                "none".to_owned()
            } else {
                in_use.join(", ")
            }
        ));
    }
    // The physical slots that synchronizing standbys stream through.
    let syncing: Vec<&Standby> = standbys
        .iter()
        .copied()
        .filter(|s| s.missing().is_empty())
        .collect();
    let guarded: Vec<&String> = failover
        .synchronized_standby_slots
        .iter()
        .filter(|slot| syncing.is_empty() || syncing.iter().any(|s| s.primary_slot_name == **slot))
        .collect();
    let unguarded: Vec<String> = syncing
        .iter()
        .filter(|s| {
            !failover
                .synchronized_standby_slots
                .contains(&s.primary_slot_name)
        })
        .map(|s| s.server())
        .collect();
    if !guarded.is_empty() && !unguarded.is_empty() {
        problems.push(format!(
            "synchronized_standby_slots does not name the slot of standby {}: the replica \
             could be ahead of it after its promotion",
            unguarded.join(", ")
        ));
    }
    if guarded.is_empty() {
        problems.push(
            "the primary's synchronized_standby_slots names no synchronizing standby's \
             slot: the primary may send the connector changes that standby has not \
             received, and after its promotion the replica would be ahead of it (a new \
             snapshot)"
                .to_owned(),
        );
    }
    if problems.is_empty() {
        return Check::pass(
            FAILOVER,
            format!(
                "kept: standby {} synchronizes the failover slot, and \
                 synchronized_standby_slots = {}",
                syncing
                    .iter()
                    .map(|s| s.server())
                    .collect::<Vec<_>>()
                    .join(", "),
                failover.synchronized_standby_slots.join(", ")
            ),
        );
    }
    Check::warn(
        FAILOVER,
        format!("a failover may lose the slot: {}", problems.join("; ")),
        "apply the failover part of the grant script (it sets what is missing on the \
         primary and, through \\connect, on each standby)",
    )
}

/// What is wrong with the primary's physical slot that `standby` streams through.
fn physical_slot_problem(standby: &Standby, slots: &[PhysicalSlot]) -> Option<String> {
    if standby.primary_slot_name.is_empty() {
        return None; // named among what the standby lacks
    }
    let name = &standby.primary_slot_name;
    match slots.iter().find(|p| p.name == *name) {
        None => Some(format!(
            "standby {}'s primary_slot_name {name} is no physical slot on the primary",
            standby.server()
        )),
        Some(p) if !p.active => Some(format!(
            "the primary's slot {name} is not in use: its standby does not stream"
        )),
        Some(p) if !p.feedback => Some(format!(
            "the primary's slot {name} gets no hot_standby_feedback from its standby"
        )),
        Some(_) => None,
    }
}

/// The psql lines that make a failover keep the slot: on the primary, a physical slot for
/// each standby of the URL that has none and `synchronized_standby_slots` naming the
/// standbys' slots; then, for each standby that lacks a setting, a `\connect` to it and
/// the settings. Last in the grant script (it ends connected to a standby); empty when
/// nothing is missing.
pub(super) fn failover_script(major: u32, database: &str, failover: &Failover) -> Vec<String> {
    if major < 17 {
        return Vec::new();
    }
    let standbys: Vec<(&Standby, String)> = failover
        .standbys
        .iter()
        .filter_map(|look| match look {
            StandbyLook::Standby(s) if s.primary_slot_name.is_empty() => {
                Some((s, physical_slot_name(&s.server())))
            }
            StandbyLook::Standby(s) => Some((s, s.primary_slot_name.clone())),
            _ => None,
        })
        .collect();
    let mut lines = Vec::new();
    for (_, slot) in &standbys {
        // Named by the standby or new: made where the primary lacks it, since
        // synchronized_standby_slots may name only slots that exist.
        if !failover.physical_slots.iter().any(|p| p.name == *slot) {
            lines.push(format!(
                "SELECT pg_catalog.pg_create_physical_replication_slot({slot}) \
                 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = {slot});",
                slot = quote_literal(slot)
            ));
        }
    }
    let mut list = failover.synchronized_standby_slots.clone();
    let before = list.len();
    for (_, slot) in &standbys {
        if !list.contains(slot) {
            list.push(slot.clone());
        }
    }
    if list.len() > before {
        lines.push(format!(
            "ALTER SYSTEM SET synchronized_standby_slots = {};",
            quote_literal(&list.join(", "))
        ));
        lines.push("SELECT pg_catalog.pg_reload_conf();".to_owned());
    }
    for (standby, slot) in &standbys {
        if standby.missing().is_empty() {
            continue;
        }
        lines.push(format!("-- On the standby {}:", standby.server()));
        lines.push(format!(
            "\\connect -reuse-previous=on {}",
            psql_quote(&endpoint_conninfo(&standby.endpoint))
        ));
        if !standby.sync_replication_slots {
            lines.push("ALTER SYSTEM SET sync_replication_slots = on;".to_owned());
        }
        if !standby.hot_standby_feedback {
            lines.push("ALTER SYSTEM SET hot_standby_feedback = on;".to_owned());
        }
        if standby.primary_slot_name.is_empty() {
            lines.push(format!(
                "ALTER SYSTEM SET primary_slot_name = {};",
                quote_literal(slot)
            ));
        }
        if standby.conninfo_has_dbname == Some(false) {
            lines.push(format!(
                "-- primary_conninfo names no database: add dbname={} to it \
                 (ALTER SYSTEM SET primary_conninfo = '<its value> dbname={}').",
                conninfo_value(database),
                conninfo_value(database).replace('\'', "''")
            ));
        }
        lines.push("SELECT pg_catalog.pg_reload_conf();".to_owned());
    }
    if !lines.is_empty() {
        lines.insert(
            0,
            "-- Failover (PostgreSQL 17+): standbys keep a synchronized copy of the \
             connector's slot, and the primary sends changes only once they have them."
                .to_owned(),
        );
    }
    lines
}

/// `host=… port=…` of one server, for psql's `\connect`.
fn endpoint_conninfo(endpoint: &Endpoint) -> String {
    let host = match &endpoint.host {
        Host::Tcp(host) => host.clone(),
        Host::Unix(dir) => dir.display().to_string(),
    };
    format!("host={host} port={}", endpoint.port)
}

/// `value` as a connection string writes it: bare when it can be, else single-quoted.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A physical slot name for a standby that has none: `standby_` and its address.
fn physical_slot_name(server: &str) -> String {
    let name: String = server
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("standby_{name}")
}
