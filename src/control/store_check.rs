//! `tributary store check`: whether the branch store's role can do what tributary does
//! there, in the ✓/✗/fix form of source preflight (its [`Report`] and [`Check`]), with a
//! script for what grants fix. `connector create` refuses a store that fails it, and
//! `tributary run` does not start on one.
//!
//! ```text
//!  gather (one SQL session on the control database, as the store role)
//!     login ── fails ──► one ✗, the rest skipped
//!     role attributes, server version, bookkeeping schema, settings
//!     an apply session (session_replication_role = replica: `open_session`, one place)
//!     data directory: free space and filesystem, only when it is readable and local
//!  judge (pure) ──► checks + grant script
//! ```
//!
//! What cannot be known is said to be unknown, never guessed: the data directory is only
//! visible to superusers and `pg_read_all_settings`, and its disk only on this machine.

use std::process::Command;

use crate::pg::conninfo::Host;
use crate::pg::{self, quote_ident, ConnInfo};
use crate::pipeline::versions;
use crate::sink::{check_apply_session, connect, replication_role_advice, setup, SinkError};
use crate::source::preflight::{Check, Report};

pub const LOGIN: &str = "login";
pub const VERSION: &str = "server version";
pub const CREATEDB: &str = "CREATEDB";
pub const APPLY: &str = "session_replication_role";
pub const SCHEMA: &str = "bookkeeping schema";
pub const CREATEROLE: &str = "CREATEROLE (branch roles)";
pub const DISK: &str = "free disk";
pub const BRANCH_COPY: &str = "branch copy";

/// The oldest branch store tributary supports.
const MIN_MAJOR: u32 = 13;

/// Whether the bookkeeping schema is the role's to migrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaAccess {
    /// It exists and the role owns it (or is a member of its owner).
    Owns,
    /// It exists and another role owns it.
    OwnedBy(String),
    /// It does not exist; whether the role may create schemas in the database.
    Absent { may_create: bool },
}

/// The data directory's disk, where it can be known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disk {
    Known {
        directory: String,
        free_bytes: u64,
        filesystem: String,
    },
    /// Why not: not readable by the role, or on another machine.
    Unknown(String),
}

/// What the store role found, for [`judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFacts {
    pub role: String,
    pub database: String,
    pub server_major: u32,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    /// The apply session's error, if one could not be opened.
    pub apply_session: Result<(), String>,
    /// `true` when only the privilege was missing (then the fix is the grant).
    pub apply_denied: bool,
    pub schema: SchemaAccess,
    pub disk: Disk,
    /// PostgreSQL 18's `file_copy_method`, else `None`.
    pub file_copy_method: Option<String>,
    /// Majors of the connectors' sources, by connector (or the source being created).
    pub sources: Vec<(String, u32)>,
}

/// Checks the store: a report with one failed login check when the role cannot log in.
pub async fn check(store: &ConnInfo, sources: &[(String, u32)]) -> Report {
    match gather(store, sources).await {
        Ok(facts) => judge(&facts),
        Err(e) => login_failed(&e.to_string()),
    }
}

/// The report when no session with the store could be had (the server is not reachable,
/// or the role cannot log in): everything else is skipped.
fn login_failed(error: &str) -> Report {
    let mut checks = vec![Check::fail(
        LOGIN,
        error,
        "check store.url (TRIBUTARY__STORE__URL): host, port, role, password and database, \
         and that pg_hba.conf lets the role in",
    )];
    checks.extend(
        [
            VERSION,
            CREATEDB,
            APPLY,
            SCHEMA,
            CREATEROLE,
            DISK,
            BRANCH_COPY,
        ]
        .map(|name| Check::skip(name, "no session with the store (see login)")),
    );
    Report {
        checks,
        ..Report::default()
    }
}

/// Judges the facts (pure): the checks in order and the grant script.
pub fn judge(facts: &StoreFacts) -> Report {
    let role = quote_ident(&facts.role);
    let mut script = Vec::new();
    // In order: each check that fails adds its lines to the script as it is judged.
    let checks = vec![
        Check::pass(
            LOGIN,
            format!("as {} to database {:?}", facts.role, facts.database),
        ),
        version(facts),
        createdb(facts, &role, &mut script),
        apply_session(facts, &role, &mut script),
        schema(facts, &role, &mut script),
        createrole(facts, &role, &mut script),
        free_disk(facts),
        branch_copy(facts),
    ];
    Report {
        checks,
        grant_script: (!script.is_empty()).then(|| {
            format!(
                "-- Run as a superuser on the branch store, in database {}.\n{}\n",
                quote_ident(&facts.database),
                script.join("\n")
            )
        }),
        ..Report::default()
    }
}

/// The server's version: new enough, and at least every recorded source's.
fn version(facts: &StoreFacts) -> Check {
    let too_old: Vec<String> = facts
        .sources
        .iter()
        .filter_map(|(name, major)| {
            versions::check_store(*major, facts.server_major)
                .err()
                .map(|e| format!("{name}: {e}"))
        })
        .collect();
    if facts.server_major < MIN_MAJOR {
        Check::fail(
            VERSION,
            format!("PostgreSQL {}", facts.server_major),
            format!("use a branch store of PostgreSQL {MIN_MAJOR} or newer"),
        )
    } else if !too_old.is_empty() {
        Check::fail(
            VERSION,
            format!("PostgreSQL {}", facts.server_major),
            too_old.join("; "),
        )
    } else {
        Check::pass(
            VERSION,
            match facts.sources.len() {
                0 => format!("PostgreSQL {}", facts.server_major),
                n => format!(
                    "PostgreSQL {}, at least every source's ({n} checked)",
                    facts.server_major
                ),
            },
        )
    }
}

/// CREATEDB, for the replica and branch databases.
fn createdb(facts: &StoreFacts, role: &str, script: &mut Vec<String>) -> Check {
    if facts.createdb || facts.superuser {
        Check::pass(CREATEDB, "yes: creates the replica and branch databases")
    } else {
        script.push(format!("ALTER ROLE {role} CREATEDB;"));
        Check::fail(
            CREATEDB,
            "no: the role cannot create replica and branch databases",
            format!("as a superuser: ALTER ROLE {role} CREATEDB;"),
        )
    }
}

/// Whether apply sessions may set `session_replication_role`.
fn apply_session(facts: &StoreFacts, role: &str, script: &mut Vec<String>) -> Check {
    match &facts.apply_session {
        Ok(()) => Check::pass(APPLY, "may be set to replica (apply sessions)"),
        Err(error) if facts.apply_denied => {
            if facts.server_major >= 15 {
                script.push(format!(
                    "GRANT SET ON PARAMETER session_replication_role TO {role};"
                ));
            } else {
                script.push(format!(
                    "-- PostgreSQL {} has no GRANT SET ON PARAMETER: only a superuser may set \
                     session_replication_role (ALTER ROLE {role} SUPERUSER;)",
                    facts.server_major
                ));
            }
            Check::fail(
                APPLY,
                format!("may not be set: {error}"),
                replication_role_advice(facts.server_major, &facts.role),
            )
        }
        Err(error) => Check::fail(
            APPLY,
            format!("an apply session could not be opened: {error}"),
            "see the error",
        ),
    }
}

/// The bookkeeping schema: owned by the role, or creatable by it.
fn schema(facts: &StoreFacts, role: &str, script: &mut Vec<String>) -> Check {
    match &facts.schema {
        SchemaAccess::Owns => Check::pass(SCHEMA, "schema tributary, owned by the role"),
        SchemaAccess::Absent { may_create: true } => Check::pass(
            SCHEMA,
            "not created yet; the role may create it (first start or `tributary migrate`)",
        ),
        SchemaAccess::Absent { may_create: false } => {
            let database = quote_ident(&facts.database);
            script.push(format!("GRANT CREATE ON DATABASE {database} TO {role};"));
            Check::fail(
                SCHEMA,
                "absent, and the role may not create schemas in the control database",
                format!(
                    "as a superuser: GRANT CREATE ON DATABASE {database} TO {role}; (or make \
                     the role the database's owner)"
                ),
            )
        }
        SchemaAccess::OwnedBy(owner) => {
            script.push(format!("ALTER SCHEMA tributary OWNER TO {role};"));
            Check::fail(
                SCHEMA,
                format!("schema tributary is owned by {owner}: the role cannot migrate it"),
                format!("as a superuser: ALTER SCHEMA tributary OWNER TO {role};"),
            )
        }
    }
}

/// CREATEROLE, for the branches' login roles (a warning: replication works without).
fn createrole(facts: &StoreFacts, role: &str, script: &mut Vec<String>) -> Check {
    if facts.createrole || facts.superuser {
        Check::pass(CREATEROLE, "yes: may create per-branch login roles")
    } else {
        script.push(format!("ALTER ROLE {role} CREATEROLE;"));
        Check::warn(
            CREATEROLE,
            "no: branches cannot get login roles of their own",
            format!("as a superuser: ALTER ROLE {role} CREATEROLE;"),
        )
    }
}

/// Free disk, where this machine can see the data directory.
fn free_disk(facts: &StoreFacts) -> Check {
    match &facts.disk {
        Disk::Known {
            directory,
            free_bytes,
            ..
        } => Check::pass(
            DISK,
            format!("{} free for {directory}", human_bytes(*free_bytes)),
        ),
        Disk::Unknown(why) => Check::skip(DISK, format!("unknown: {why}")),
    }
}

/// How `CREATE DATABASE … TEMPLATE` copies a replica into a branch on this server.
fn branch_copy(facts: &StoreFacts) -> Check {
    let major = facts.server_major;
    if major < 18 {
        return Check::pass(
            BRANCH_COPY,
            format!(
                "branches copy the replica's files (PostgreSQL {major}): the pause grows with \
                 its size; PostgreSQL 18 can clone them"
            ),
        );
    }
    let filesystem = match &facts.disk {
        Disk::Known { filesystem, .. } => Some(filesystem.as_str()),
        Disk::Unknown(_) => None,
    };
    let reflinks = matches!(filesystem, Some("xfs" | "btrfs"));
    match (facts.file_copy_method.as_deref(), filesystem) {
        (Some("clone"), Some(fs)) if reflinks => Check::pass(
            BRANCH_COPY,
            format!(
                "branches clone (file_copy_method = clone on {fs}{})",
                if fs == "xfs" {
                    ", made with reflink=1 by default since xfsprogs 5.1; `xfs_info` shows it"
                } else {
                    ""
                }
            ),
        ),
        (Some("clone"), Some(fs)) => Check::warn(
            BRANCH_COPY,
            format!(
                "branches copy: file_copy_method = clone, but the data directory is on {fs}, \
                 which has no reflinks, so the kernel copies the files (no faster than copy)"
            ),
            "for branches in constant time, put the data directory on XFS (reflink=1) or \
             Btrfs; otherwise set file_copy_method = copy (ALTER SYSTEM SET file_copy_method = \
             copy; SELECT pg_reload_conf();)",
        ),
        (Some("clone"), None) => Check::pass(
            BRANCH_COPY,
            "file_copy_method = clone: branches clone where the data directory's filesystem \
             has reflinks (XFS with reflink=1, Btrfs), which is unknown from here",
        ),
        (_, Some(fs)) if reflinks => Check::warn(
            BRANCH_COPY,
            format!("branches copy, though the data directory's filesystem ({fs}) can clone"),
            "ALTER SYSTEM SET file_copy_method = clone; SELECT pg_reload_conf(); (branches \
             then take about the same time at any size)",
        ),
        (method, fs) => Check::pass(
            BRANCH_COPY,
            format!(
                "branches copy (file_copy_method = {}; the data directory is on {}): cloning \
                 needs XFS with reflink=1 or Btrfs, and file_copy_method = clone",
                method.unwrap_or("copy"),
                fs.unwrap_or("an unknown filesystem")
            ),
        ),
    }
}

fn human_bytes(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

const FACTS_SQL: &str = "
SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole,
       current_setting('server_version_num')::int4 / 10000,
       current_database()::text,
       (SELECT CASE WHEN pg_catalog.pg_has_role(n.nspowner, 'USAGE') THEN ''
                    ELSE n.nspowner::regrole::text END
          FROM pg_catalog.pg_namespace n WHERE n.nspname = 'tributary'),
       pg_catalog.has_database_privilege(current_database(), 'CREATE'),
       current_setting('file_copy_method', true)
  FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

async fn gather(store: &ConnInfo, sources: &[(String, u32)]) -> Result<StoreFacts, SinkError> {
    let client = connect(store).await?;
    let row = client
        .query_one(FACTS_SQL, &[])
        .await
        .map_err(setup(&store.dbname, "reading the role's attributes"))?;
    let owner: Option<String> = row.get(5);
    let schema = match owner {
        Some(owner) if owner.is_empty() => SchemaAccess::Owns,
        Some(owner) => SchemaAccess::OwnedBy(owner),
        None => SchemaAccess::Absent {
            may_create: row.get(6),
        },
    };
    let server_major = row.get::<_, i32>(3) as u32;
    let file_copy_method: Option<String> = row.get(7);
    // Visible to superusers and pg_read_all_settings only: an error is "unknown".
    let directory = client
        .query_one("SELECT current_setting('data_directory')", &[])
        .await
        .ok()
        .map(|r| r.get::<_, String>(0));
    drop(client);
    let (apply_session, apply_denied) = match check_apply_session(store).await {
        Ok(()) => (Ok(()), false),
        Err(e @ SinkError::ReplicationRole { .. }) => (Err(pg_error_text(&e)), true),
        Err(e) => (Err(e.to_string()), false),
    };
    Ok(StoreFacts {
        role: store.user.clone(),
        database: row.get(4),
        server_major,
        superuser: row.get(0),
        createdb: row.get(1),
        createrole: row.get(2),
        apply_session,
        apply_denied,
        schema,
        disk: disk(store, directory),
        file_copy_method: file_copy_method.filter(|_| server_major >= 18),
        sources: sources.to_vec(),
    })
}

/// The server's own words for an apply session refused (without the advice the error adds,
/// which the check's fix carries).
fn pg_error_text(error: &SinkError) -> String {
    match error {
        SinkError::ReplicationRole { source, .. } => pg::error_message(source),
        other => other.to_string(),
    }
}

/// The data directory's free space and filesystem type, when the directory is known and
/// the server is on this machine (a Unix socket or a loopback address).
fn disk(store: &ConnInfo, directory: Option<String>) -> Disk {
    let local = store.endpoints.iter().all(|e| match &e.host {
        Host::Unix(_) => true,
        Host::Tcp(host) => matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1"),
    });
    let Some(directory) = directory else {
        return Disk::Unknown(
            "the data directory is shown only to superusers and pg_read_all_settings".into(),
        );
    };
    if !local {
        return Disk::Unknown("the branch store is on another machine".into());
    }
    // `stat -f` (GNU coreutils): free blocks, block size, filesystem type.
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S %T", &directory])
        .output();
    let parsed = out.ok().filter(|o| o.status.success()).and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut parts = text.split_whitespace();
        let free: u64 = parts.next()?.parse().ok()?;
        let block: u64 = parts.next()?.parse().ok()?;
        let filesystem = parts.next()?.to_owned();
        Some((free * block, filesystem))
    });
    match parsed {
        Some((free_bytes, filesystem)) => Disk::Known {
            directory,
            free_bytes,
            filesystem,
        },
        None => Disk::Unknown(format!("{directory} cannot be examined from this process")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::preflight::Outcome;

    fn facts() -> StoreFacts {
        StoreFacts {
            role: "tributary_store".into(),
            database: "control".into(),
            server_major: 17,
            superuser: false,
            createdb: true,
            createrole: true,
            apply_session: Ok(()),
            apply_denied: false,
            schema: SchemaAccess::Owns,
            disk: Disk::Unknown("the branch store is on another machine".into()),
            file_copy_method: None,
            sources: vec![("shop".into(), 16)],
        }
    }

    /// `(check, mark)` of each check that is not a pass.
    fn marks(report: &Report) -> Vec<(String, char)> {
        report
            .checks
            .iter()
            .filter_map(|c| match &c.outcome {
                Outcome::Pass { .. } => None,
                Outcome::Warn { .. } => Some((c.name.clone(), '!')),
                Outcome::Fail { .. } => Some((c.name.clone(), '✗')),
                Outcome::Skip { .. } => Some((c.name.clone(), '-')),
            })
            .collect()
    }

    #[test]
    fn each_missing_capability_fails_its_check_with_the_grant_that_fixes_it() {
        // A change to passing facts, the checks that then do not pass, a line of the script.
        type Case = (
            fn(&mut StoreFacts),
            Vec<(&'static str, char)>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (|_| {}, vec![(DISK, '-')], None),
            (
                |f| f.createdb = false,
                vec![(CREATEDB, '✗'), (DISK, '-')],
                Some("ALTER ROLE \"tributary_store\" CREATEDB;"),
            ),
            // A superuser needs no attribute.
            (
                |f| {
                    f.superuser = true;
                    f.createdb = false;
                    f.createrole = false;
                },
                vec![(DISK, '-')],
                None,
            ),
            (
                |f| f.createrole = false,
                vec![(CREATEROLE, '!'), (DISK, '-')],
                Some("ALTER ROLE \"tributary_store\" CREATEROLE;"),
            ),
            (
                |f| {
                    f.apply_session = Err("permission denied".into());
                    f.apply_denied = true;
                },
                vec![(APPLY, '✗'), (DISK, '-')],
                Some("GRANT SET ON PARAMETER session_replication_role TO \"tributary_store\";"),
            ),
            (
                |f| {
                    f.server_major = 14;
                    f.sources = vec![];
                    f.apply_session = Err("permission denied".into());
                    f.apply_denied = true;
                },
                vec![(APPLY, '✗'), (DISK, '-')],
                Some("only a superuser may set session_replication_role"),
            ),
            (
                |f| f.schema = SchemaAccess::OwnedBy("postgres".into()),
                vec![(SCHEMA, '✗'), (DISK, '-')],
                Some("ALTER SCHEMA tributary OWNER TO \"tributary_store\";"),
            ),
            (
                |f| f.schema = SchemaAccess::Absent { may_create: false },
                vec![(SCHEMA, '✗'), (DISK, '-')],
                Some("GRANT CREATE ON DATABASE \"control\" TO \"tributary_store\";"),
            ),
            (
                |f| f.schema = SchemaAccess::Absent { may_create: true },
                vec![(DISK, '-')],
                None,
            ),
            // Older than a source: no grant fixes that.
            (
                |f| f.server_major = 15,
                vec![(VERSION, '✗'), (DISK, '-')],
                None,
            ),
            (
                |f| f.server_major = 12,
                vec![(VERSION, '✗'), (DISK, '-')],
                None,
            ),
            (
                |f| {
                    f.server_major = 18;
                    f.file_copy_method = Some("clone".into());
                    f.disk = Disk::Known {
                        directory: "/srv/pg".into(),
                        free_bytes: 5 << 30,
                        filesystem: "ext2/ext3".into(),
                    };
                },
                vec![(BRANCH_COPY, '!')],
                None,
            ),
            (
                |f| {
                    f.server_major = 18;
                    f.file_copy_method = Some("clone".into());
                    f.disk = Disk::Known {
                        directory: "/srv/pg".into(),
                        free_bytes: 5 << 30,
                        filesystem: "xfs".into(),
                    };
                },
                vec![],
                None,
            ),
            // 18 copying on a filesystem that could clone: the setting is the fix.
            (
                |f| {
                    f.server_major = 18;
                    f.file_copy_method = Some("copy".into());
                    f.disk = Disk::Known {
                        directory: "/srv/pg".into(),
                        free_bytes: 5 << 30,
                        filesystem: "btrfs".into(),
                    };
                },
                vec![(BRANCH_COPY, '!')],
                None,
            ),
        ];
        for (change, expected, script) in cases {
            let mut facts = facts();
            change(&mut facts);
            let report = judge(&facts);
            let expected: Vec<(String, char)> =
                expected.iter().map(|(n, m)| (n.to_string(), *m)).collect();
            assert_eq!(marks(&report), expected, "{facts:?}");
            match script {
                Some(line) => assert!(
                    report.grant_script.as_deref().unwrap_or("").contains(line),
                    "{line}: {:?}",
                    report.grant_script
                ),
                None => assert_eq!(report.grant_script, None, "{facts:?}"),
            }
        }
    }

    #[test]
    fn a_role_that_cannot_log_in_fails_once_and_skips_the_rest() {
        let report = login_failed("password authentication failed");
        assert_eq!(report.failures().count(), 1);
        assert!(report.checks.len() > 1);
    }
}
