//! pg_dump and pg_restore: which ones a snapshot runs, and running them.
//!
//! [`Tools::choose`] is the one place that decides. The operator names a directory with
//! `TRIBUTARY_PG_BINDIR` (the daemon passes it on from its settings); without it the
//! newest suitable `/usr/lib/postgresql/<N>/bin` (Debian, Ubuntu) or `/usr/pgsql-<N>/bin`
//! (RHEL) that has both programs is used, else `PATH`. Either way the programs' versions
//! are checked against the source and the branch store (`versions.rs`) before the
//! snapshot changes anything, so an unsuitable pair fails at once, saying which client
//! programs fit, instead of in the middle of a restore.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::super::versions::{self, ToolRange};
use super::{Side, SnapshotError};
use crate::pg::conninfo::{options_text, Endpoint, Host, RootCert};
use crate::pg::{self, quote_literal, retry, ConnInfo, PgClient};
use crate::source::copy::snapshot_unknown;

/// Where a snapshot's pg_dump and pg_restore are, checked to fit its servers.
#[derive(Debug)]
pub struct Tools {
    /// `None`: found on `PATH`.
    bindir: Option<PathBuf>,
}

impl Tools {
    /// The programs for a snapshot of a PostgreSQL `source` server (major version) into a
    /// `store` server: from `configured` (`TRIBUTARY_PG_BINDIR`), else the installed ones
    /// that fit best (`ToolRange::choose`). Refuses a store older than the source, and
    /// programs whose versions do not fit, naming the ones that would.
    pub async fn choose(
        configured: Option<&Path>,
        source: u32,
        store: u32,
    ) -> Result<Tools, SnapshotError> {
        versions::check_store(source, store)?;
        let range = ToolRange::new(source, store);
        let tools = match configured {
            Some(dir) => {
                for program in PROGRAMS {
                    if !dir.join(program).is_file() {
                        return Err(SnapshotError::ToolMissing {
                            program: program.into(),
                            detail: format!(
                                "TRIBUTARY_PG_BINDIR={} has no {program}",
                                dir.display()
                            ),
                        });
                    }
                }
                Tools {
                    bindir: Some(dir.to_owned()),
                }
            }
            None => Tools {
                bindir: installed(&range),
            },
        };
        for program in PROGRAMS {
            let tool = tools.major(program).await?;
            range
                .check(tool)
                .map_err(|problem| SnapshotError::ToolUnfit {
                    path: tools.program(program).display().to_string(),
                    tool,
                    range,
                    problem,
                })?;
        }
        Ok(tools)
    }

    fn program(&self, name: &str) -> PathBuf {
        match &self.bindir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// A command for `program` that cannot outlive its caller.
    pub(super) fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.program(program));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// The major version `program --version` reports.
    async fn major(&self, program: &str) -> Result<u32, SnapshotError> {
        let label = format!("{program} --version");
        let mut cmd = self.command(program);
        cmd.arg("--version");
        let output = run_tool(cmd, &label).await?;
        let text = String::from_utf8_lossy(&output);
        parse_tool_major(&text).ok_or_else(|| SnapshotError::ToolFailed {
            program: label,
            status: "unreadable output".into(),
            stderr: text.trim().to_owned(),
            transient: false,
        })
    }
}

/// The programs a snapshot runs; a directory must have both. pg_restore first: the limit
/// a store sets (`ToolProblem::SetsTransactionTimeout`) is about it.
const PROGRAMS: [&str; 2] = ["pg_restore", "pg_dump"];

/// The bin directory of the installed client programs that fit `range` best; `None` when
/// the usual places have none (then `PATH` is used).
fn installed(range: &ToolRange) -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let major = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|n| n.parse().ok());
            let bin = entry.path().join("bin");
            if let Some(major) = major.filter(|_| PROGRAMS.iter().all(|p| bin.join(p).is_file())) {
                found.push((major, bin));
            }
        }
    }
    let majors: Vec<u32> = found.iter().map(|(major, _)| *major).collect();
    let chosen = range.choose(&majors)?;
    found
        .into_iter()
        .find(|(major, _)| *major == chosen)
        .map(|(_, bin)| bin)
}

/// `pg_dump (PostgreSQL) 15.4 (Debian 15.4-1)` → 15; `pg_dump (PostgreSQL) 9.6.24` → 9.
fn parse_tool_major(text: &str) -> Option<u32> {
    let version = text
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Connection settings for a libpq program, in its environment: the password never
/// appears on a command line (visible to every user in `ps`). Inherited `PG*` variables
/// are removed so that they cannot redirect the program (`PGSERVICE`, `PGOPTIONS`, …).
/// The client key's password, which libpq takes from no variable, goes into a service
/// file readable by this user alone; the returned directory holds it until dropped.
pub(super) fn libpq_env(
    cmd: &mut tokio::process::Command,
    info: &ConnInfo,
) -> std::io::Result<Option<tempfile::TempDir>> {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
    let list = |each: &dyn Fn(&Endpoint) -> String| {
        info.endpoints
            .iter()
            .map(each)
            .collect::<Vec<_>>()
            .join(",")
    };
    cmd.env(
        "PGHOST",
        list(&|e| match &e.host {
            Host::Tcp(host) => host.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        }),
    )
    .env("PGPORT", list(&|e| e.port.to_string()))
    .env("PGUSER", &info.user)
    .env("PGDATABASE", &info.dbname)
    .env("PGSSLMODE", info.sslmode.as_str())
    .env("PGAPPNAME", &info.application_name)
    .env("PGTARGETSESSIONATTRS", info.session_attrs.as_str())
    .env(
        "PGCONNECT_TIMEOUT",
        info.connect_timeout.as_secs().max(2).to_string(),
    );
    if info.endpoints.iter().any(|e| e.hostaddr.is_some()) {
        cmd.env(
            "PGHOSTADDR",
            list(&|e| e.hostaddr.map(|a| a.to_string()).unwrap_or_default()),
        );
    }
    let tls = &info.tls;
    match &tls.rootcert {
        Some(RootCert::File(path)) => {
            cmd.env("PGSSLROOTCERT", path);
        }
        // libpq 16 and newer understand `system`.
        Some(RootCert::System) => {
            cmd.env("PGSSLROOTCERT", "system");
        }
        None => {}
    }
    for (var, path) in [
        ("PGSSLCERT", &tls.cert),
        ("PGSSLKEY", &tls.key),
        ("PGSSLCRL", &tls.crl),
        ("PGSSLCRLDIR", &tls.crldir),
    ] {
        if let Some(path) = path {
            cmd.env(var, path);
        }
    }
    if !tls.sni {
        cmd.env("PGSSLSNI", "0");
    }
    if tls.cert.is_some() && !tls.send_cert {
        cmd.env("PGSSLCERTMODE", "disable");
    }
    if !info.options.is_empty() {
        cmd.env("PGOPTIONS", options_text(&info.options));
    }
    if let Some(password) = &info.password {
        cmd.env("PGPASSWORD", password.expose());
    } else if let Some(passfile) = &info.passfile {
        cmd.env("PGPASSFILE", passfile);
    }
    let Some(key_password) = &tls.key_password else {
        return Ok(None);
    };
    let dir = tempfile::Builder::new()
        .prefix("tributary-libpq-")
        .tempdir()?;
    let path = dir.path().join("pg_service.conf");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(file, "[tributary]\nsslpassword={}", key_password.expose())?;
    }
    cmd.env("PGSERVICEFILE", &path)
        .env("PGSERVICE", "tributary");
    Ok(Some(dir))
}

/// A value in a libpq `key=value` connection string.
pub(super) fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Most of a program's error output kept in an error: the start says what failed.
const STDERR_LIMIT: usize = 4000;

/// Runs a prepared command to its end; its standard output, or an error with its standard
/// error. Dropping the future kills the program.
pub(super) async fn run_tool(
    mut cmd: tokio::process::Command,
    program: &str,
) -> Result<Vec<u8>, SnapshotError> {
    let output = cmd.output().await.map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            SnapshotError::ToolMissing {
                program: program.split(' ').next().unwrap_or(program).to_owned(),
                detail: source.to_string(),
            }
        } else {
            SnapshotError::Io {
                context: format!("running {program}"),
                source,
            }
        }
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        let mut stderr = stderr;
        if stderr.len() > STDERR_LIMIT {
            let mut cut = STDERR_LIMIT;
            while !stderr.is_char_boundary(cut) {
                cut -= 1;
            }
            stderr.truncate(cut);
            stderr.push_str(" …");
        }
        return Err(SnapshotError::ToolFailed {
            program: program.to_owned(),
            status: output.status.to_string(),
            stderr: if stderr.is_empty() {
                "no error output".into()
            } else {
                stderr
            },
            // The caller that knows the program's server judges it (`run_watched`).
            transient: false,
        });
    }
    if !stderr.is_empty() {
        tracing::warn!("{program}: {stderr}");
    }
    Ok(output.stdout)
}

/// Runs a program that connects to `server` (the `side` of the snapshot) like
/// [`run_tool`], with a session of tributary's own open to the same server meanwhile, and
/// judges a failure by [`tool_failure_passes`].
pub(super) async fn run_watched(
    cmd: tokio::process::Command,
    program: &str,
    (side, server): (Side, &ConnInfo),
    snapshot: Option<&str>,
) -> Result<Vec<u8>, SnapshotError> {
    let watch = pg::connect(server)
        .await
        .map_err(|source| SnapshotError::Connect { side, source })?;
    match run_tool(cmd, program).await {
        Err(SnapshotError::ToolFailed {
            program,
            status,
            stderr,
            ..
        }) => Err(SnapshotError::ToolFailed {
            program,
            status,
            stderr,
            transient: tool_failure_passes(&watch, server, snapshot).await,
        }),
        result => result,
    }
}

/// Whether a pg_dump or pg_restore that failed may succeed when the snapshot starts over.
///
/// Not judged by the program's error output: libpq and the server write it in their
/// locale's language, and its exit status says only that it failed. Instead the server
/// is asked, in SQLSTATEs, what the program met, and the one policy
/// ([`crate::pg::retry`]) judges those:
/// - `watch`, a session opened before the program started, shares its fate for whatever
///   is about the server or the network: a restart, a shutdown, a crash, a cut path end
///   it too;
/// - a new session meets what the program's connection met: a server starting up, out of
///   connection slots, refusing the role;
/// - the exported `snapshot` pg_dump reads ends with the replication connection that
///   exported it; a new slot brings a new one.
///
/// When all three are fine, the program failed on its own work (an object the replica
/// rejects, a schema that is not there), which it would fail on again. A condition that
/// passed between the failure and these questions is judged definite: the operator's
/// `retry-setup` then starts the snapshot over. No answer within twice the connect
/// timeout is a cut path, which may heal.
pub async fn tool_failure_passes(
    watch: &PgClient,
    server: &ConnInfo,
    snapshot: Option<&str>,
) -> bool {
    let patience = server.connect_timeout.max(Duration::from_secs(2)) * 2;
    tokio::time::timeout(patience, ask(watch, server, snapshot))
        .await
        .unwrap_or(true)
}

/// [`tool_failure_passes`] without its time limit.
async fn ask(watch: &PgClient, server: &ConnInfo, snapshot: Option<&str>) -> bool {
    if let Err(e) = watch.simple_query("SELECT 1").await {
        return retry::postgres(&e);
    }
    let probe = match pg::connect(server).await {
        Ok(probe) => probe,
        Err(e) => return e.is_transient(),
    };
    if let Some(name) = snapshot {
        let imported = probe
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(name)
            ))
            .await;
        if let Err(e) = imported {
            return e.code().is_some_and(|c| snapshot_unknown(c.code())) || retry::postgres(&e);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_versions_and_quoting() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_tool_major("nonsense"), None);
        assert_eq!(conninfo_quote("it's"), "'it\\'s'");
    }
}
