//! Preflight judged with the operator's replica identity decisions: a table one means to
//! exclude (or to fix before the snapshot) no longer fails preflight, so "preflight must
//! pass" gates the same sources `connector create` accepts with the same flags.

use crate::bookkeeping::TableDecision;
use crate::change::TableName;
use crate::source::preflight::{identity_check, replica_identity_full_sql, Outcome, Report};

/// `report` with the failed replica identity check of each table in `decisions` turned
/// into a warning that says the decision and what follows from it. Every other check,
/// and the check of a table without a decision, stays as it was.
pub fn judge(report: &Report, decisions: &[(TableName, TableDecision)]) -> Report {
    let mut judged = report.clone();
    for check in &mut judged.checks {
        let Outcome::Fail { value, .. } = &check.outcome else {
            continue;
        };
        let Some((table, decision)) = decisions
            .iter()
            .find(|(table, _)| identity_check(table) == check.name)
        else {
            continue;
        };
        check.outcome = Outcome::Warn {
            value: format!("{value}; decided: {decision}"),
            fix: consequence(table, *decision),
        };
    }
    judged
}

/// What a decision means for the table, as the fix of its warning.
fn consequence(table: &TableName, decision: TableDecision) -> String {
    match decision {
        TableDecision::Exclude => "not replicated (excluded by the decision)".to_owned(),
        TableDecision::AddPk => "excluded until it has a primary key; a snapshot taken after \
                                 the key was added includes it"
            .to_owned(),
        TableDecision::ReplicaIdentityFull => format!(
            "run {} on the source before the snapshot starts; excluded until then",
            replica_identity_full_sql(table)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::preflight::Check;

    fn table(name: &str) -> TableName {
        TableName {
            schema: "public".into(),
            name: name.into(),
        }
    }

    fn fail(name: &str) -> Check {
        Check {
            name: name.into(),
            outcome: Outcome::Fail {
                value: "none".into(),
                fix: "add a key".into(),
            },
        }
    }

    #[test]
    fn decided_tables_warn_and_everything_else_stays() {
        let report = Report {
            checks: vec![
                fail("wal_level"),
                fail("replica identity public.a"),
                fail("replica identity public.b"),
                fail("replica identity public.c"),
                fail("replica identity public.d"),
            ],
            ..Report::default()
        };
        let decisions = [
            (table("a"), TableDecision::Exclude),
            (table("b"), TableDecision::AddPk),
            (table("c"), TableDecision::ReplicaIdentityFull),
        ];
        let judged = judge(&report, &decisions);
        let outcome = |name: &str| {
            judged
                .checks
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.outcome.clone())
                .unwrap()
        };
        for (name, expected) in [
            ("wal_level", None),
            ("replica identity public.a", Some("not replicated")),
            ("replica identity public.b", Some("primary key")),
            ("replica identity public.c", Some("REPLICA IDENTITY FULL")),
            ("replica identity public.d", None),
        ] {
            match (outcome(name), expected) {
                (Outcome::Fail { .. }, None) => {}
                (Outcome::Warn { value, fix }, Some(fix_says)) => {
                    assert!(value.contains("decided: "), "{name}: {value}");
                    assert!(fix.contains(fix_says), "{name}: {fix}");
                }
                (other, _) => panic!("{name}: {other:?}"),
            }
        }
        assert!(!judged.passed(), "wal_level and public.d still fail");
        let only_tables = Report {
            checks: report.checks[1..4].to_vec(),
            ..Report::default()
        };
        assert!(!only_tables.passed());
        assert!(judge(&only_tables, &decisions).passed());
        assert!(!judge(&only_tables, &decisions[..2]).passed());
    }
}
