//! `output_plugin_libraries`: which output plugins the source lets logical decoding load.
//!
//! The setting came with the minor releases 15.19, 16.15, 17.11 and 18.6 (older servers do
//! not know it, and refuse to start with it in their configuration). It is a list, set by
//! superusers only, whose default `pgoutput, test_decoding` leaves wal2json out: every role,
//! superusers too, is then refused with SQLSTATE 42501 when it creates a wal2json slot and
//! when it starts streaming from one it has. Only a role with superuser or
//! `pg_read_all_settings` may read it.
//!
//! The server keeps the list the way `search_path` is kept: entries separated by commas,
//! each either bare or double-quoted (`""` inside is a quote), unquoted entries taken as
//! written (not lowercased). `ALTER SYSTEM` takes the entries as separate literals and
//! quotes each itself, so one literal `'a, b'` is a single entry named `a, b`: the fix is
//! always written with every entry quoted on its own, the ones listed now first, in their
//! order, and `wal2json` last.

use tokio_postgres::error::SqlState;

use super::catalog::CatalogError;
use super::error::Error;
use crate::pg::{quote_literal, PgClient};

/// The setting's name.
pub const SETTING: &str = super::error::OUTPUT_PLUGIN_LIBRARIES;

/// The output plugin tributary needs listed.
const PLUGIN: &str = "wal2json";

/// Reads the setting: one row, NULL on a server that predates it, error 42501 for a role
/// that may not read it. `pg_settings` cannot tell those two apart (it shows neither), and
/// `SHOW` fails on both.
pub const READ_SQL: &str = "SELECT pg_catalog.current_setting('output_plugin_libraries', true)";

/// For a superuser's psql session: yields the `ALTER SYSTEM` that appends wal2json to the
/// list the server has when it runs (every entry kept, in order, each quoted on its own),
/// or nothing when wal2json is listed already; psql's `\gexec` runs what it yields.
/// Computed by the server, not written from what preflight read: the list may have changed
/// since (an entry written down then would be removed now), and the role preflight ran as
/// may not have been allowed to read it at all. `ALTER SYSTEM` cannot run inside a function
/// or a DO block, hence `\gexec`. The pattern splits the list as the server does (see the
/// module docs), without a backslash, so it reads the same whatever
/// `standard_conforming_strings` is.
pub const ADD_WAL2JSON_SQL: &str = "\
SELECT 'ALTER SYSTEM SET output_plugin_libraries = '
       || pg_catalog.string_agg(pg_catalog.quote_literal(entry), ', ' ORDER BY added, position)
  FROM (SELECT coalesce(pg_catalog.replace(found.m[1], '\"\"', '\"'), found.m[2]) AS entry,
               false AS added, found.position
          FROM pg_catalog.regexp_matches(
                 pg_catalog.current_setting('output_plugin_libraries'),
                 '[[:space:]]*(?:\"((?:[^\"]|\"\")*)\"|([^,[:space:]]+))[[:space:]]*(?:,|$)',
                 'g') WITH ORDINALITY AS found (m, position)
        UNION ALL
        SELECT 'wal2json', true, 0) AS entries
HAVING NOT pg_catalog.bool_or(entry = 'wal2json' AND NOT added)";

/// What to do, in a sentence that the exact statements can follow.
pub const ADD_WAL2JSON: &str = "as a superuser on the source, add wal2json to \
     output_plugin_libraries, keeping every entry it lists, each quoted on its own (one quoted \
     string 'a, b' would be a single entry), and reload the configuration";

/// Why the statements cannot be written out.
pub const UNREADABLE: &str =
    "This role may not read the list (that needs superuser or pg_read_all_settings)";

/// The setting as one role sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginList {
    /// The server predates the setting: every installed output plugin may be used.
    Absent,
    /// The server has it, but this role may not read it.
    Unreadable,
    /// What the server says (`value`, for showing) and its entries, in order.
    Listed { value: String, entries: Vec<String> },
}

impl PluginList {
    /// From [`READ_SQL`]'s answer: `None` is NULL (no such setting).
    pub fn from_setting(value: Option<&str>) -> Result<PluginList, ListSyntax> {
        Ok(match value {
            None => PluginList::Absent,
            Some(value) => PluginList::Listed {
                value: value.to_owned(),
                entries: split(value)?,
            },
        })
    }

    /// Whether the list says that wal2json may be used; `None` when it cannot be read.
    pub fn allows_wal2json(&self) -> Option<bool> {
        match self {
            PluginList::Absent => Some(true),
            PluginList::Unreadable => None,
            PluginList::Listed { entries, .. } => Some(entries.iter().any(|e| e == PLUGIN)),
        }
    }

    /// The one-line fix for a source that refuses wal2json, for someone with a superuser
    /// session: the exact statements where the list can be read; otherwise the query that
    /// computes them on the server ([`ADD_WAL2JSON_SQL`]), to run in psql.
    pub fn fix(&self) -> String {
        match self {
            PluginList::Listed { entries, .. } => {
                format!(
                    "{ADD_WAL2JSON}: {} SELECT pg_reload_conf();",
                    alter_system(entries)
                )
            }
            PluginList::Absent | PluginList::Unreadable => format!(
                "{ADD_WAL2JSON}. {UNREADABLE}, so let the server compute the statement: in psql \
                 as a superuser, run `{} \\gexec` (psql runs the ALTER SYSTEM the query \
                 yields, none when wal2json is listed already), then SELECT pg_reload_conf();",
                one_line(ADD_WAL2JSON_SQL)
            ),
        }
    }
}

/// Whether `error`, returned to a role allowed to replicate when it created a wal2json slot
/// or started streaming from one, is the server refusing wal2json as an output plugin.
///
/// The rule is SQLSTATE 42501 plus what the server's settings say, never the message, which
/// is translated (`lc_messages`). For a role that may replicate, these two commands fail
/// with 42501 for no other reason than this setting: so it is a refusal where the server has
/// the setting and it does not list wal2json, or this role cannot see whether it does
/// ([`READ_SQL`] tells a server without the setting from a role that may not read it).
pub fn refuses_wal2json(error: &Error, list: &PluginList) -> bool {
    error.sqlstate() == Some("42501") && list.allows_wal2json() != Some(true)
}

/// Reads the setting over a SQL session (see [`READ_SQL`]).
pub async fn read(client: &PgClient) -> Result<PluginList, ReadError> {
    match client.query_one(READ_SQL, &[]).await {
        Ok(row) => Ok(PluginList::from_setting(row.get::<_, Option<&str>>(0))?),
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Ok(PluginList::Unreadable),
        Err(source) => Err(ReadError::Query(CatalogError::Query {
            what: "output_plugin_libraries",
            source,
        })),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Query(#[from] CatalogError),
    #[error(transparent)]
    Syntax(#[from] ListSyntax),
}

/// A value the server accepted but this module cannot split: a bug in tributary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "output_plugin_libraries = {value:?} could not be read as a list ({reason}); please report \
     this to the tributary developers"
)]
pub struct ListSyntax {
    value: String,
    reason: &'static str,
}

/// The entries of a list as the server splits it: separated by commas, whitespace around
/// them ignored, each bare (up to a comma or whitespace, taken as written) or in double
/// quotes (`""` stands for one). An empty value is an empty list.
fn split(value: &str) -> Result<Vec<String>, ListSyntax> {
    let fail = |reason| ListSyntax {
        value: value.to_owned(),
        reason,
    };
    // The server's `scanner_isspace`.
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c');
    let mut entries = Vec::new();
    let mut rest = value.trim_start_matches(space);
    if rest.is_empty() {
        return Ok(entries);
    }
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut entry = String::new();
            let mut chars = quoted.char_indices();
            rest = loop {
                match chars.next() {
                    None => return Err(fail("a quote is not closed")),
                    Some((i, '"')) if quoted[i + 1..].starts_with('"') => {
                        entry.push('"');
                        chars.next();
                    }
                    Some((i, '"')) => break &quoted[i + 1..],
                    Some((_, c)) => entry.push(c),
                }
            };
            entries.push(entry);
        } else {
            let end = rest.find(|c| c == ',' || space(c)).unwrap_or(rest.len());
            if end == 0 {
                return Err(fail("an entry is empty"));
            }
            entries.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
        rest = rest.trim_start_matches(space);
        match rest.strip_prefix(',') {
            Some(next) => rest = next.trim_start_matches(space),
            None if rest.is_empty() => return Ok(entries),
            None => return Err(fail("entries must be separated by commas")),
        }
    }
}

/// `ALTER SYSTEM SET output_plugin_libraries = 'a', 'b', 'wal2json';`: `entries` in their
/// order, each its own literal, and wal2json last unless it is among them.
pub fn alter_system(entries: &[String]) -> String {
    let mut literals: Vec<String> = entries.iter().map(|e| quote_literal(e)).collect();
    if !entries.iter().any(|e| e == PLUGIN) {
        literals.push(quote_literal(PLUGIN));
    }
    format!("ALTER SYSTEM SET {SETTING} = {};", literals.join(", "))
}

/// `sql` on one line, for a message: runs of whitespace outside literals become one space.
/// (No literal of [`ADD_WAL2JSON_SQL`] holds a run of whitespace.)
fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ServerError;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn lists_split_as_the_server_splits_them() {
        let cases: &[(&str, &[&str])] = &[
            ("pgoutput, test_decoding", &["pgoutput", "test_decoding"]),
            ("", &[]),
            ("  \t", &[]),
            ("wal2json", &["wal2json"]),
            ("pgoutput,wal2json  ", &["pgoutput", "wal2json"]),
            // Bare entries are taken as written: WAL2JSON is not wal2json.
            ("pgoutput, WAL2JSON", &["pgoutput", "WAL2JSON"]),
            (r#""wal2json""#, &["wal2json"]),
            (
                r#"  pgoutput , "My Lib","a,b" ,"q""x", dec\raw"#,
                &["pgoutput", "My Lib", "a,b", r#"q"x"#, r"dec\raw"],
            ),
            // What ALTER SYSTEM writes back for such entries.
            (
                r#"pgoutput, "My Lib", "a,b", "q""x", "dec\raw", wal2json"#,
                &[
                    "pgoutput", "My Lib", "a,b", r#"q"x"#, r"dec\raw", "wal2json",
                ],
            ),
            (r#""""", x"#, &[r#"""#, "x"]),
            (r#""", x"#, &["", "x"]),
        ];
        for (value, expected) in cases {
            assert_eq!(split(value), Ok(strings(expected)), "{value:?}");
        }
    }

    #[test]
    fn what_the_server_would_reject_is_not_a_list() {
        for (value, reason) in [
            ("pgoutput, a b", "entries must be separated by commas"),
            ("a\nb", "entries must be separated by commas"),
            ("pgoutput,", "an entry is empty"),
            (",pgoutput", "an entry is empty"),
            ("pgoutput,, x", "an entry is empty"),
            (r#"pgoutput, "open"#, "a quote is not closed"),
            (r#""a"b"#, "entries must be separated by commas"),
        ] {
            assert_eq!(split(value).unwrap_err().reason, reason, "{value:?}");
        }
    }

    #[test]
    fn the_statement_keeps_every_entry_in_order_each_quoted_on_its_own() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["pgoutput", "test_decoding"],
                "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
                 'wal2json';",
            ),
            (
                &["pgoutput", "test_decoding", "decoder_raw"],
                "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
                 'decoder_raw', 'wal2json';",
            ),
            (
                &[],
                "ALTER SYSTEM SET output_plugin_libraries = 'wal2json';",
            ),
            (
                &["it's", "My Lib", "a,b"],
                "ALTER SYSTEM SET output_plugin_libraries = 'it''s', 'My Lib', 'a,b', \
                 'wal2json';",
            ),
            // Listed already: nothing added, nothing moved.
            (
                &["wal2json", "pgoutput"],
                "ALTER SYSTEM SET output_plugin_libraries = 'wal2json', 'pgoutput';",
            ),
        ];
        for (entries, expected) in cases {
            assert_eq!(alter_system(&strings(entries)), *expected);
        }
    }

    #[test]
    fn whether_wal2json_may_be_used() {
        let listed = |value: &str| PluginList::from_setting(Some(value)).unwrap();
        assert_eq!(PluginList::from_setting(None), Ok(PluginList::Absent));
        assert_eq!(PluginList::Absent.allows_wal2json(), Some(true));
        assert_eq!(PluginList::Unreadable.allows_wal2json(), None);
        assert_eq!(
            listed("pgoutput, test_decoding").allows_wal2json(),
            Some(false)
        );
        assert_eq!(listed("pgoutput, WAL2JSON").allows_wal2json(), Some(false));
        assert_eq!(
            listed("pgoutput, \"wal2json\"").allows_wal2json(),
            Some(true)
        );
        assert_eq!(listed("").allows_wal2json(), Some(false));
    }

    fn server_error(code: &str) -> Error {
        Error::Server {
            target: "db:5432".into(),
            error: Box::new(ServerError {
                severity: "ERROR".into(),
                code: code.into(),
                message: "library \"wal2json\" may not be used as an output plugin".into(),
                detail: None,
                hint: None,
            }),
        }
    }

    #[test]
    fn a_refusal_is_42501_where_the_list_does_not_allow_wal2json() {
        let default = PluginList::from_setting(Some("pgoutput, test_decoding")).unwrap();
        let allowed = PluginList::from_setting(Some("pgoutput, wal2json")).unwrap();
        let cases = [
            ("42501", &default, true),
            ("42501", &PluginList::Unreadable, true),
            // Listed, or a server without the setting: 42501 means something else.
            ("42501", &allowed, false),
            ("42501", &PluginList::Absent, false),
            ("58P01", &default, false),
            ("55006", &PluginList::Unreadable, false),
        ];
        for (code, list, refused) in cases {
            assert_eq!(
                refuses_wal2json(&server_error(code), list),
                refused,
                "{code} with {list:?}"
            );
        }
    }

    #[test]
    fn the_fix_is_exact_where_the_list_is_known_and_computed_where_not() {
        let default = PluginList::from_setting(Some("pgoutput, test_decoding")).unwrap();
        assert!(default.fix().ends_with(
            ": ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
             'wal2json'; SELECT pg_reload_conf();"
        ));
        let unreadable = PluginList::Unreadable.fix();
        assert!(unreadable.starts_with(ADD_WAL2JSON), "{unreadable}");
        assert!(unreadable.contains("may not read the list"), "{unreadable}");
        assert!(
            unreadable.contains(
                "SELECT 'ALTER SYSTEM SET output_plugin_libraries = ' || pg_catalog.string_agg("
            ),
            "{unreadable}"
        );
        assert!(
            unreadable.contains(" \\gexec` (psql runs")
                && unreadable.ends_with("SELECT pg_reload_conf();"),
            "{unreadable}"
        );
        assert!(!unreadable.contains('\n'), "{unreadable}");
    }
}
