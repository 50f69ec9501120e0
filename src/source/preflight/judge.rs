//! Judging what was gathered (pure): the order of the checks, what is skipped after a
//! stage failed, and the checks of the server and its settings.

use super::*;

pub(super) fn judge(
    info: &ConnInfo,
    schemas: &[String],
    gathered: &Gathered,
    known: &KnownSources,
) -> Report {
    let mut report = Report::default();
    let checks = &mut report.checks;
    let skip_after = |checks: &mut Vec<Check>, last: &str, reason: &str| {
        let later = ORDER.iter().skip_while(|name| **name != last).skip(1);
        for &name in later {
            if name == SCHEMAS {
                checks.extend(schemas.iter().map(|s| Check::skip(schema_check(s), reason)));
            } else {
                checks.push(Check::skip(name, reason));
            }
        }
    };
    let connected = |checks: &mut Vec<Check>, encryption: Encryption| {
        checks.push(Check::pass(TCP, info.target()));
        checks.push(judge_tls(info, encryption));
    };
    let (server, probe) = match gathered {
        Gathered::Unreachable(error) => {
            checks.push(Check::fail(
                TCP,
                error.to_string(),
                "check the host and port in the URL, that the server listens there \
                 (listen_addresses, port) and that no firewall drops the connection",
            ));
            skip_after(checks, TCP, "the server is not reachable");
            return report;
        }
        Gathered::TlsFailed(error) => {
            checks.push(Check::pass(TCP, info.target()));
            checks.push(Check::fail(
                TLS,
                error.to_string(),
                "make the server's TLS match sslmode: ssl = on with a certificate that \
                 sslrootcert trusts (and that names the host, for verify-full), or choose \
                 another sslmode in the URL",
            ));
            skip_after(checks, TLS, "no connection");
            return report;
        }
        Gathered::LoginFailed { encryption, error } => {
            connected(checks, *encryption);
            checks.push(judge_login_failure(error));
            skip_after(checks, AUTH, "not logged in");
            return report;
        }
        Gathered::ReadFailed { encryption, error } => {
            connected(checks, *encryption);
            checks.push(login_passed(info));
            checks.push(Check::fail(
                VERSION,
                format!("reading the server's settings failed: {error}"),
                "see the error; the server's log may say more",
            ));
            skip_after(checks, VERSION, "the server's settings could not be read");
            return report;
        }
        Gathered::Unsupported {
            encryption,
            version,
        } => {
            connected(checks, *encryption);
            checks.push(login_passed(info));
            checks.push(Check::fail(
                VERSION,
                format!("PostgreSQL {}", version.text),
                "tributary needs PostgreSQL 13 or newer: upgrade the source first",
            ));
            skip_after(checks, VERSION, "the server is older than PostgreSQL 13");
            return report;
        }
        Gathered::Ready {
            encryption,
            server,
            probe,
        } => {
            connected(checks, *encryption);
            (server, probe)
        }
    };
    checks.push(login_passed(info));
    checks.push(Check::pass(
        VERSION,
        format!("PostgreSQL {}", server.version.text),
    ));
    report.server_major = Some(server.version.num / 10_000);
    checks.push(judge_primary(server));
    checks.push(judge_wal_level(server));
    checks.push(judge_slots(server));
    checks.push(judge_senders(server));
    checks.push(judge_replication(server));
    checks.push(judge_prepared(&server.prepared));
    checks.extend(judge_probe(server, probe));
    checks.push(judge_leftovers(server));
    checks.extend(server.schemas.iter().map(|s| judge_schema(server, s)));
    checks.push(judge_create(server));
    checks.push(judge_event_triggers(server));
    checks.extend(judge_identities(server));
    checks.push(judge_unlogged(server));
    checks.push(judge_foreign_keys(server, schemas));
    checks.push(judge_large_objects(server));
    checks.push(judge_duplicate(info, server, probe, known));
    checks.push(judge_installations(server, known));
    checks.push(judge_slot_wal_keep(server));
    checks.push(judge_sender_timeout(server));
    let major = server.version.num / 10_000;
    checks.push(failover::judge_failover(major, &server.failover));
    report.grant_script = grant_script(server, plugins::need(server, probe));
    report.tables = server
        .tables
        .iter()
        .map(|t| TableIdentity {
            name: t.name.clone(),
            identity: t.identity.clone(),
        })
        .collect();
    report.foreign_keys = server.foreign_keys.clone();
    if matches!(
        probe,
        Probe::Ran {
            numeric_as_string: Ok(false),
            ..
        }
    ) {
        report.nan_as_null_columns = server.numeric_columns.clone();
    }
    report
}

pub(super) fn login_passed(info: &ConnInfo) -> Check {
    Check::pass(
        AUTH,
        format!("as {} on database {}", info.user, info.dbname),
    )
}

pub(super) fn judge_tls(info: &ConnInfo, encryption: Encryption) -> Check {
    let mode = info.sslmode.as_str();
    match encryption {
        Encryption::UnixSocket => Check::pass(TLS, "not used over a unix socket"),
        Encryption::Plain if info.sslmode == SslMode::Disable => {
            Check::pass(TLS, "off (sslmode=disable)")
        }
        Encryption::Plain => Check::warn(
            TLS,
            format!(
                "the server does not offer TLS: the connection is unencrypted (sslmode={mode})"
            ),
            "enable ssl on the server, or use sslmode=require or verify-full so that an \
             unencrypted connection is refused",
        ),
        Encryption::Tls(version) => {
            let verified = match (info.sslmode, &info.tls.rootcert) {
                (SslMode::VerifyFull, _) => "certificate and host name verified",
                (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => {
                    "certificate chain verified"
                }
                _ => "certificate not verified",
            };
            Check::pass(TLS, format!("{version}, {verified} (sslmode={mode})"))
        }
    }
}

pub(super) fn judge_login_failure(error: &Error) -> Check {
    let Some(server) = error.server_error() else {
        let fix = match error {
            Error::Auth { .. } => {
                "put the password in the URL (percent-encoded) or in PGPASSWORD, and let \
                 pg_hba.conf use scram-sha-256, md5 or password for this role"
            }
            _ => "see the error; the server's log may say more",
        };
        return Check::fail(AUTH, error.to_string(), fix);
    };
    let fix = match server.code.as_str() {
        "28P01" => {
            "check the user name and password in the URL (percent-encode special characters)"
        }
        "28000" if server.message.contains("pg_hba.conf") => {
            "add a pg_hba.conf line on the source for this user, database and client address \
             (replication connections for logical decoding match the database name, not the \
             `replication` keyword), then reload the server"
        }
        "28000" => "check the user name in the URL",
        "3D000" => "check the database name in the URL",
        "53300" => {
            "the server has no free connection: close idle sessions or raise max_connections"
        }
        "57P03" => {
            "the server is starting, stopping or in recovery: try again once it accepts connections"
        }
        _ => "see the server's message; its log may say more",
    };
    Check::fail(AUTH, server.message.clone(), fix)
}

pub(super) fn judge_primary(server: &Server) -> Check {
    let major = server.version.num / 10_000;
    if !server.in_recovery {
        return Check::pass(PRIMARY, "yes (pg_is_in_recovery() is false)");
    }
    let Some((feedback, slot)) = server.failover.own.as_ref().filter(|_| major >= 16) else {
        return Check::fail(
            PRIMARY,
            format!(
                "no: this server is a standby, and PostgreSQL {major} decodes only on a \
                 primary (16 and newer decode on standbys too)"
            ),
            "point the URL at the primary; a URL that lists the primary and its standbys with \
             target_session_attrs=read-write also follows a failover",
        );
    };
    let mut missing = Vec::new();
    if !feedback {
        missing.push("hot_standby_feedback = on");
    }
    if slot.is_empty() {
        missing.push("primary_slot_name (a physical slot on the primary)");
    }
    if missing.is_empty() {
        return Check::pass(
            PRIMARY,
            "no: a standby, which decodes from PostgreSQL 16 on (with hot_standby_feedback \
             and a physical slot on the primary); tributary's schema change capture must be \
             installed on the primary, and a failover does not keep a standby's slot",
        );
    }
    Check::fail(
        PRIMARY,
        format!(
            "a standby without {}: the primary would remove catalog rows its slot needs, and \
             the standby would invalidate the slot",
            missing.join(" and ")
        ),
        "on the standby set hot_standby_feedback = on and primary_slot_name to a physical \
         slot created on the primary (pg_create_physical_replication_slot), then reload it; \
         or point the URL at the primary",
    )
}

pub(super) fn judge_wal_level(server: &Server) -> Check {
    if server.wal_level == "logical" {
        Check::pass(WAL_LEVEL, "logical")
    } else {
        Check::fail(
            WAL_LEVEL,
            server.wal_level.clone(),
            "set wal_level = logical and restart the server (the grant script below does \
             the ALTER SYSTEM)",
        )
    }
}

pub(super) fn judge_slots(server: &Server) -> Check {
    let used = server.slots.len();
    let value = format!("{used}/{} used", server.max_slots);
    if free_slots(server) > 0 {
        return Check::pass(SLOTS, value);
    }
    let inactive: Vec<String> = server
        .slots
        .iter()
        .filter(|s| !s.active)
        .map(|s| {
            format!(
                "SELECT pg_drop_replication_slot({});",
                quote_literal(&s.name)
            )
        })
        .collect();
    let raise = "raise max_replication_slots and restart the server (the grant script below \
                 does the ALTER SYSTEM)";
    let fix = if inactive.is_empty() {
        raise.to_owned()
    } else {
        format!(
            "{raise}, or drop an inactive slot that nothing needs any more: {}",
            inactive.join(" ")
        )
    };
    Check::fail(SLOTS, format!("{value}, none free"), fix)
}

pub(super) fn judge_senders(server: &Server) -> Check {
    let value = format!("{}/{} in use", server.active_senders, server.max_senders);
    match free_senders(server) {
        0 => Check::fail(
            SENDERS,
            format!("{value}, none free"),
            "raise max_wal_senders and restart the server (the grant script below does the \
             ALTER SYSTEM), or stop a replication client",
        ),
        free if free < SENDER_HEADROOM => Check::warn(
            SENDERS,
            format!("{value}, only {free} free"),
            "raise max_wal_senders (restart needed): after a dropped connection the server \
             keeps the old WAL sender until it notices, so reconnecting needs a second one",
        ),
        _ => Check::pass(SENDERS, value),
    }
}

pub(super) fn judge_replication(server: &Server) -> Check {
    let role = &server.role;
    if role.superuser {
        Check::pass(REPLICATION, "superuser")
    } else if role.replication {
        Check::pass(REPLICATION, "REPLICATION")
    } else if role.rds_replication {
        Check::pass(REPLICATION, "member of rds_replication")
    } else {
        let who = quote_ident(&role.name);
        let fix = if role.on_rds {
            format!("GRANT rds_replication TO {who}; (in the grant script below)")
        } else {
            format!(
                "ALTER ROLE {who} REPLICATION; (in the grant script below). Managed services: \
                 on Amazon RDS and Aurora GRANT rds_replication TO {who}; on Cloud SQL and \
                 Azure run ALTER ROLE … REPLICATION as the administrator role"
            )
        };
        Check::fail(
            REPLICATION,
            format!("role {} has neither REPLICATION nor SUPERUSER", role.name),
            fix,
        )
    }
}

/// Pending prepared transactions hold up creating the connector's slot until they end:
/// a warning, since one that commits in a moment does no harm.
pub(super) fn judge_prepared(pending: &[PreparedXact]) -> Check {
    if pending.is_empty() {
        return Check::pass(PREPARED, "none pending");
    }
    Check::warn(
        PREPARED,
        pending
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        format!(
            "creating the connector's slot waits until they end: {}",
            prepared::describe(pending)
        ),
    )
}

/// The wal2json line and the `numeric-data-types-as-string` line.
pub(super) fn judge_probe(server: &Server, probe: &Probe) -> [Check; 2] {
    if let Some(refused) = plugins::judge(server, probe) {
        return [refused, Check::skip(NUMERIC, "the source refuses wal2json")];
    }
    let major = server.version.num / 10_000;
    let (slot, dropped, numeric_as_string) = match probe {
        Probe::Ran {
            slot,
            dropped,
            numeric_as_string,
            ..
        } => (slot, dropped, numeric_as_string),
        Probe::Blocked(reason) => {
            return [
                Check::skip(WAL2JSON, *reason),
                Check::skip(NUMERIC, *reason),
            ]
        }
        Probe::TimedOut => {
            return [
                Check::fail(
                    WAL2JSON,
                    format!(
                        "unverified: creating the probe slot took longer than {} s",
                        PROBE_TIMEOUT.as_secs()
                    ),
                    format!(
                        "{}; creating the connector would wait too",
                        prepared::slot_wait_reason(&server.prepared)
                    ),
                ),
                Check::skip(NUMERIC, "the wal2json probe did not finish"),
            ]
        }
        Probe::Failed(error) => {
            let check = if error.sqlstate() == Some("58P01") {
                Check::fail(
                    WAL2JSON,
                    format!(
                        "not installed: {}",
                        error.server_error().map_or("", |e| e.message.as_str())
                    ),
                    format!(
                        "install wal2json for PostgreSQL {major} on the source (Debian and \
                         Ubuntu: postgresql-{major}-wal2json; RHEL: wal2json_{major}); \
                         logical decoding loads it on demand, no restart needed"
                    ),
                )
            } else {
                Check::fail(
                    WAL2JSON,
                    format!("the probe slot could not be created: {error}"),
                    "see the error; the server's log may say more",
                )
            };
            return [check, Check::skip(NUMERIC, "the wal2json probe failed")];
        }
    };
    let loaded = match dropped {
        Ok(()) => Check::pass(
            WAL2JSON,
            format!("loads (temporary probe slot {slot} created and dropped)"),
        ),
        Err(error) => Check::warn(
            WAL2JSON,
            format!("loads, but dropping the probe slot {slot} failed: {error}"),
            "nothing to clean up: the slot was temporary and went away with its session",
        ),
    };
    let numeric = match numeric_as_string {
        Ok(true) => Check::pass(NUMERIC, "supported (wal2json 2.6 or newer)"),
        Ok(false) if server.numeric_columns.is_empty() => Check::pass(
            NUMERIC,
            "not supported (wal2json before 2.6), and no numeric or float column is affected",
        ),
        Ok(false) => Check::warn(
            NUMERIC,
            format!(
                "not supported (wal2json before 2.6): NaN and ±Infinity arrive as NULL in {} \
                 column{}: {}",
                server.numeric_columns.len(),
                plural(server.numeric_columns.len()),
                server.numeric_columns.join(", ")
            ),
            "upgrade wal2json on the source to 2.6 or newer; until then `connector create` \
             refuses these tables unless the operator accepts NaN and Infinity arriving as \
             NULL with --nan-as-null accept",
        ),
        Err(error) => Check::warn(
            NUMERIC,
            format!("could not be checked: {error}"),
            "NaN and ±Infinity in numeric and float columns may arrive as NULL",
        ),
    };
    [loaded, numeric]
}

/// Large objects live outside tables, and logical decoding carries none of them: an `oid`
/// column that refers to one refers to nothing on the replica and its branches.
pub(super) fn judge_large_objects(server: &Server) -> Check {
    match server.large_objects {
        0 => Check::pass(LARGE_OBJECTS, "none"),
        n => Check::warn(
            LARGE_OBJECTS,
            format!(
                "{n} large object{} in database {}, not replicated: the replica and its \
                 branches have none, and a column holding a large object's OID refers to \
                 nothing there",
                plural(n as usize),
                server.database
            ),
            "store such content in bytea columns to have it replicated, or accept that \
             branches lack it (lo_get and lo_open fail there)",
        ),
    }
}

pub(super) fn judge_leftovers(server: &Server) -> Check {
    let leftovers: Vec<&Slot> = server
        .slots
        .iter()
        .filter(|s| !s.temporary && PROBE_SLOT_PREFIXES.iter().any(|p| s.name.starts_with(p)))
        .collect();
    if leftovers.is_empty() {
        return Check::pass(LEFTOVERS, "none");
    }
    let names: Vec<&str> = leftovers.iter().map(|s| s.name.as_str()).collect();
    let drops: Vec<String> = leftovers
        .iter()
        .map(|s| {
            format!(
                "SELECT pg_drop_replication_slot({});",
                quote_literal(&s.name)
            )
        })
        .collect();
    Check::warn(
        LEFTOVERS,
        format!("{} (persistent: retaining WAL)", names.join(", ")),
        format!("drop them: {}", drops.join(" ")),
    )
}
