//! wal2json's line: a refusal by output_plugin_libraries and the statement that fixes it.

use super::*;

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
