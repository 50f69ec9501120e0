//! Resume from the slot or take a new snapshot, and which tables a snapshot copies: the
//! one place this is decided, for the daemon's pipeline at start (`runner.rs`) and for
//! `connector retry-setup` / `connector update --schemas` (`control::setup`), from the
//! same facts.
//!
//! ```text
//!  a new snapshot was asked for (retry-setup)       ──► new snapshot
//!  the replica has an applied position:
//!     slot there and valid, nothing else changed    ──► resume from the applied position
//!     slot missing, invalidated or not ours         ──► the daemon stops (failed) and
//!                                                       names retry-setup; retry-setup
//!                                                       takes a new snapshot
//!     schemas added or tables to replicate since    ──► retry-setup keeps the replica and
//!       the snapshot, nothing else                      the daemon copies only those
//!     a schema removed, with other reasons          ──► retry-setup takes a new snapshot
//!  no applied position:
//!     the connector streamed since its snapshot     ──► the daemon stops: the replica is
//!                                                       gone (store.url changed?)
//!     an interrupted snapshot under the slot, which ──► the snapshot goes on: tables
//!       is there and valid, schemas unchanged             copied stay copied
//!     otherwise (never snapshotted, slot gone)      ──► new snapshot
//! ```
//!
//! The daemon never replaces a replica that has streamed on its own: only the operator's
//! retry-setup does, which is why the same facts give the daemon a [`Blocker`] and
//! retry-setup a [`Reason`].

use std::collections::HashSet;
use std::fmt;

use crate::bookkeeping::{TableDecision, TableStatus};
use crate::change::TableName;
use crate::source::slot::{Invalidation, NotOurs};
use crate::types::{Lsn, SlotName};

/// Who asks for the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskedBy {
    /// The pipeline at start: it never replaces a replica that has streamed by itself.
    Daemon,
    /// `connector retry-setup` or `connector update --schemas`: the operator's consent to
    /// a new snapshot when one is needed.
    Operator,
}

/// The connector's slot as found on the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotFound {
    Missing,
    Valid,
    Invalidated(Invalidation),
    /// There, but not this installation's (only the daemon judges ownership).
    NotOurs(NotOurs),
}

/// What the tables on the source are, and what the current snapshot copied.
#[derive(Debug, Clone, Copy)]
pub struct TableFacts<'a> {
    /// The source's tables in the connector's (wanted) schemas, with whether each has a
    /// usable replica identity.
    pub listed: &'a [(TableName, bool)],
    pub decisions: &'a [(TableName, TableDecision)],
    /// The tables of the current snapshot, as the bookkeeping recorded them.
    pub snapshot: &'a [TableStatus],
    pub include_new_tables: bool,
}

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub asked_by: AskedBy,
    pub slot_name: &'a SlotName,
    pub replica: &'a str,
    pub slot: SlotFound,
    /// The replica's applied position: set once its snapshot completed.
    pub applied: Option<Lsn>,
    /// Whether the connector streamed since its last snapshot started.
    pub streamed_since_snapshot: bool,
    /// The replica records an unfinished snapshot taken with the connector's slot.
    pub interrupted_snapshot: bool,
    /// A new snapshot is asked for (`retry-setup --resnapshot`, or recorded by an earlier
    /// retry-setup for the daemon).
    pub resnapshot: bool,
    pub schemas_recorded: &'a [String],
    pub schemas_wanted: &'a [String],
    /// Known to retry-setup, which reads the source's tables; the daemon decides the
    /// tables inside the snapshot's exported snapshot ([`split_tables`]).
    pub tables: Option<TableFacts<'a>>,
}

/// Why a new snapshot is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    SchemasChanged {
        from: Vec<String>,
        to: Vec<String>,
    },
    NoCompleteSnapshot {
        replica: String,
    },
    SlotMissing {
        slot: SlotName,
    },
    SlotInvalidated {
        slot: SlotName,
        how: Invalidation,
    },
    /// Tables the next snapshot copies that the current one did not: fixed, no longer
    /// excluded, or created since.
    TablesLeftOut(Vec<TableName>),
    Requested,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::SchemasChanged { from, to } => write!(
                f,
                "the schemas change from {} to {}",
                from.join(", "),
                to.join(", ")
            ),
            Reason::NoCompleteSnapshot { replica } => {
                write!(f, "the replica {replica} has no complete snapshot")
            }
            Reason::SlotMissing { slot } => {
                write!(f, "replication slot {slot} is missing on the source")
            }
            Reason::SlotInvalidated { slot, how } => write!(
                f,
                "replication slot {slot} was invalidated by the source ({how})"
            ),
            Reason::TablesLeftOut(tables) => {
                let names: Vec<String> = tables.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{} table{} to replicate that the snapshot left out: {}",
                    tables.len(),
                    if tables.len() == 1 { "" } else { "s" },
                    names.join(", ")
                )
            }
            Reason::Requested => f.write_str("asked for with --resnapshot"),
        }
    }
}

/// What stops the daemon where only the operator may decide on a new snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    SlotNotOurs(NotOurs),
    SlotMissing {
        applied: Lsn,
    },
    SlotInvalidated {
        applied: Lsn,
        how: Invalidation,
    },
    /// No applied position, but the connector streamed into the replica since its
    /// snapshot: the replica was dropped, or the store is another one.
    ReplicaGone,
}

/// How the pipeline starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Resume {
        from: Lsn,
    },
    /// Go on with the interrupted snapshot (only the tables it has not copied).
    Continue,
    /// Keep the replica and copy into it only what the connector now replicates in
    /// addition (a schema added, tables no longer excluded or created since), the others
    /// streaming on; only for [`AskedBy::Operator`], whose change the daemon then finds.
    Add {
        /// Where streaming resumes, as with [`Start::Resume`].
        from: Lsn,
        /// Never empty.
        additions: Vec<Reason>,
    },
    /// Never empty.
    Snapshot {
        reasons: Vec<Reason>,
    },
    /// Only for [`AskedBy::Daemon`].
    Blocked(Blocker),
}

/// Decides how the pipeline starts.
pub fn decide(facts: &Facts<'_>) -> Start {
    let mut reasons = Vec::new();
    if facts.schemas_wanted != facts.schemas_recorded {
        reasons.push(Reason::SchemasChanged {
            from: facts.schemas_recorded.to_vec(),
            to: facts.schemas_wanted.to_vec(),
        });
    }
    if facts.applied.is_none() {
        reasons.push(Reason::NoCompleteSnapshot {
            replica: facts.replica.to_owned(),
        });
    }
    let slot = facts.slot_name.clone();
    match &facts.slot {
        SlotFound::Missing if facts.applied.is_some() => {
            reasons.push(Reason::SlotMissing { slot });
        }
        SlotFound::Invalidated(how) => reasons.push(Reason::SlotInvalidated {
            slot,
            how: how.clone(),
        }),
        _ => {}
    }
    if let Some(tables) = facts.tables {
        let left_out = left_out(&tables);
        if !left_out.is_empty() && !tables.snapshot.is_empty() {
            reasons.push(Reason::TablesLeftOut(left_out));
        }
    }
    if facts.resnapshot {
        reasons.push(Reason::Requested);
    }
    // The slot still streams from the snapshot's start, and nothing else calls for a new
    // one: its copied tables are good.
    let only_unfinished = matches!(&reasons[..], [Reason::NoCompleteSnapshot { .. }]);
    if only_unfinished
        && facts.interrupted_snapshot
        && facts.slot == SlotFound::Valid
        && !facts.streamed_since_snapshot
    {
        return Start::Continue;
    }
    let additive = |reason: &Reason| match reason {
        Reason::SchemasChanged { from, to } => from.iter().all(|s| to.contains(s)),
        Reason::TablesLeftOut(_) => true,
        _ => false,
    };
    if let (AskedBy::Operator, Some(from), SlotFound::Valid) =
        (facts.asked_by, facts.applied, &facts.slot)
    {
        if !reasons.is_empty() && reasons.iter().all(additive) {
            return Start::Add {
                from,
                additions: reasons,
            };
        }
    }
    match (facts.asked_by, facts.applied) {
        (AskedBy::Operator, Some(from)) if reasons.is_empty() => Start::Resume { from },
        (AskedBy::Operator, _) => Start::Snapshot { reasons },
        (AskedBy::Daemon, _) if facts.resnapshot => Start::Snapshot { reasons },
        (AskedBy::Daemon, Some(applied)) => match &facts.slot {
            SlotFound::NotOurs(why) => Start::Blocked(Blocker::SlotNotOurs(why.clone())),
            SlotFound::Missing => Start::Blocked(Blocker::SlotMissing { applied }),
            SlotFound::Invalidated(how) => Start::Blocked(Blocker::SlotInvalidated {
                applied,
                how: how.clone(),
            }),
            SlotFound::Valid => Start::Resume { from: applied },
        },
        (AskedBy::Daemon, None) if facts.streamed_since_snapshot => {
            Start::Blocked(Blocker::ReplicaGone)
        }
        (AskedBy::Daemon, None) => Start::Snapshot { reasons },
    }
}

/// The tables the next snapshot copies (as [`split_tables`] decides) that the current
/// one did not include, among those it knew (or any, with new tables included).
fn left_out(tables: &TableFacts<'_>) -> Vec<TableName> {
    let included: HashSet<&TableName> = tables
        .snapshot
        .iter()
        .filter(|t| t.decision == "include")
        .map(|t| &t.table)
        .collect();
    let known: HashSet<&TableName> = tables.snapshot.iter().map(|t| &t.table).collect();
    split_tables(tables.listed, tables.decisions)
        .copied
        .into_iter()
        .filter(|t| !included.contains(t) && (tables.include_new_tables || known.contains(t)))
        .collect()
}

/// Why a snapshot leaves a table out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The operator's decision (`exclude`, or `add_pk` while no key is there yet).
    Decided,
    /// `replica_identity_full` decided, but the source's identity is not FULL yet.
    NotFullYet,
}

/// A table a snapshot leaves out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    pub table: TableName,
    pub decision: TableDecision,
    pub why: Why,
    /// Whether the table has a usable replica identity (excluded only by decision).
    pub usable: bool,
}

/// Which tables a snapshot copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub copied: Vec<TableName>,
    /// Copied although a decision names them: their identity is usable now.
    pub fixed: Vec<TableName>,
    pub excluded: Vec<Excluded>,
}

/// Splits the source's tables (with whether each has a usable replica identity) by the
/// operator's replica identity decisions: `exclude` always leaves a table out;
/// `add_pk` and `replica_identity_full` while the table still has no usable identity on
/// the source (left out until fixed, which a later snapshot then sees).
pub fn split_tables(
    listed: &[(TableName, bool)],
    decisions: &[(TableName, TableDecision)],
) -> TablePlan {
    let mut plan = TablePlan::default();
    for (table, usable) in listed {
        let decision = decisions
            .iter()
            .find(|(name, _)| name == table)
            .map(|(_, d)| *d);
        let excluded = |decision, why| Excluded {
            table: table.clone(),
            decision,
            why,
            usable: *usable,
        };
        match decision {
            None => plan.copied.push(table.clone()),
            Some(TableDecision::AddPk | TableDecision::ReplicaIdentityFull) if *usable => {
                plan.copied.push(table.clone());
                plan.fixed.push(table.clone());
            }
            Some(TableDecision::ReplicaIdentityFull) => plan.excluded.push(excluded(
                TableDecision::ReplicaIdentityFull,
                Why::NotFullYet,
            )),
            Some(decision) => plan.excluded.push(excluded(decision, Why::Decided)),
        }
    }
    plan
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
