//! Judging what was gathered (pure), continued: the schemas and their grants, the tables,
//! foreign keys, the source's identity against known connectors and other installations,
//! and the settings that bound retained WAL.

use super::*;

pub(super) fn judge_schema(server: &Server, schema: &Schema) -> Check {
    let name = schema_check(&schema.name);
    let quoted = quote_ident(&schema.name);
    if !schema.exists {
        return Check::fail(
            name,
            "does not exist",
            format!("create schema {quoted} or correct --schemas"),
        );
    }
    let in_schema = || {
        server
            .relations
            .iter()
            .filter(|r| r.name.schema == schema.name)
    };
    let count = |kind| in_schema().filter(|r| r.kind == kind).count();
    let (tables, sequences) = (count(RelationKind::Table), count(RelationKind::Sequence));
    let unreadable: Vec<&Relation> = in_schema().filter(|r| !r.can_select).collect();
    if schema.usage && unreadable.is_empty() {
        return Check::pass(
            name,
            format!(
                "USAGE, and SELECT on its {tables} table{} and {sequences} sequence{}",
                plural(tables),
                plural(sequences)
            ),
        );
    }
    let role = quote_ident(&server.role.name);
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    if !schema.usage {
        missing.push("USAGE".to_owned());
        fixes.push(format!("GRANT USAGE ON SCHEMA {quoted} TO {role};"));
    }
    for kind in [RelationKind::Table, RelationKind::Sequence] {
        let names: Vec<String> = unreadable
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| display(&r.name))
            .collect();
        if names.is_empty() {
            continue;
        }
        let (noun, all) = match kind {
            RelationKind::Table => ("table", "TABLES"),
            RelationKind::Sequence => ("sequence", "SEQUENCES"),
        };
        missing.push(format!(
            "SELECT on {noun}{} {}",
            plural(names.len()),
            names.join(", ")
        ));
        fixes.push(format!(
            "GRANT SELECT ON ALL {all} IN SCHEMA {quoted} TO {role};"
        ));
    }
    Check::fail(
        name,
        format!("missing {}", missing.join("; ")),
        format!("{} (all in the grant script below)", fixes.join(" ")),
    )
}

pub(super) fn judge_create(server: &Server) -> Check {
    if server.can_create {
        Check::pass(CREATE, format!("granted on {}", server.database))
    } else {
        Check::fail(
            CREATE,
            format!("missing on database {}", server.database),
            format!(
                "GRANT CREATE ON DATABASE {} TO {}; (in the grant script below): tributary \
                 needs it to keep its own objects on the source, in a schema of its own",
                quote_ident(&server.database),
                quote_ident(&server.role.name)
            ),
        )
    }
}

/// Schema change capture: its objects installed at this version, installable by this
/// role, or neither (then only drift is detected).
pub(super) fn judge_event_triggers(server: &Server) -> Check {
    let source_sql = "run the SQL printed by `tributary connector source-sql` once as a \
                      superuser on the source";
    match server.capture {
        CaptureStatus::Installed if server.role.superuser || server.capture_key_readable => {
            Check::pass(
                EVENT_TRIGGERS,
                format!("schema change capture installed (version {CAPTURE_VERSION})"),
            )
        }
        CaptureStatus::Installed => Check::warn(
            EVENT_TRIGGERS,
            "schema change capture installed, but this role may not read its signing key",
            format!(
                "{} (as a superuser on the source); until then DDL is not captured",
                capture::grant_key_sql(&server.role.name)
            ),
        ),
        _ if server.role.superuser => Check::pass(
            EVENT_TRIGGERS,
            "schema change capture is installed by tributary at start (superuser)",
        ),
        CaptureStatus::Outdated { found } => Check::warn(
            EVENT_TRIGGERS,
            format!(
                "schema change capture is at version {}, tributary needs {CAPTURE_VERSION}",
                found.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
            ),
            format!("{source_sql} to upgrade it; until then DDL is not captured"),
        ),
        CaptureStatus::Missing => Check::warn(
            EVENT_TRIGGERS,
            "schema change capture not installed, and the role cannot (not a superuser)",
            format!(
                "{source_sql}; without it DDL is not replayed: added, dropped and retyped \
                 columns are reconciled when a change no longer fits, anything else stops \
                 the connector"
            ),
        ),
    }
}

/// One line when every table has an identity, else one failing line per table without.
pub(super) fn judge_identities(server: &Server) -> Vec<Check> {
    let tables = &server.tables;
    if tables.is_empty() {
        return vec![Check::warn(
            IDENTITY,
            "no tables in the selected schemas",
            "check --schemas: there is nothing to replicate yet",
        )];
    }
    let missing: Vec<Check> = tables
        .iter()
        .filter(|t| !t.identity.is_usable())
        .map(judge_missing_identity)
        .collect();
    if !missing.is_empty() {
        return missing;
    }
    let count = |f: fn(&ReplicaIdentity) -> bool| tables.iter().filter(|t| f(&t.identity)).count();
    let keys = count(|i| *i == ReplicaIdentity::PrimaryKey);
    let indexes = count(|i| matches!(i, ReplicaIdentity::Index(_)));
    let full = count(|i| *i == ReplicaIdentity::Full);
    vec![Check::pass(
        IDENTITY,
        format!(
            "{} table{}: {keys} primary key, {indexes} unique index, {full} FULL",
            tables.len(),
            plural(tables.len())
        ),
    )]
}

/// Foreign keys into tables outside the selected schemas cannot be restored on the
/// replica; `connector create` warns in the same way about those into excluded tables.
pub(super) fn judge_foreign_keys(server: &Server, schemas: &[String]) -> Check {
    let dangling: Vec<&ForeignKey> = server
        .foreign_keys
        .iter()
        .filter(|k| k.dangles(schemas, &[]))
        .collect();
    if dangling.is_empty() {
        return Check::pass(
            FOREIGN_KEYS,
            format!(
                "{} foreign key{}, all within the selected schemas",
                server.foreign_keys.len(),
                plural(server.foreign_keys.len())
            ),
        );
    }
    Check::warn(
        FOREIGN_KEYS,
        format!(
            "{} reference{} tables outside the selected schemas: {}",
            dangling.len(),
            if dangling.len() == 1 { "s" } else { "" },
            describe_foreign_keys(&dangling)
        ),
        "the replica and its branches will not have these constraints; add the referenced \
         schemas to --schemas to keep them",
    )
}

/// `table.constraint → referenced table`, comma-separated.
pub fn describe_foreign_keys(keys: &[&ForeignKey]) -> String {
    keys.iter()
        .map(|k| format!("{}.{} → {}", k.table, k.name, k.references))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn judge_duplicate(
    info: &ConnInfo,
    server: &Server,
    probe: &Probe,
    known: &KnownSources,
) -> Check {
    let connectors = match known {
        KnownSources::Unavailable(reason) => return Check::skip(DUPLICATE, reason.as_str()),
        KnownSources::Known { connectors, .. } => connectors,
    };
    let system_id = match probe {
        Probe::Ran { system_id, .. } => Some(system_id.as_str()),
        _ => None,
    };
    let this = match system_id {
        Some(id) => format!("database {} of system {id}", server.database),
        None => format!("database {} at {}", server.database, info.target()),
    };
    let same = connectors
        .iter()
        .find(|k| is_same_source(k, system_id, &server.database, info));
    match same {
        Some(k) => Check::fail(
            DUPLICATE,
            format!("connector {} already replicates {this}", k.connector),
            format!(
                "one connector per source database: keep using {0}, or delete it first \
                 (tributary connector delete {0})",
                k.connector
            ),
        ),
        None => Check::pass(
            DUPLICATE,
            format!(
                "no connector replicates {this} ({} connector{} on the branch store)",
                connectors.len(),
                plural(connectors.len())
            ),
        ),
    }
}

/// Other tributary installations (branch stores) replicating this database are fine
/// (staging beside production), but each has its own slot, which retains WAL on the source
/// until that installation confirms it: worth knowing, and a stopped or forgotten one
/// fills the source's disk.
pub(super) fn judge_installations(server: &Server, known: &KnownSources) -> Check {
    let (installation, ours) = match known {
        KnownSources::Unavailable(reason) => return Check::skip(INSTALLATIONS, reason.as_str()),
        KnownSources::Known {
            installation,
            slots,
            ..
        } => (installation.as_ref(), slots.as_slice()),
    };
    let here = server
        .slots
        .iter()
        .filter(|s| s.here && !s.temporary)
        .map(|s| (s.name.as_str(), s.active));
    let strangers = slot::strangers(installation, ours, here);
    if strangers.is_empty() {
        return Check::pass(INSTALLATIONS, "no other tributary slot in this database");
    }
    let listed: Vec<String> = strangers.iter().map(ToString::to_string).collect();
    let drops: Vec<String> = strangers
        .iter()
        .filter(|s| !s.active)
        .map(|s| {
            format!(
                "SELECT pg_drop_replication_slot({});",
                quote_literal(&s.name)
            )
        })
        .collect();
    let drops = if drops.is_empty() {
        String::new()
    } else {
        format!(
            "; an inactive slot whose installation or connector is gone is dropped with: {}",
            drops.join(" ")
        )
    };
    Check::warn(
        INSTALLATIONS,
        listed.join(", "),
        format!(
            "other tributary installations (branch stores) replicate this database, each from \
             its own slot, and every slot retains WAL on the source until its installation \
             confirms it: keep them running, or delete their connectors with that \
             installation's configuration (tributary connector delete){drops}"
        ),
    )
}

/// A connector set up before is recognised by the system identifier and database it
/// recorded, whatever address it uses; one never set up (or a source whose identity is
/// unknown here) by host, port and database.
pub(super) fn is_same_source(
    known: &KnownSource,
    system_id: Option<&str>,
    database: &str,
    info: &ConnInfo,
) -> bool {
    match (&known.identity, system_id) {
        (Some(identity), Some(system_id)) => {
            identity.system_id == system_id && identity.database == database
        }
        _ => known.address.as_ref().is_some_and(|(target, dbname)| {
            target.eq_ignore_ascii_case(&info.target()) && *dbname == info.dbname
        }),
    }
}

pub(super) fn judge_slot_wal_keep(server: &Server) -> Check {
    let mb = server.slot_wal_keep_mb;
    let floor = max(server.max_wal_size_mb, SMALL_SLOT_WAL_KEEP_MB);
    if mb < 0 {
        Check::warn(
            SLOT_WAL_KEEP,
            "-1 (unlimited)",
            "a slot that stops advancing (tributary stopped or failing) keeps WAL until the \
             disk is full: alert on tributary_slot_retained_wal_bytes, or set a limit larger \
             than the longest outage to survive",
        )
    } else if mb < floor {
        Check::warn(
            SLOT_WAL_KEEP,
            format!("{mb}MB"),
            format!(
                "small: a slot more than {mb}MB behind is invalidated and the connector then \
                 needs a new snapshot; raise it to well above {floor}MB (ALTER SYSTEM SET \
                 max_slot_wal_keep_size = …; SELECT pg_reload_conf();)"
            ),
        )
    } else {
        Check::pass(SLOT_WAL_KEEP, format!("{mb}MB"))
    }
}

pub(super) fn judge_sender_timeout(server: &Server) -> Check {
    let text = &server.wal_sender_timeout;
    match parse_pg_duration(text) {
        Some(timeout) if timeout.is_zero() => Check::warn(
            SENDER_TIMEOUT,
            "0 (disabled)",
            "a connection that died without closing keeps its WAL sender and slot busy until \
             TCP gives up: set it back to the default, 60s",
        ),
        Some(timeout) if timeout < SHORT_WAL_SENDER_TIMEOUT => Check::warn(
            SENDER_TIMEOUT,
            text.as_str(),
            "short: the server ends the stream whenever tributary or the network stalls for \
             a moment; the default, 60s, is safer",
        ),
        Some(_) => Check::pass(SENDER_TIMEOUT, text.as_str()),
        None => Check::warn(
            SENDER_TIMEOUT,
            format!("{text} (not understood)"),
            "make sure it is well above 10s and not 0",
        ),
    }
}
