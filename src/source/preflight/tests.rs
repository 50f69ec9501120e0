use super::*;
use crate::source::identity::Missing;

fn info() -> ConnInfo {
    ConnInfo::parse("postgresql://app:s3cret@db.example.com:5432/shop").unwrap()
}

fn table(schema: &str, name: &str) -> TableName {
    TableName {
        schema: schema.into(),
        name: name.into(),
    }
}

/// A source that passes every check: tributary's role is a superuser-free replication
/// role with every grant.
fn healthy() -> Server {
    Server {
        version: Version {
            num: 150_004,
            text: "15.4".into(),
        },
        in_recovery: false,
        wal_level: "logical".into(),
        max_slots: 10,
        slots: vec![Slot {
            name: "other".into(),
            active: true,
            temporary: false,
            here: true,
        }],
        max_senders: 10,
        active_senders: 1,
        role: Role {
            name: "app".into(),
            superuser: false,
            replication: true,
            on_rds: false,
            rds_replication: false,
        },
        database: "shop".into(),
        can_create: true,
        capture: CaptureStatus::Missing,
        capture_key_readable: false,
        slot_wal_keep_mb: 10_240,
        max_wal_size_mb: 1024,
        wal_sender_timeout: "1min".into(),
        large_objects: 0,
        prepared: Vec::new(),
        schemas: vec![Schema {
            name: "public".into(),
            exists: true,
            usage: true,
        }],
        relations: vec![
            Relation {
                name: table("public", "orders"),
                kind: RelationKind::Table,
                owner: "owner".into(),
                can_select: true,
                unlogged: false,
            },
            Relation {
                name: table("public", "orders_id_seq"),
                kind: RelationKind::Sequence,
                owner: "owner".into(),
                can_select: true,
                unlogged: false,
            },
        ],
        tables: vec![Table {
            name: table("public", "orders"),
            identity: ReplicaIdentity::PrimaryKey,
            usable_index: None,
        }],
        numeric_columns: vec!["public.orders.total (numeric(10,2))".into()],
        foreign_keys: vec![],
        plugins: PluginList::from_setting(Some("pgoutput, test_decoding, wal2json")).unwrap(),
    }
}

/// What `gather` makes of `server`: the probe blocked for `probe_blocker`'s reason, or
/// run successfully, with `numeric_as_string` as its answer.
fn ready_with(server: Server, numeric_as_string: bool) -> Gathered {
    let probe = match probe_blocker(&server) {
        Some(reason) => Probe::Blocked(reason),
        None => Probe::Ran {
            system_id: "7301".into(),
            slot: SlotName::new("tributary_preflight_1_2").unwrap(),
            dropped: Ok(()),
            numeric_as_string: Ok(numeric_as_string),
        },
    };
    Gathered::Ready {
        encryption: Encryption::Tls("TLSv1.3"),
        server: Box::new(server),
        probe,
    }
}

fn ready(server: Server) -> Gathered {
    ready_with(server, true)
}

fn judged(gathered: &Gathered) -> Report {
    judge(
        &info(),
        &["public".to_owned()],
        gathered,
        &KnownSources::Known {
            installation: None,
            slots: vec![],
            connectors: vec![],
        },
    )
}

fn check<'a>(report: &'a Report, name: &str) -> &'a Outcome {
    &report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {:#?}", report.checks))
        .outcome
}

fn failed(report: &Report) -> Vec<&str> {
    report
        .checks
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fail { .. }))
        .map(|c| c.name.as_str())
        .collect()
}

#[track_caller]
fn assert_fails(outcome: &Outcome, value: &str, fix: &str) {
    let Outcome::Fail { value: v, fix: f } = outcome else {
        panic!("expected a failure, got {outcome:?}")
    };
    assert!(v.contains(value), "{v:?} lacks {value:?}");
    assert!(f.contains(fix), "{f:?} lacks {fix:?}");
}

#[test]
fn a_healthy_source_passes_in_order_without_a_script() {
    let report = judged(&ready(healthy()));
    assert!(report.passed(), "{:#?}", report.checks);
    assert_eq!(report.grant_script, None);
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    let expected: Vec<String> = ORDER
        .iter()
        .map(|&n| {
            if n == SCHEMAS {
                schema_check("public")
            } else {
                n.to_owned()
            }
        })
        .collect();
    assert_eq!(names, expected);
    // A replication role is not a superuser: the only warning is about event triggers.
    let warnings: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Warn { .. }))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(warnings, [EVENT_TRIGGERS]);
}

#[test]
fn a_pending_prepared_transaction_is_named_where_the_slot_would_wait() {
    let mut server = healthy();
    server.prepared = vec![PreparedXact {
        gid: "tx-1".into(),
        owner: "app".into(),
        database: "shop".into(),
        prepared: "2024-05-01 10:00:00 UTC".into(),
    }];
    let gathered = Gathered::Ready {
        encryption: Encryption::Plain,
        server: Box::new(server),
        probe: Probe::TimedOut,
    };
    let report = judged(&gathered);
    assert_eq!(failed(&report), [WAL2JSON]);
    let Outcome::Fail { fix, .. } = check(&report, WAL2JSON) else {
        unreachable!()
    };
    assert!(
        fix.contains("pg_prepared_xacts") && fix.contains("COMMIT PREPARED 'tx-1'"),
        "{fix}"
    );
    assert!(!fix.contains("FROM pg_stat_activity"), "{fix}");
    let Outcome::Warn { value, .. } = check(&report, PREPARED) else {
        panic!("{:?}", check(&report, PREPARED))
    };
    assert_eq!(
        value,
        "'tx-1' (owner app, database shop, prepared at 2024-05-01 10:00:00 UTC)"
    );
}

#[test]
fn an_unreachable_server_skips_everything_after_tcp() {
    let error = Error::Closed {
        target: "db.example.com:5432".into(),
    };
    let report = judged(&Gathered::Unreachable(error));
    assert!(!report.passed());
    assert_eq!(failed(&report), [TCP]);
    // Every later check, the per-schema one included, is listed as skipped.
    assert_eq!(report.checks.len(), ORDER.len());
    assert!(report.checks[1..].iter().all(
        |c| matches!(&c.outcome, Outcome::Skip { reason } if reason.contains("not reachable"))
    ));
    assert_eq!(report.grant_script, None);
}

#[test]
fn a_login_failure_names_the_fix() {
    let error = Error::Server {
        target: "db.example.com:5432".into(),
        error: Box::new(super::super::ServerError {
            severity: "FATAL".into(),
            code: "28P01".into(),
            message: "password authentication failed for user \"app\"".into(),
            detail: None,
            hint: None,
        }),
    };
    let report = judged(&Gathered::LoginFailed {
        encryption: Encryption::Plain,
        error,
    });
    assert_eq!(failed(&report), [AUTH]);
    assert_fails(
        check(&report, AUTH),
        "password authentication failed",
        "password in the URL",
    );
    assert!(matches!(check(&report, TLS), Outcome::Warn { .. }));
    assert!(matches!(check(&report, WAL_LEVEL), Outcome::Skip { .. }));
}

#[test]
fn missing_settings_fail_and_the_script_raises_them_only() {
    let mut server = healthy();
    server.wal_level = "replica".into();
    server.max_slots = 2;
    server.slots = vec![
        Slot {
            name: "busy".into(),
            active: true,
            temporary: false,
            here: true,
        },
        Slot {
            name: "forgotten".into(),
            active: false,
            temporary: false,
            here: true,
        },
    ];
    let report = judged(&ready(server));
    assert_eq!(failed(&report), [WAL_LEVEL, SLOTS]);
    assert_fails(
        check(&report, SLOTS),
        "2/2 used, none free",
        "SELECT pg_drop_replication_slot('forgotten');",
    );
    assert_eq!(
        check(&report, WAL2JSON),
        &Outcome::Skip {
            reason: "needs wal_level = logical".into()
        }
    );
    let script = report.grant_script.expect("a script");
    assert!(script.contains(
        "SELECT 'ALTER SYSTEM SET wal_level = logical' WHERE \
         pg_catalog.current_setting('wal_level') <> 'logical'\n\\gexec"
    ));
    assert!(script.contains(
        "SELECT 'ALTER SYSTEM SET max_replication_slots = 10' WHERE \
         pg_catalog.current_setting('max_replication_slots')::int < 10\n\\gexec"
    ));
    assert!(!script.contains("max_wal_senders ="), "{script}");
    assert!(!script.contains("REPLICATION;"), "{script}");
    assert!(script.contains("restart"), "{script}");
}

#[test]
fn missing_grants_are_named_and_scripted_for_every_owner() {
    let mut server = healthy();
    server.role.replication = false;
    server.can_create = false;
    server.schemas = vec![
        Schema {
            name: "public".into(),
            exists: true,
            usage: true,
        },
        Schema {
            name: "Billing \"Dept\"".into(),
            exists: true,
            usage: false,
        },
        Schema {
            name: "gone".into(),
            exists: false,
            usage: false,
        },
    ];
    server.relations[0].can_select = false;
    server.relations.push(Relation {
        name: table("Billing \"Dept\"", "invoices"),
        kind: RelationKind::Table,
        owner: "billing owner".into(),
        can_select: false,
        unlogged: false,
    });
    let schemas = [
        "public".to_owned(),
        "Billing \"Dept\"".into(),
        "gone".into(),
    ];
    let report = judge(
        &info(),
        &schemas,
        &ready(server),
        &KnownSources::Unavailable("no store".into()),
    );
    assert_fails(
        check(&report, "schema public"),
        "missing SELECT on table public.orders",
        "GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"app\";",
    );
    assert_fails(
        check(&report, "schema Billing \"Dept\""),
        "missing USAGE; SELECT on table Billing \"Dept\".invoices",
        "GRANT USAGE ON SCHEMA \"Billing \"\"Dept\"\"\" TO \"app\";",
    );
    assert_fails(check(&report, "schema gone"), "does not exist", "--schemas");
    assert_fails(
        check(&report, CREATE),
        "missing on database shop",
        "GRANT CREATE",
    );
    assert_fails(
        check(&report, REPLICATION),
        "neither",
        "ALTER ROLE \"app\" REPLICATION;",
    );
    assert_eq!(
        check(&report, DUPLICATE),
        &Outcome::Skip {
            reason: "no store".into()
        }
    );

    let script = report.grant_script.expect("a script");
    for line in [
        "\\connect 'shop'",
        "GRANT CONNECT, CREATE ON DATABASE \"shop\" TO \"app\";",
        "GRANT USAGE ON SCHEMA \"public\" TO \"app\";",
        "GRANT SELECT ON ALL SEQUENCES IN SCHEMA \"public\" TO \"app\";",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA \"public\" GRANT SELECT ON TABLES TO \"app\";",
        "ALTER DEFAULT PRIVILEGES FOR ROLE \"owner\" IN SCHEMA \"public\" GRANT SELECT ON \
         TABLES TO \"app\";",
        "ALTER DEFAULT PRIVILEGES FOR ROLE \"billing owner\" IN SCHEMA \
         \"Billing \"\"Dept\"\"\" GRANT SELECT ON SEQUENCES TO \"app\";",
        "-- Schema \"gone\" does not exist: nothing to grant (check --schemas).",
        "ALTER ROLE \"app\" REPLICATION;",
    ] {
        assert!(
            script.lines().any(|l| l == line),
            "no {line:?} in\n{script}"
        );
    }
    // Owners are per schema, and settings that suffice are left alone.
    assert!(!script.contains("FOR ROLE \"billing owner\" IN SCHEMA \"public\""));
    assert!(!script.contains("ALTER SYSTEM"), "{script}");
}

#[test]
fn rds_gets_its_own_replication_grant_and_no_alter_system() {
    let mut server = healthy();
    server.role.replication = false;
    server.role.on_rds = true;
    server.wal_level = "replica".into();
    let report = judged(&ready(server));
    assert_fails(
        check(&report, REPLICATION),
        "neither",
        "GRANT rds_replication TO \"app\";",
    );
    let script = report.grant_script.expect("a script");
    assert!(
        script.contains("GRANT rds_replication TO \"app\";"),
        "{script}"
    );
    assert!(script.contains("rds.logical_replication = 1"), "{script}");
    assert!(!script.contains("ALTER SYSTEM SET"), "{script}");
    assert!(!script.contains("ALTER ROLE"), "{script}");
}

/// What `gather` makes of `server` when the probe slot is refused with 42501.
fn probe_refused(server: Server) -> Gathered {
    Gathered::Ready {
        encryption: Encryption::Plain,
        server: Box::new(server),
        probe: Probe::Failed(Error::Server {
            target: "db.example.com:5432".into(),
            error: Box::new(crate::source::ServerError {
                severity: "ERROR".into(),
                code: "42501".into(),
                message: "library \"wal2json\" may not be used as an output plugin".into(),
                detail: None,
                hint: Some("add it to \"output_plugin_libraries\"".into()),
            }),
        }),
    }
}

fn plugin_list(value: &str) -> PluginList {
    PluginList::from_setting(Some(value)).unwrap()
}

#[test]
fn a_refused_wal2json_names_the_setting_and_the_statement_that_keeps_its_entries() {
    let mut server = healthy();
    server.plugins = plugin_list("pgoutput, test_decoding, decoder_raw");
    let report = judged(&probe_refused(server));
    assert_eq!(failed(&report), [WAL2JSON]);
    assert_fails(
        check(&report, WAL2JSON),
        "refused: output_plugin_libraries is 'pgoutput, test_decoding, decoder_raw', \
         without wal2json (ERROR 42501: library \"wal2json\" may not be used",
        "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
         'decoder_raw', 'wal2json'; SELECT pg_reload_conf();",
    );
    let Outcome::Fail { fix, .. } = check(&report, WAL2JSON) else {
        unreachable!()
    };
    assert!(!fix.contains("REPLICATION"), "{fix}");
    assert!(matches!(check(&report, NUMERIC), Outcome::Skip { .. }));
    let script = report.grant_script.expect("a script");
    assert!(
        script.contains(&format!(
            "{}\n\\gexec\nSELECT pg_catalog.pg_reload_conf();\n",
            crate::source::output_plugins::ADD_WAL2JSON_SQL
        )),
        "{script}"
    );
    assert!(
        script.contains(
            "-- As preflight read it: ALTER SYSTEM SET output_plugin_libraries = \
             'pgoutput', 'test_decoding', 'decoder_raw', 'wal2json';"
        ),
        "{script}"
    );
    // Nothing else was missing: no REPLICATION, no restart.
    assert!(!script.contains("REPLICATION;"), "{script}");
    assert!(!script.contains("restart of the server"), "{script}");
}

#[test]
fn a_refusal_the_role_cannot_read_is_fixed_by_a_statement_the_server_computes() {
    let mut server = healthy();
    server.plugins = PluginList::Unreadable;
    let report = judged(&probe_refused(server));
    assert_fails(
        check(&report, WAL2JSON),
        "refused by the source's output_plugin_libraries, which does not list wal2json \
         (ERROR 42501:",
        "may not read the list (that needs superuser or pg_read_all_settings): the grant \
         script below computes the statement",
    );
    let script = report.grant_script.expect("a script");
    assert!(
        script.contains(crate::source::output_plugins::ADD_WAL2JSON_SQL),
        "{script}"
    );
    assert!(!script.contains("As preflight read it"), "{script}");
}

#[test]
fn the_list_read_fails_the_line_even_when_the_probe_could_not_run() {
    let mut server = healthy();
    server.role.replication = false;
    server.plugins = plugin_list("pgoutput, test_decoding");
    let report = judged(&ready(server));
    assert_eq!(failed(&report), [REPLICATION, WAL2JSON]);
    assert_fails(
        check(&report, WAL2JSON),
        "without wal2json (the probe did not run: needs the REPLICATION privilege)",
        "'test_decoding', 'wal2json';",
    );
    let script = report.grant_script.expect("a script");
    assert!(
        script.contains("ALTER ROLE \"app\" REPLICATION;"),
        "{script}"
    );
    assert!(
        script.contains("\\gexec\nSELECT pg_catalog.pg_reload_conf();"),
        "{script}"
    );

    // Unread and unprobed: unknown, so the line is skipped, and the script adds wal2json
    // only where it is missing.
    let mut server = healthy();
    server.role.replication = false;
    server.plugins = PluginList::Unreadable;
    let report = judged(&ready(server));
    assert_eq!(
        check(&report, WAL2JSON),
        &Outcome::Skip {
            reason: "needs the REPLICATION privilege".into()
        }
    );
    let script = report.grant_script.expect("a script");
    assert!(
        script.contains("whether it lists wal2json is not known"),
        "{script}"
    );
    assert!(script.contains("pg_catalog.pg_reload_conf()"), "{script}");
}

#[test]
fn other_42501s_and_allowed_lists_are_not_called_refusals() {
    for plugins in [PluginList::Absent, plugin_list("pgoutput, wal2json")] {
        let mut server = healthy();
        server.plugins = plugins.clone();
        let report = judged(&probe_refused(server));
        assert_fails(
            check(&report, WAL2JSON),
            "the probe slot could not be created",
            "see the error",
        );
        assert_eq!(report.grant_script, None, "{plugins:?}");
    }
    // A probe that ran: whatever the list says, nothing to allow.
    let mut server = healthy();
    server.plugins = PluginList::Unreadable;
    let report = judged(&ready(server));
    assert!(report.passed(), "{:#?}", report.checks);
    assert_eq!(report.grant_script, None);
}

#[test]
fn rds_is_told_to_use_its_parameter_group() {
    let mut server = healthy();
    server.role.on_rds = true;
    server.plugins = plugin_list("pgoutput, test_decoding");
    let report = judged(&probe_refused(server));
    assert_fails(check(&report, WAL2JSON), "refused", "DB parameter group");
    let script = report.grant_script.expect("a script");
    assert!(script.contains("in the DB parameter group"), "{script}");
    assert!(!script.contains("ALTER SYSTEM SET"), "{script}");
    assert!(!script.contains("\\gexec"), "{script}");
}

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
