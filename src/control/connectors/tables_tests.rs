use super::*;

fn name(qualified: &str) -> TableName {
    let (schema, name) = qualified.split_once('.').unwrap();
    TableName {
        schema: schema.to_owned(),
        name: name.to_owned(),
    }
}

fn status(table: &str, decision: &str, state: TableSyncState) -> TableStatus {
    TableStatus {
        table: name(table),
        decision: decision.to_owned(),
        state,
        rows: 10,
        bytes: 100,
        copied_at: state.is_copied().then(|| "0/16B3748".parse().unwrap()),
        copies: u32::from(state.is_copied()),
        problem: None,
        next_step: None,
    }
}

#[test]
fn each_state_is_shown_by_its_own_name_and_excluded_tables_as_excluded() {
    use TableSyncState::*;
    let cases = [
        ("include", Pending, TableState::Pending),
        ("include", Copying, TableState::Copying),
        ("include", Copied, TableState::Copied),
        ("include", Streaming, TableState::Streaming),
        ("include", NeedsDecision, TableState::NeedsDecision),
        ("include", Failed, TableState::Failed),
        // Excluded rows are stored pending: they never leave it.
        ("exclude", Pending, TableState::Excluded),
        ("add_pk", Pending, TableState::Excluded),
        ("replica_identity_full", Pending, TableState::Excluded),
        ("unlogged", Pending, TableState::Excluded),
    ];
    for (decision, sync, shown) in cases {
        let shown_now = state_of(&status("public.t", decision, sync));
        assert_eq!(shown_now, shown, "{decision} {sync}");
        // The names operators see are the bookkeeping's.
        if decision == "include" {
            assert_eq!(shown_now.as_str(), sync.as_str());
        }
    }
}

#[test]
fn the_states_are_counted_in_their_declared_order() {
    for (i, state) in TableState::ALL.into_iter().enumerate() {
        assert_eq!(index(state), i, "{state}");
    }
}

#[test]
fn decided_tables_are_excluded_by_their_decision_as_it_stands() {
    use TableSyncState::*;
    let statuses = vec![
        status("public.b", "include", Streaming),
        status("public.a", "exclude", Pending),
        status("app.scratch", "unlogged", Pending),
        // Decided, but its key was there in time for the snapshot.
        status("public.logs", "include", Copying),
    ];
    let decisions = vec![
        // Changed since the snapshot (retry-setup): the new decision shows.
        (name("public.a"), TableDecision::AddPk),
        (name("public.logs"), TableDecision::ReplicaIdentityFull),
        // Not in the snapshot at all (decided for a later one).
        (name("public.later"), TableDecision::Exclude),
    ];
    let shown: Vec<(String, TableState, String)> = merge(statuses, decisions)
        .into_iter()
        .map(|t| (t.table.to_string(), t.state, t.decision))
        .collect();
    let row = |t: &str, s, d: &str| (t.to_owned(), s, d.to_owned());
    assert_eq!(
        shown,
        vec![
            row("app.scratch", TableState::Excluded, "unlogged"),
            row("public.a", TableState::Excluded, "add_pk"),
            row("public.b", TableState::Streaming, "include"),
            row("public.later", TableState::Excluded, "exclude"),
            row("public.logs", TableState::Copying, "include"),
        ]
    );
    // Before the first snapshot: the decisions alone.
    let before = merge(Vec::new(), vec![(name("public.k"), TableDecision::Exclude)]);
    assert_eq!(before.len(), 1);
    assert_eq!(
        (before[0].state, before[0].copies, before[0].copied_at),
        (TableState::Excluded, 0, None)
    );
}

#[test]
fn counts_and_the_tables_not_streaming() {
    use TableSyncState::*;
    let statuses = vec![
        status("s.a", "include", Streaming),
        status("s.b", "include", Streaming),
        status("s.c", "include", Copying),
        status("s.d", "include", Pending),
        status("s.e", "include", Pending),
        status("s.f", "include", Copied),
        status("s.g", "include", NeedsDecision),
        status("s.h", "include", Failed),
        status("s.i", "exclude", Pending),
        status("s.j", "unlogged", Pending),
    ];
    let tables = merge(statuses, Vec::new());
    let counts = Counts::of(&tables);
    let by_name: Vec<(&str, usize)> = counts.iter().map(|(s, n)| (s.as_str(), n)).collect();
    assert_eq!(
        by_name,
        vec![
            ("pending", 2),
            ("copying", 1),
            ("copied", 1),
            ("streaming", 2),
            ("needs_decision", 1),
            ("failed", 1),
            ("excluded", 2),
        ]
    );
    assert_eq!(counts.not_streaming(), 6);
    let named: Vec<String> = not_streaming(&tables, 4)
        .iter()
        .map(|t| t.table.to_string())
        .collect();
    assert_eq!(named, ["s.c", "s.d", "s.e", "s.f"]);
    assert_eq!(not_streaming(&tables, 100).len(), 6);

    let empty = Counts::of(&[]);
    assert_eq!(empty.not_streaming(), 0);
    assert!(empty.iter().all(|(_, n)| n == 0));
    assert_eq!(empty.iter().count(), TableState::ALL.len());
}

#[test]
fn progress_counts_the_included_tables_whose_copy_holds() {
    use TableSyncState::*;
    /// Tables by decision and state; the copied and total tables expected.
    type Case<'a> = (&'a [(&'a str, TableSyncState)], (u64, u64));
    let cases: [Case; 5] = [
        (&[], (0, 0)),
        (&[("include", Pending), ("include", Copying)], (0, 2)),
        // Streaming tables are copied too.
        (&[("include", Copied), ("include", Streaming)], (2, 2)),
        (&[("include", NeedsDecision), ("include", Failed)], (1, 2)),
        // Excluded tables are not the snapshot's to copy.
        (
            &[
                ("include", Streaming),
                ("exclude", Pending),
                ("unlogged", Pending),
            ],
            (1, 1),
        ),
    ];
    for (rows, (copied, total)) in cases {
        let statuses: Vec<TableStatus> = rows
            .iter()
            .enumerate()
            .map(|(i, (decision, state))| status(&format!("s.t{i}"), decision, *state))
            .collect();
        let p = progress(&statuses);
        assert_eq!((p.copied, p.total), (copied, total), "{rows:?}");
        assert_eq!((p.rows, p.bytes), (10 * total, 100 * total), "{rows:?}");
    }
}
