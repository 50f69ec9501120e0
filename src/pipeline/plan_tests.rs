use super::*;
use crate::bookkeeping::TableSyncState;
use crate::source::slot::{invalidation, WalStatus};

fn name(n: &str) -> TableName {
    TableName {
        schema: "public".into(),
        name: n.into(),
    }
}

fn recorded(n: &str, decision: &str) -> TableStatus {
    TableStatus {
        table: name(n),
        decision: decision.into(),
        state: TableSyncState::Streaming,
        rows: 0,
        bytes: 0,
        copied_at: Some(APPLIED),
        copies: 1,
        problem: None,
        next_step: None,
    }
}

const APPLIED: Lsn = Lsn::new(0x1000);

fn lost() -> Invalidation {
    invalidation(WalStatus::Lost, None, None).expect("lost is an invalidation")
}

/// One row of the table: the facts that differ from a healthy connector that streamed.
struct Row {
    asked_by: AskedBy,
    slot: SlotFound,
    applied: Option<Lsn>,
    streamed: bool,
    /// The replica records an unfinished snapshot under the slot.
    interrupted: bool,
    resnapshot: bool,
    schemas: &'static [&'static str],
    /// `t_new` on the source, left out by the snapshot (new, or fixed since).
    new_table: bool,
    include_new_tables: bool,
    expected: Start,
}

fn row(asked_by: AskedBy) -> Row {
    Row {
        asked_by,
        slot: SlotFound::Valid,
        applied: Some(APPLIED),
        streamed: true,
        interrupted: false,
        resnapshot: false,
        schemas: &["public"],
        new_table: false,
        include_new_tables: false,
        expected: Start::Resume { from: APPLIED },
    }
}

fn check(row: Row) {
    let slot = SlotName::new("tributary_x").unwrap();
    let recorded_schemas = ["public".to_owned()];
    let wanted: Vec<String> = row.schemas.iter().map(|s| (*s).to_owned()).collect();
    let mut listed = vec![(name("t"), true)];
    if row.new_table {
        listed.push((name("t_new"), true));
    }
    let snapshot = [recorded("t", "include")];
    let facts = Facts {
        asked_by: row.asked_by,
        slot_name: &slot,
        replica: "replica_x",
        slot: row.slot.clone(),
        applied: row.applied,
        streamed_since_snapshot: row.streamed,
        interrupted_snapshot: row.interrupted,
        resnapshot: row.resnapshot,
        schemas_recorded: &recorded_schemas,
        schemas_wanted: &wanted,
        tables: (row.asked_by == AskedBy::Operator).then_some(TableFacts {
            listed: &listed,
            decisions: &[],
            snapshot: &snapshot,
            include_new_tables: row.include_new_tables,
        }),
    };
    assert_eq!(
        decide(&facts),
        row.expected,
        "asked by {:?}, slot {:?}, applied {:?}, streamed {}, resnapshot {}, schemas {:?}, \
         new table {} (included: {})",
        row.asked_by,
        row.slot,
        row.applied,
        row.streamed,
        row.resnapshot,
        row.schemas,
        row.new_table,
        row.include_new_tables
    );
}

#[test]
fn the_daemon_resumes_snapshots_or_stops_for_the_operator() {
    use AskedBy::Daemon;
    let slot = SlotName::new("tributary_x").unwrap();
    let missing = Reason::SlotMissing { slot: slot.clone() };
    let no_snapshot = Reason::NoCompleteSnapshot {
        replica: "replica_x".into(),
    };
    let rows = [
        // Healthy: resumes.
        row(Daemon),
        // retry-setup asked for a new snapshot: whatever else is true.
        Row {
            resnapshot: true,
            slot: SlotFound::Missing,
            expected: Start::Snapshot {
                reasons: vec![missing.clone(), Reason::Requested],
            },
            ..row(Daemon)
        },
        Row {
            resnapshot: true,
            slot: SlotFound::NotOurs(NotOurs::NeverCreated),
            expected: Start::Snapshot {
                reasons: vec![Reason::Requested],
            },
            ..row(Daemon)
        },
        // A replica that streamed is never replaced by the daemon alone.
        Row {
            slot: SlotFound::Missing,
            expected: Start::Blocked(Blocker::SlotMissing { applied: APPLIED }),
            ..row(Daemon)
        },
        Row {
            slot: SlotFound::Invalidated(lost()),
            expected: Start::Blocked(Blocker::SlotInvalidated {
                applied: APPLIED,
                how: lost(),
            }),
            ..row(Daemon)
        },
        Row {
            slot: SlotFound::NotOurs(NotOurs::NeverCreated),
            expected: Start::Blocked(Blocker::SlotNotOurs(NotOurs::NeverCreated)),
            ..row(Daemon)
        },
        Row {
            applied: None,
            expected: Start::Blocked(Blocker::ReplicaGone),
            ..row(Daemon)
        },
        // Never snapshotted, or the snapshot was interrupted: a new one, whatever slot.
        Row {
            applied: None,
            streamed: false,
            expected: Start::Snapshot {
                reasons: vec![no_snapshot.clone()],
            },
            ..row(Daemon)
        },
        Row {
            applied: None,
            streamed: false,
            slot: SlotFound::Missing,
            expected: Start::Snapshot {
                reasons: vec![no_snapshot.clone()],
            },
            ..row(Daemon)
        },
        // An interrupted snapshot goes on while its slot still streams from its start…
        Row {
            applied: None,
            streamed: false,
            interrupted: true,
            expected: Start::Continue,
            ..row(Daemon)
        },
        // …and starts over when the slot is gone, or a new snapshot is asked for.
        Row {
            applied: None,
            streamed: false,
            interrupted: true,
            slot: SlotFound::Missing,
            expected: Start::Snapshot {
                reasons: vec![no_snapshot.clone()],
            },
            ..row(Daemon)
        },
        Row {
            applied: None,
            streamed: false,
            interrupted: true,
            slot: SlotFound::Invalidated(lost()),
            expected: Start::Snapshot {
                reasons: vec![
                    no_snapshot.clone(),
                    Reason::SlotInvalidated {
                        slot: slot.clone(),
                        how: lost(),
                    },
                ],
            },
            ..row(Daemon)
        },
        Row {
            applied: None,
            streamed: false,
            interrupted: true,
            resnapshot: true,
            expected: Start::Snapshot {
                reasons: vec![no_snapshot.clone(), Reason::Requested],
            },
            ..row(Daemon)
        },
        Row {
            applied: None,
            streamed: false,
            interrupted: true,
            schemas: &["public", "sales"],
            expected: Start::Snapshot {
                reasons: vec![
                    Reason::SchemasChanged {
                        from: vec!["public".into()],
                        to: vec!["public".into(), "sales".into()],
                    },
                    no_snapshot,
                ],
            },
            ..row(Daemon)
        },
    ];
    for row in rows {
        check(row);
    }
}

#[test]
fn retry_setup_resumes_unless_something_needs_a_new_snapshot() {
    use AskedBy::Operator;
    let slot = SlotName::new("tributary_x").unwrap();
    let left_out = Reason::TablesLeftOut(vec![name("t_new")]);
    let rows = [
        // Nothing changed: resumes (a restart if unhealthy is the caller's).
        row(Operator),
        Row {
            resnapshot: true,
            expected: Start::Snapshot {
                reasons: vec![Reason::Requested],
            },
            ..row(Operator)
        },
        Row {
            slot: SlotFound::Missing,
            expected: Start::Snapshot {
                reasons: vec![Reason::SlotMissing { slot: slot.clone() }],
            },
            ..row(Operator)
        },
        Row {
            slot: SlotFound::Invalidated(lost()),
            expected: Start::Snapshot {
                reasons: vec![Reason::SlotInvalidated {
                    slot: slot.clone(),
                    how: lost(),
                }],
            },
            ..row(Operator)
        },
        // No complete snapshot: the slot left over does not count as missing.
        Row {
            applied: None,
            slot: SlotFound::Missing,
            expected: Start::Snapshot {
                reasons: vec![Reason::NoCompleteSnapshot {
                    replica: "replica_x".into(),
                }],
            },
            ..row(Operator)
        },
        // An interrupted snapshot: retry-setup lets it go on.
        Row {
            applied: None,
            streamed: false,
            interrupted: true,
            expected: Start::Continue,
            ..row(Operator)
        },
        // A schema added: the replica is kept, and only its tables are copied.
        Row {
            schemas: &["public", "sales"],
            expected: Start::Add {
                from: APPLIED,
                additions: vec![Reason::SchemasChanged {
                    from: vec!["public".into()],
                    to: vec!["public".into(), "sales".into()],
                }],
            },
            ..row(Operator)
        },
        // A schema replaced: a new snapshot.
        Row {
            schemas: &["sales"],
            expected: Start::Snapshot {
                reasons: vec![Reason::SchemasChanged {
                    from: vec!["public".into()],
                    to: vec!["sales".into()],
                }],
            },
            ..row(Operator)
        },
        // A table created since: only with new tables included, and then alone.
        Row {
            new_table: true,
            ..row(Operator)
        },
        Row {
            new_table: true,
            include_new_tables: true,
            expected: Start::Add {
                from: APPLIED,
                additions: vec![left_out.clone()],
            },
            ..row(Operator)
        },
        // Additions on a slot that is gone: a new snapshot after all.
        Row {
            new_table: true,
            include_new_tables: true,
            slot: SlotFound::Missing,
            expected: Start::Snapshot {
                reasons: vec![Reason::SlotMissing { slot: slot.clone() }, left_out.clone()],
            },
            ..row(Operator)
        },
        // Every reason, in order.
        Row {
            schemas: &["sales"],
            slot: SlotFound::Invalidated(lost()),
            new_table: true,
            include_new_tables: true,
            resnapshot: true,
            expected: Start::Snapshot {
                reasons: vec![
                    Reason::SchemasChanged {
                        from: vec!["public".into()],
                        to: vec!["sales".into()],
                    },
                    Reason::SlotInvalidated { slot, how: lost() },
                    left_out,
                    Reason::Requested,
                ],
            },
            ..row(Operator)
        },
    ];
    for row in rows {
        check(row);
    }
}

#[test]
fn a_table_fixed_since_the_snapshot_is_left_out_by_it() {
    // `fixed` had no key at the snapshot (excluded by `add_pk`) and has one now.
    let listed = [(name("t"), true), (name("fixed"), true)];
    let decisions = [(name("fixed"), TableDecision::AddPk)];
    let snapshot = [recorded("t", "include"), recorded("fixed", "add_pk")];
    let tables = TableFacts {
        listed: &listed,
        decisions: &decisions,
        snapshot: &snapshot,
        include_new_tables: false,
    };
    assert_eq!(left_out(&tables), [name("fixed")]);
    // Without a snapshot, nothing is left out by it.
    let tables = TableFacts {
        snapshot: &[],
        ..tables
    };
    assert_eq!(left_out(&tables), Vec::<TableName>::new());
}

#[test]
fn decisions_exclude_tables_until_they_have_a_usable_identity() {
    let listed = [
        (name("keyed"), true),
        (name("dropped"), false),
        (name("later"), false),
        (name("keyed_since"), true),
        (name("full_now"), true),
        (name("full_not_yet"), false),
        (name("excluded_keyed"), true),
    ];
    let decisions = [
        (name("dropped"), TableDecision::Exclude),
        (name("later"), TableDecision::AddPk),
        (name("keyed_since"), TableDecision::AddPk),
        (name("full_now"), TableDecision::ReplicaIdentityFull),
        (name("full_not_yet"), TableDecision::ReplicaIdentityFull),
        (name("excluded_keyed"), TableDecision::Exclude),
    ];
    let plan = split_tables(&listed, &decisions);
    assert_eq!(
        plan.copied,
        [name("keyed"), name("keyed_since"), name("full_now")]
    );
    assert_eq!(plan.fixed, [name("keyed_since"), name("full_now")]);
    let excluded = |n: &str, decision, why, usable| Excluded {
        table: name(n),
        decision,
        why,
        usable,
    };
    assert_eq!(
        plan.excluded,
        [
            excluded("dropped", TableDecision::Exclude, Why::Decided, false),
            excluded("later", TableDecision::AddPk, Why::Decided, false),
            excluded(
                "full_not_yet",
                TableDecision::ReplicaIdentityFull,
                Why::NotFullYet,
                false
            ),
            excluded("excluded_keyed", TableDecision::Exclude, Why::Decided, true),
        ]
    );
}
