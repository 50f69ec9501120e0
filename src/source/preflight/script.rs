//! The grant and settings script a failed preflight prints: only additions, in the order a
//! superuser runs them.

use super::*;

/// The psql script that grants what is missing, raises settings that are too low and allows
/// wal2json as an output plugin (`plugins`), or `None` when all of that is fine. Meant for a
/// superuser's psql session.
pub(super) fn grant_script(server: &Server, plugins: Option<plugins::Need>) -> Option<String> {
    let role = &server.role;
    let missing_grants = !role.superuser
        && (!server.can_create
            || server.schemas.iter().any(|s| s.exists && !s.usage)
            || server.relations.iter().any(|r| !r.can_select));
    let raise_wal_level = server.wal_level != "logical";
    let raise_slots = free_slots(server) == 0;
    let raise_senders = free_senders(server) == 0;
    let grant_replication = !role.may_replicate();
    let failover = failover::failover_script(
        server.version.num / 10_000,
        &server.database,
        &server.failover,
    );
    if !(missing_grants
        || grant_replication
        || raise_wal_level
        || raise_slots
        || raise_senders
        || plugins.is_some()
        || !failover.is_empty())
    {
        return None;
    }

    let who = quote_ident(&role.name);
    let database = quote_ident(&server.database);
    let schema_list: Vec<String> = server
        .schemas
        .iter()
        .map(|s| quote_ident(&s.name))
        .collect();
    let mut lines = vec![
        format!(
            "-- tributary: grants and settings for role {who} on database {database} \
             (schemas {}).",
            schema_list.join(", ")
        ),
        "-- Written by `tributary connector preflight`. Review it, then run it as a superuser:"
            .to_owned(),
        "--   psql -v ON_ERROR_STOP=1 -f <this file>".to_owned(),
        "-- It only adds: nothing is revoked and no setting is lowered, so running it twice is \
         harmless."
            .to_owned(),
        format!("\\connect {}", psql_quote(&server.database)),
    ];

    if !role.superuser {
        lines.push(String::new());
        lines.push(format!(
            "GRANT CONNECT, CREATE ON DATABASE {database} TO {who};"
        ));
        for schema in &server.schemas {
            let quoted = quote_ident(&schema.name);
            lines.push(String::new());
            if !schema.exists {
                lines.push(format!(
                    "-- Schema {quoted} does not exist: nothing to grant (check --schemas)."
                ));
                continue;
            }
            lines.push(format!("GRANT USAGE ON SCHEMA {quoted} TO {who};"));
            lines.push(format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA {quoted} TO {who};"
            ));
            lines.push(format!(
                "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {quoted} TO {who};"
            ));
            lines.push(
                "-- Tables and sequences created later: by the role running this script, and \
                 by each role that owns some now."
                    .to_owned(),
            );
            let mut owners: Vec<&str> = server
                .relations
                .iter()
                .filter(|r| r.name.schema == schema.name && r.owner != role.name)
                .map(|r| r.owner.as_str())
                .collect();
            owners.sort_unstable();
            owners.dedup();
            let for_roles = std::iter::once(String::new()).chain(
                owners
                    .iter()
                    .map(|o| format!("FOR ROLE {} ", quote_ident(o))),
            );
            for for_role in for_roles {
                for objects in ["TABLES", "SEQUENCES"] {
                    lines.push(format!(
                        "ALTER DEFAULT PRIVILEGES {for_role}IN SCHEMA {quoted} \
                         GRANT SELECT ON {objects} TO {who};"
                    ));
                }
            }
        }
    }

    if grant_replication {
        lines.push(String::new());
        lines.push(if role.on_rds {
            format!("GRANT rds_replication TO {who};")
        } else {
            format!("ALTER ROLE {who} REPLICATION;")
        });
    }

    if let Some(need) = plugins {
        lines.push(String::new());
        lines.extend(plugins::script(server, need));
    }

    if raise_wal_level || raise_slots || raise_senders {
        lines.push(String::new());
        if role.on_rds {
            lines.push(
                "-- Amazon RDS and Aurora take no ALTER SYSTEM: set rds.logical_replication = 1, \
                 max_replication_slots and max_wal_senders in the DB parameter group, then reboot."
                    .to_owned(),
            );
        } else {
            lines.extend(raise_settings(
                server,
                raise_wal_level,
                raise_slots,
                raise_senders,
            ));
        }
    }
    if !failover.is_empty() {
        lines.push(String::new());
        lines.extend(failover);
    }
    lines.push(String::new());
    Some(lines.join("\n"))
}

/// ALTER SYSTEM for each setting below what tributary needs. It cannot run inside a DO
/// block or function, so each SELECT yields the statement only while the server's value is
/// still too low, and psql's `\gexec` runs what it yields: a higher value is never lowered.
pub(super) fn raise_settings(
    server: &Server,
    wal_level: bool,
    slots: bool,
    senders: bool,
) -> Vec<String> {
    let mut lines = vec![
        "-- Server settings below what tributary needs. Each SELECT yields its ALTER SYSTEM only"
            .to_owned(),
        "-- while the current value is lower, and psql's \\gexec runs it: a higher value stays."
            .to_owned(),
    ];
    if wal_level {
        lines.push(
            "SELECT 'ALTER SYSTEM SET wal_level = logical' \
             WHERE pg_catalog.current_setting('wal_level') <> 'logical'"
                .to_owned(),
        );
        lines.push("\\gexec".to_owned());
    }
    let mut raise = |name: &str, at_least: usize| {
        lines.push(format!(
            "SELECT 'ALTER SYSTEM SET {name} = {at_least}' \
             WHERE pg_catalog.current_setting('{name}')::int < {at_least}"
        ));
        lines.push("\\gexec".to_owned());
    };
    if slots {
        raise(
            "max_replication_slots",
            max(SETTING_FLOOR, server.slots.len() + SLOT_HEADROOM),
        );
    }
    if senders {
        raise(
            "max_wal_senders",
            max(SETTING_FLOOR, server.active_senders + SENDER_HEADROOM),
        );
    }
    lines.extend([
        "-- These take effect at the next restart of the server (a reload is not enough), e.g."
            .to_owned(),
        "--   pg_ctl restart -D <data directory>   or   systemctl restart postgresql".to_owned(),
        "-- Physical standbys need max_wal_senders at least as high as their primary's: raise \
         theirs first."
            .to_owned(),
    ]);
    lines
}

/// `text` as one argument of a psql meta-command: single quotes, in which psql reads `''`
/// as a quote and a backslash as an escape.
pub(super) fn psql_quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
