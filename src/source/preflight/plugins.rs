//! Preflight and `output_plugin_libraries` (see `source/output_plugins.rs`): the wal2json
//! line when the source refuses wal2json as an output plugin, and the grant script's
//! statements that allow it.

use super::{one_row, Check, Connection, Probe, Server, WAL2JSON};
use crate::pg::quote_literal;
use crate::source::error::Result;
use crate::source::output_plugins::{
    self, alter_system, PluginList, ADD_WAL2JSON, ADD_WAL2JSON_SQL, UNREADABLE,
};

/// Reads the setting; a role that may not read it is told so by the server (42501), which
/// is an answer, not a failure.
pub(super) async fn read(conn: &mut Connection) -> Result<PluginList> {
    let value = one_row(
        conn,
        "output_plugin_libraries",
        output_plugins::READ_SQL,
        |row| Ok(row.optional(0)),
    )
    .await;
    match value {
        Ok(value) => {
            PluginList::from_setting(value.as_deref()).map_err(|e| conn.protocol(e.to_string()))
        }
        Err(e) if e.sqlstate() == Some("42501") => Ok(PluginList::Unreadable),
        Err(e) => Err(e),
    }
}

/// Why the grant script allows wal2json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// The source refuses it.
    Refused,
    /// The probe did not run and the list could not be read: whether the source refuses it
    /// is unknown, and the script's statement changes nothing where it does not.
    Unknown,
}

/// Whether the grant script must allow wal2json.
pub(super) fn need(server: &Server, probe: &Probe) -> Option<Need> {
    match probe {
        Probe::Failed(error) if output_plugins::refuses_wal2json(error, &server.plugins) => {
            Some(Need::Refused)
        }
        Probe::Blocked(_) => match server.plugins.allows_wal2json() {
            Some(false) => Some(Need::Refused),
            None => Some(Need::Unknown),
            Some(true) => None,
        },
        _ => None,
    }
}

/// The failed wal2json line when the source refuses wal2json; `None` otherwise. A probe
/// that did not run still fails the line when the list, read, leaves wal2json out.
pub(super) fn judge(server: &Server, probe: &Probe) -> Option<Check> {
    if need(server, probe) != Some(Need::Refused) {
        return None;
    }
    let why = match probe {
        Probe::Failed(error) => {
            let message = error.server_error().map_or("", |e| e.message.as_str());
            format!("ERROR 42501: {message}")
        }
        Probe::Blocked(reason) => format!("the probe did not run: {reason}"),
        _ => unreachable!("only a failed or blocked probe is a refusal"),
    };
    let rds = if server.role.on_rds {
        " (Amazon RDS and Aurora: in the DB parameter group)"
    } else {
        ""
    };
    let (value, fix) = match &server.plugins {
        PluginList::Listed { value, entries } => (
            format!(
                "refused: output_plugin_libraries is {}, without wal2json ({why})",
                quote_literal(value)
            ),
            format!(
                "{ADD_WAL2JSON}{rds}: {} SELECT pg_reload_conf(); (in the grant script below; \
                 no restart needed)",
                alter_system(entries)
            ),
        ),
        _ => (
            format!(
                "refused by the source's output_plugin_libraries, which does not list wal2json \
                 ({why})"
            ),
            format!(
                "{ADD_WAL2JSON}{rds}. {UNREADABLE}: the grant script below computes the \
                 statement from the server's list when it runs (no restart needed)"
            ),
        ),
    };
    Some(Check::fail(WAL2JSON, value, fix))
}

/// The grant script's lines that allow wal2json, for `need`.
pub(super) fn script(server: &Server, need: Need) -> Vec<String> {
    let mut lines = vec![match (need, &server.plugins) {
        (Need::Refused, PluginList::Listed { value, .. }) => format!(
            "-- The source refuses wal2json as an output plugin: output_plugin_libraries is \
             {}.",
            quote_literal(value)
        ),
        (Need::Refused, _) => "-- The source refuses wal2json as an output plugin: \
                               output_plugin_libraries does not list it."
            .to_owned(),
        (Need::Unknown, _) => "-- The role checked may not read output_plugin_libraries: \
                               whether it lists wal2json is not known."
            .to_owned(),
    }];
    if server.role.on_rds {
        lines.push(
            "-- Amazon RDS and Aurora take no ALTER SYSTEM: add wal2json to \
             output_plugin_libraries in the DB parameter group, keeping the entries listed."
                .to_owned(),
        );
        return lines;
    }
    lines.extend([
        "-- The SELECT reads the list when it runs and yields the ALTER SYSTEM that adds \
         wal2json after the"
            .to_owned(),
        "-- entries listed then, each quoted on its own (one quoted string 'a, b' would be a \
         single entry),"
            .to_owned(),
        "-- or nothing when wal2json is listed already; psql's \\gexec runs it. A reload is \
         enough."
            .to_owned(),
    ]);
    if let PluginList::Listed { entries, .. } = &server.plugins {
        lines.push(format!(
            "-- As preflight read it: {}",
            alter_system(entries)
        ));
    }
    lines.extend([
        ADD_WAL2JSON_SQL.to_owned(),
        "\\gexec".to_owned(),
        "SELECT pg_catalog.pg_reload_conf();".to_owned(),
    ]);
    lines
}
