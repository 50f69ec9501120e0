//! The server and its settings: order, stages skipped after a failure, login, settings, grants.

use super::*;

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
        error: Box::new(crate::source::error::ServerError {
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
