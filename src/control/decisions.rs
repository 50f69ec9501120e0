//! Preflight judged with the operator's replica identity decisions: a table one means to
//! exclude (or to fix before the snapshot) no longer fails preflight, so "preflight must
//! pass" gates the same sources `connector create` accepts with the same flags.

use crate::bookkeeping::TableDecision;
use crate::change::TableName;
use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::source::preflight::{
    identity_check, replica_identity_full_sql, Outcome, Report, TableIdentity,
};

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

/// Decisions that do not match the source's tables: every problem, one a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the replica identity decisions do not match the source:\n{}",
    .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
)]
pub struct Mismatch(pub Vec<String>);

/// The decisions that stand from `existing` for the tables of `report`: an exclusion while
/// the table exists, key or not; the other decisions only while it has no usable identity.
pub fn standing(
    existing: &[(TableName, TableDecision)],
    report: &Report,
) -> Vec<(TableName, TableDecision)> {
    existing
        .iter()
        .filter(|(table, decision)| {
            report.without_identity().any(|k| k.name == *table)
                || *decision == TableDecision::Exclude
                    && report.tables.iter().any(|t| t.name == *table)
        })
        .cloned()
        .collect()
}

/// Parses a decisions file as far as it can be checked without the source: JSON syntax,
/// an object, known values, no table twice; `Err` with every problem found.
pub fn parse_decisions(text: &str) -> Result<Vec<(String, TableDecision)>, Vec<String>> {
    let Entries(entries) = serde_json::from_str(text).map_err(|e| {
        let location = format!(" at line {} column {}", e.line(), e.column());
        let message = e.to_string();
        let message = message.strip_suffix(&location).unwrap_or(&message);
        let what = if e.is_data() {
            "not a decisions object"
        } else {
            "malformed JSON"
        };
        vec![format!(
            "{what} at line {}, column {}: {message}",
            e.line(),
            e.column()
        )]
    })?;
    let mut problems = Vec::new();
    let mut decisions = Vec::with_capacity(entries.len());
    let mut seen = HashSet::new();
    for (table, value) in entries {
        if !seen.insert(table.clone()) {
            problems.push(format!("\"{table}\": decided more than once"));
            continue;
        }
        match value.as_str().and_then(TableDecision::parse) {
            Some(decision) => decisions.push((table, decision)),
            None => problems.push(format!(
                "\"{table}\": bad value {value}; allowed: {}",
                allowed_values()
            )),
        }
    }
    if problems.is_empty() {
        Ok(decisions)
    } else {
        Err(problems)
    }
}

/// Matches the file's decisions with the source's tables: every name must be a table of
/// the selected schemas, without a usable replica identity unless it is excluded, and every
/// table without one must be decided.
pub fn match_decisions(
    entries: &[(String, TableDecision)],
    tables: &[TableIdentity],
    keyless: &[&TableIdentity],
    schemas: &[String],
) -> Result<Vec<(TableName, TableDecision)>, Mismatch> {
    let mut problems = Vec::new();
    let mut decisions = Vec::new();
    for (key, decision) in entries {
        match tables.iter().find(|t| t.name.to_string() == *key) {
            None => problems.push(format!(
                "unknown table \"{key}\": no such table in schema{} {} (write \"schema.table\")",
                if schemas.len() == 1 { "" } else { "s" },
                schemas.join(", ")
            )),
            Some(t)
                if *decision != TableDecision::Exclude
                    && !keyless.iter().any(|k| k.name == t.name) =>
            {
                problems.push(format!(
                    "\"{key}\" has a usable replica identity and needs no decision: remove it \
                     (or \"exclude\" it to leave it out)"
                ))
            }
            Some(t) => decisions.push((t.name.clone(), *decision)),
        }
    }
    let undecided: Vec<String> = keyless
        .iter()
        .filter(|k| !decisions.iter().any(|(name, _)| *name == k.name))
        .map(|k| k.name.to_string())
        .collect();
    if !undecided.is_empty() {
        problems.push(format!(
            "undecided table{} without a usable replica identity: {} (add {}, each with one of \
             {})",
            if undecided.len() == 1 { "" } else { "s" },
            undecided.join(", "),
            if undecided.len() == 1 { "it" } else { "them" },
            allowed_values()
        ));
    }
    if problems.is_empty() {
        Ok(decisions)
    } else {
        Err(Mismatch(problems))
    }
}

/// The values a decision takes, quoted, for messages.
pub fn allowed_values() -> String {
    TableDecision::ALL
        .iter()
        .map(|d| format!("\"{d}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A decisions file's entries in file order, values not yet checked. Keeping every entry
/// (a map would keep only the last of two equal keys) lets repetitions be reported.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of \"schema.table\": decision")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::catalog::{Missing, ReplicaIdentity};
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

    fn identity(name: &str, identity: ReplicaIdentity) -> TableIdentity {
        TableIdentity {
            name: TableName {
                schema: "public".into(),
                name: name.into(),
            },
            identity,
        }
    }

    #[test]
    fn decisions_files_are_checked_precisely() {
        let problems =
            parse_decisions("{\n  \"public.a\": \"exclude\",\n  \"public.b\"\n}").unwrap_err();
        assert_eq!(
            problems,
            ["malformed JSON at line 4, column 1: expected `:`"]
        );
        let problems = parse_decisions("[1]").unwrap_err();
        assert!(
            problems[0].starts_with("not a decisions object at line 1"),
            "{problems:?}"
        );
        let problems = parse_decisions(
            r#"{"public.a": "drop", "public.b": 3, "public.c": "add_pk", "public.c": "exclude"}"#,
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "\"public.a\": bad value \"drop\"; allowed: \"exclude\", \"add_pk\", \
                 \"replica_identity_full\"",
                "\"public.b\": bad value 3; allowed: \"exclude\", \"add_pk\", \
                 \"replica_identity_full\"",
                "\"public.c\": decided more than once",
            ]
        );
        assert_eq!(
            parse_decisions(r#"{"public.a": "replica_identity_full"}"#).unwrap(),
            [("public.a".to_owned(), TableDecision::ReplicaIdentityFull)]
        );
    }

    #[test]
    fn decisions_must_name_every_keyless_table_and_may_exclude_others() {
        let tables = [
            identity("keyed", ReplicaIdentity::PrimaryKey),
            identity("k1", ReplicaIdentity::Nothing(Missing::NoKey)),
            identity("k2", ReplicaIdentity::Nothing(Missing::NoKey)),
        ];
        let keyless: Vec<&TableIdentity> = tables[1..].iter().collect();
        let schemas = ["public".to_owned()];
        let entries = [
            ("public.k1".to_owned(), TableDecision::AddPk),
            ("public.nope".to_owned(), TableDecision::Exclude),
            (
                "public.keyed".to_owned(),
                TableDecision::ReplicaIdentityFull,
            ),
        ];
        let error = match_decisions(&entries, &tables, &keyless, &schemas)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown table \"public.nope\": no such table in schema public"),
            "{error}"
        );
        assert!(
            error.contains("\"public.keyed\" has a usable replica identity"),
            "{error}"
        );
        assert!(
            error.contains("undecided table without a usable replica identity: public.k2"),
            "{error}"
        );
        let entries = [
            ("public.k1".to_owned(), TableDecision::AddPk),
            ("public.k2".to_owned(), TableDecision::Exclude),
            ("public.keyed".to_owned(), TableDecision::Exclude),
        ];
        let decisions = match_decisions(&entries, &tables, &keyless, &schemas).unwrap();
        assert_eq!(decisions.len(), 3, "a keyed table may be excluded");
    }
}
