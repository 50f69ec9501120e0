//! The tables and the source: identities, unlogged tables, numeric columns, large objects, slots here, duplicates, risky settings.

use super::*;

#[test]
fn tables_without_an_identity_fail_one_by_one() {
    let mut server = healthy();
    server.tables = vec![
        Table {
            name: table("public", "ok"),
            identity: ReplicaIdentity::Full,
            usable_index: None,
        },
        Table {
            name: table("public", "keyless"),
            identity: ReplicaIdentity::Nothing(Missing::NoKey),
            usable_index: None,
        },
        Table {
            name: table("public", "coded"),
            identity: ReplicaIdentity::Nothing(Missing::NoKey),
            usable_index: Some("coded_code_key".into()),
        },
        Table {
            name: table("public", "silent"),
            identity: ReplicaIdentity::Nothing(Missing::Declared { primary_key: false }),
            usable_index: None,
        },
        Table {
            name: table("public", "muted"),
            identity: ReplicaIdentity::Nothing(Missing::Declared { primary_key: true }),
            usable_index: Some("muted_pkey".into()),
        },
    ];
    let report = judged(&ready(server));
    assert_eq!(
        failed(&report),
        [
            "replica identity public.keyless",
            "replica identity public.coded",
            "replica identity public.silent",
            "replica identity public.muted"
        ]
    );
    // A key that only the setting keeps from serving: no primary key to add.
    assert_fails(
        check(&report, "replica identity public.muted"),
        "NOTHING although it has a primary key",
        "ALTER TABLE \"public\".\"muted\" REPLICA IDENTITY DEFAULT;",
    );
    let Outcome::Fail { fix, .. } = check(&report, "replica identity public.muted") else {
        unreachable!()
    };
    assert!(!fix.contains("primary key;"), "{fix}");
    assert_fails(
        check(&report, "replica identity public.keyless"),
        "no primary key",
        "ALTER TABLE \"public\".\"keyless\" REPLICA IDENTITY FULL;",
    );
    assert_fails(
        check(&report, "replica identity public.coded"),
        "coded_code_key could serve",
        "ALTER TABLE \"public\".\"coded\" REPLICA IDENTITY USING INDEX \"coded_code_key\";",
    );
    assert_fails(
        check(&report, "replica identity public.silent"),
        "NOTHING",
        "add a primary key",
    );
    // Replica identity is the operator's decision: the grant script stays out of it.
    assert_eq!(report.grant_script, None);
    // `connector create` asks for decisions about these tables instead of refusing.
    let keyless: Vec<String> = report
        .without_identity()
        .map(|t| display(&t.name))
        .collect();
    assert_eq!(
        keyless,
        [
            "public.keyless",
            "public.coded",
            "public.silent",
            "public.muted"
        ]
    );
    assert_eq!(report.blocking_failures().count(), 0);
    assert_eq!(
        replica_identity_full_sql(&table("public", "keyless")),
        "ALTER TABLE \"public\".\"keyless\" REPLICA IDENTITY FULL;"
    );
    let mut server = healthy();
    server.wal_level = "replica".into();
    server.tables = vec![Table {
        name: table("public", "keyless"),
        identity: ReplicaIdentity::Nothing(Missing::NoKey),
        usable_index: None,
    }];
    let report = judged(&ready(server));
    let blocking: Vec<&str> = report
        .blocking_failures()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(blocking, [WAL_LEVEL]);
}

#[test]
fn a_deferrable_key_or_a_dropped_identity_index_is_no_identity() {
    let mut server = healthy();
    let no_identity = |name: &str, missing: Missing, usable_index: Option<&str>| Table {
        name: table("public", name),
        identity: ReplicaIdentity::Nothing(missing),
        usable_index: usable_index.map(Into::into),
    };
    server.tables = vec![
        no_identity("deferred", Missing::DeferrableKey, None),
        no_identity(
            "reindexed",
            Missing::IndexDropped,
            Some("reindexed_code_key"),
        ),
        no_identity("unindexed", Missing::IndexDropped, None),
    ];
    let report = judged(&ready(server));
    assert_fails(
        check(&report, "replica identity public.deferred"),
        "primary key is DEFERRABLE",
        "re-create the primary key NOT DEFERRABLE; or ALTER TABLE \"public\".\"deferred\" \
         REPLICA IDENTITY FULL;",
    );
    assert_fails(
        check(&report, "replica identity public.reindexed"),
        "USING INDEX was dropped",
        "ALTER TABLE \"public\".\"reindexed\" REPLICA IDENTITY USING INDEX \
         \"reindexed_code_key\";",
    );
    assert_fails(
        check(&report, "replica identity public.unindexed"),
        "USING INDEX was dropped",
        "REPLICA IDENTITY FULL;",
    );
    // All three go to `connector create`'s decisions, as keyless tables do.
    assert_eq!(report.without_identity().count(), 3);
    assert_eq!(report.blocking_failures().count(), 0);
}

#[test]
fn unlogged_tables_are_listed_as_not_replicated() {
    let report = judged(&ready(healthy()));
    assert!(matches!(check(&report, UNLOGGED), Outcome::Pass { value } if value == "none"));
    let mut server = healthy();
    server.relations.push(Relation {
        name: table("public", "scratch"),
        kind: RelationKind::Table,
        owner: "owner".into(),
        can_select: true,
        unlogged: true,
    });
    let report = judged(&ready(server));
    match check(&report, UNLOGGED) {
        Outcome::Warn { value, fix } => {
            assert!(value.contains("1 not replicated"), "{value}");
            assert!(value.contains("public.scratch"), "{value}");
            assert!(fix.contains("its definition without rows"), "{fix}");
            assert!(fix.contains("SET LOGGED"), "{fix}");
        }
        other => panic!("{other:?}"),
    }
    assert!(report.passed());
}

#[test]
fn wal2json_without_numeric_as_string_lists_the_affected_columns() {
    let report = judged(&ready_with(healthy(), false));
    let Outcome::Warn { value, .. } = check(&report, NUMERIC) else {
        panic!("{:?}", check(&report, NUMERIC))
    };
    assert!(
        value.contains("public.orders.total (numeric(10,2))"),
        "{value}"
    );
    assert!(report.passed());
    assert_eq!(
        report.nan_as_null_columns,
        ["public.orders.total (numeric(10,2))"]
    );
    let exact = judged(&ready_with(healthy(), true));
    assert!(exact.nan_as_null_columns.is_empty());
}

#[test]
fn large_objects_are_counted_and_said_to_stay_behind() {
    let report = judged(&ready(healthy()));
    assert!(matches!(
        check(&report, LARGE_OBJECTS),
        Outcome::Pass { .. }
    ));
    let mut server = healthy();
    server.large_objects = 3;
    let report = judged(&ready(server));
    let Outcome::Warn { value, .. } = check(&report, LARGE_OBJECTS) else {
        panic!("{:?}", check(&report, LARGE_OBJECTS))
    };
    assert!(value.starts_with("3 large objects"), "{value}");
    assert!(report.passed());
}

#[test]
fn leftover_probe_slots_come_with_the_statement_that_drops_them() {
    let mut server = healthy();
    server.slots.push(Slot {
        name: "tributary_preflight_9_9".into(),
        active: false,
        temporary: false,
        here: true,
    });
    // A running probe's slot is temporary, and no leftover.
    server.slots.push(Slot {
        name: "tributary_probe_8_8".into(),
        active: true,
        temporary: true,
        here: true,
    });
    let report = judged(&ready(server));
    let Outcome::Warn { value, fix } = check(&report, LEFTOVERS) else {
        panic!("{:?}", check(&report, LEFTOVERS))
    };
    assert_eq!(value, "tributary_preflight_9_9 (persistent: retaining WAL)");
    assert_eq!(
        fix,
        "drop them: SELECT pg_drop_replication_slot('tributary_preflight_9_9');"
    );
}

#[test]
fn other_installations_slots_here_are_warned_about_with_the_drops_of_inactive_ones() {
    let mut server = healthy();
    let slot = |name: &str, active, here| Slot {
        name: name.into(),
        active,
        temporary: false,
        here,
    };
    server.slots.extend([
        slot("tributary_k3x9qa7b_1_app", true, true),
        slot("tributary_zz00aa11_1_app", true, true),
        slot("tributary_2_app", false, true),
        // Another database's slots are that database's business.
        slot("tributary_yy00aa11_1_app", false, false),
    ]);
    let known = |slots: Vec<SlotName>| KnownSources::Known {
        installation: Some(InstallationId::new("k3x9qa7b").unwrap()),
        slots,
        connectors: vec![],
    };
    let ours = vec![SlotName::new("tributary_k3x9qa7b_1_app").unwrap()];
    let report = judge(
        &info(),
        &["public".to_owned()],
        &ready(server),
        &known(ours),
    );
    assert!(report.passed(), "a warning only");
    let Outcome::Warn { value, fix } = check(&report, INSTALLATIONS) else {
        panic!("{:?}", check(&report, INSTALLATIONS))
    };
    assert_eq!(
        value,
        "tributary_zz00aa11_1_app (installation zz00aa11, streaming), tributary_2_app (a \
         tributary from before installation ids, inactive)"
    );
    assert!(fix.contains("retains WAL"), "{fix}");
    assert!(
        fix.ends_with("dropped with: SELECT pg_drop_replication_slot('tributary_2_app');"),
        "{fix}"
    );

    let report = judge(
        &info(),
        &["public".to_owned()],
        &ready(healthy()),
        &known(vec![]),
    );
    assert_eq!(
        check(&report, INSTALLATIONS),
        &Outcome::Pass {
            value: "no other tributary slot in this database".into()
        }
    );
}

#[test]
fn a_database_with_a_connector_is_a_duplicate_by_identity_or_address() {
    let by_identity = KnownSource {
        connector: "shop".into(),
        identity: Some(SourceIdentity {
            system_id: "7301".into(),
            database: "shop".into(),
        }),
        address: Some(("elsewhere:5432".into(), "shop".into())),
    };
    let by_address = KnownSource {
        connector: "fresh".into(),
        identity: None,
        address: Some(("DB.example.com:5432".into(), "shop".into())),
    };
    let other_cluster = KnownSource {
        connector: "other".into(),
        identity: Some(SourceIdentity {
            system_id: "9999".into(),
            database: "shop".into(),
        }),
        address: Some(("db.example.com:5432".into(), "shop".into())),
    };
    let info = info();
    assert!(is_same_source(&by_identity, Some("7301"), "shop", &info));
    assert!(!is_same_source(&by_identity, Some("7301"), "sales", &info));
    assert!(is_same_source(&by_address, Some("7301"), "shop", &info));
    assert!(!is_same_source(&other_cluster, Some("7301"), "shop", &info));
    // Without a system identifier (no replication connection), the address decides.
    assert!(is_same_source(&other_cluster, None, "shop", &info));

    let report = judge(
        &info,
        &["public".to_owned()],
        &ready(healthy()),
        &KnownSources::Known {
            installation: None,
            slots: vec![],
            connectors: vec![by_identity],
        },
    );
    assert_fails(
        check(&report, DUPLICATE),
        "connector shop already replicates database shop of system 7301",
        "tributary connector delete shop",
    );
}

#[test]
fn risky_slot_and_sender_settings_are_warnings() {
    let mut server = healthy();
    server.slot_wal_keep_mb = -1;
    server.wal_sender_timeout = "0".into();
    server.active_senders = 9;
    let report = judged(&ready(server));
    assert!(report.passed());
    assert!(
        matches!(check(&report, SLOT_WAL_KEEP), Outcome::Warn { value, .. } if value == "-1 (unlimited)")
    );
    assert!(
        matches!(check(&report, SENDER_TIMEOUT), Outcome::Warn { value, .. } if value == "0 (disabled)")
    );
    assert!(matches!(check(&report, SENDERS), Outcome::Warn { .. }));

    let mut server = healthy();
    server.slot_wal_keep_mb = 256;
    server.wal_sender_timeout = "5s".into();
    let report = judged(&ready(server));
    assert!(
        matches!(check(&report, SLOT_WAL_KEEP), Outcome::Warn { fix, .. } if fix.contains("invalidated"))
    );
    assert!(matches!(
        check(&report, SENDER_TIMEOUT),
        Outcome::Warn { .. }
    ));
}

#[test]
fn psql_arguments_are_quoted() {
    assert_eq!(psql_quote("shop"), "'shop'");
    assert_eq!(psql_quote(r"it's a\b"), r"'it''s a\\b'");
}
