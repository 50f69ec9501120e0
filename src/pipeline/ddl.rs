//! Which captured schema changes the replica takes, and as which statement.
//!
//! The capture messages (`source/capture.rs`) arrive in WAL order inside their
//! transactions. [`DdlTracker`] turns each command into at most one statement to run on the
//! replica at exactly that position, or a reason to leave it:
//!
//! - `sql_drop` messages only collect the dropped objects; the command's `ddl_command_end`
//!   message, which follows, is the one acted on.
//! - A command is replayed only if one of its objects is in the connector's schemas (a
//!   schema itself counts by its name), and not at all if it touches a table left out by a
//!   replica identity decision (that table is not on the replica).
//! - Privileges and ownership are not replicated (the snapshot restores without them
//!   either): `GRANT`, `REVOKE`, `ALTER DEFAULT PRIVILEGES`, `… OWNER TO`.
//! - The statement is cut out of the query string the client sent, which may hold several:
//!   the next statement with the command's tag, in order. DDL run from a function or a DO
//!   block is not a statement of the query, and cannot be replayed faithfully: the
//!   pipeline stops rather than guess.
//! - `CONCURRENTLY` is dropped: the replay runs inside the target transaction.
//! - A table made or created UNLOGGED, or made LOGGED, stops the pipeline: an unlogged
//!   table's changes are not in the WAL, so the replica cannot follow it, and one made
//!   logged starts from rows the replica never had.

use std::collections::{HashMap, HashSet};

use crate::change::TableName;
use crate::pg::statements;
use crate::pipeline::PipelineError;
use crate::source::capture::{CaptureKey, DdlEvent, DdlMessage, DdlObject};
use crate::types::Lsn;

/// A captured command to run on the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdlStatement {
    pub sql: String,
    /// The schemas the source session resolved names in, first to last.
    pub search_path: Vec<String>,
    /// The source session's settings that decide how literals in the command are read.
    pub settings: Vec<(String, String)>,
    pub tag: String,
    /// Tables the command created, renamed or altered, in the connector's schemas, with
    /// their OIDs on the source.
    pub tables: Vec<(TableName, u32)>,
    /// OIDs of the tables it dropped.
    pub dropped: Vec<u32>,
    /// For messages: wal2json reports a position near the command (the next change's).
    pub lsn: Lsn,
}

/// Settings the replay takes from the source session.
pub const CARRIED_SETTINGS: &[&str] = &["TimeZone", "DateStyle", "IntervalStyle"];

/// What the replica does with a command, by its tag: every tag PostgreSQL's event triggers
/// report (the event trigger firing matrix) is decided here, and an unknown one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Run on the replica, if it touches the connector's schemas.
    Replay,
    /// Deliberately left out, for this reason.
    NotReplicated(&'static str),
    /// Stops the pipeline (if it touches the connector's schemas), for this reason.
    Refuse(&'static str),
}

pub fn disposition(tag: &str) -> Disposition {
    const PRIVILEGES: &str = "privileges are not replicated (the snapshot restores none)";
    const REPLICATION: &str =
        "publications and subscriptions are the source's own replication set-up";
    match tag {
        "GRANT" | "REVOKE" | "ALTER DEFAULT PRIVILEGES" | "SECURITY LABEL" => {
            Disposition::NotReplicated(PRIVILEGES)
        }
        "CREATE PUBLICATION"
        | "ALTER PUBLICATION"
        | "DROP PUBLICATION"
        | "CREATE SUBSCRIPTION"
        | "ALTER SUBSCRIPTION"
        | "DROP SUBSCRIPTION" => Disposition::NotReplicated(REPLICATION),
        "ALTER LARGE OBJECT" => Disposition::NotReplicated("large objects are not replicated"),
        // Rebuilds indexes: nothing a replica's content or schema shows (and REINDEX SCHEMA
        // or DATABASE cannot run in the target transaction).
        "REINDEX" => Disposition::NotReplicated("rebuilding indexes changes nothing replicated"),
        "CREATE TABLE AS" | "SELECT INTO" => Disposition::Refuse(
            "the rows it wrote are not in the change stream, and running it again on the \
             replica would compute them from the replica's data",
        ),
        "DROP OWNED" => Disposition::Refuse(
            "ownership is not replicated, so the replica cannot tell which objects it drops",
        ),
        _ if ["CREATE ", "ALTER ", "DROP "]
            .iter()
            .any(|verb| tag.starts_with(verb)) =>
        {
            Disposition::Replay
        }
        "COMMENT" | "REFRESH MATERIALIZED VIEW" | "IMPORT FOREIGN SCHEMA" => Disposition::Replay,
        _ => Disposition::Refuse("this tributary does not know the command"),
    }
}

pub struct DdlTracker {
    /// The key capture messages are signed with; without it none is replayed.
    key: Option<CaptureKey>,
    schemas: Vec<String>,
    excluded: HashSet<TableName>,
    /// Tables added to a kept replica, defined from a dump at this position: a schema
    /// change of theirs that committed before it is in the definition already.
    defined_at: HashMap<TableName, Lsn>,
    /// What to tell the operator when only a new snapshot helps.
    retry_setup: String,
    /// Objects from `sql_drop` messages, waiting for their command's `ddl_command_end`.
    dropped: Vec<DdlObject>,
    /// The multi-statement query string of the open source transaction and the index of
    /// the statement after the last one replayed from it.
    cursor: Option<(String, usize)>,
}

impl DdlTracker {
    pub fn new(
        key: Option<CaptureKey>,
        schemas: Vec<String>,
        excluded: HashSet<TableName>,
        defined_at: HashMap<TableName, Lsn>,
        retry_setup: String,
    ) -> DdlTracker {
        DdlTracker {
            key,
            schemas,
            excluded,
            defined_at,
            retry_setup,
            dropped: Vec::new(),
            cursor: None,
        }
    }

    /// The body of a capture message signed with the source's key; `None` for anything
    /// else (any role may emit a message with our prefix), which is not replayed.
    pub fn verify<'a>(&self, content: &'a str) -> Option<&'a str> {
        self.key.as_ref()?.verify(content)
    }

    /// Forgets the state of a source transaction (at its commit).
    pub fn end_transaction(&mut self) {
        self.dropped.clear();
        self.cursor = None;
    }

    /// The error for a change of a table that was unlogged when the snapshot ran: it has
    /// been made logged since, and the replica has none of its rows.
    pub fn logged_again(&self, table: &TableName) -> PipelineError {
        PipelineError::definite(
            format!(
                "a change of {table} arrived, but {table} was UNLOGGED when the snapshot ran, so \
                 the replica has none of its rows: it has been made LOGGED since"
            ),
            self.retry_setup.clone(),
        )
    }

    /// The statement to replay for this message, if any.
    pub fn on_message(
        &mut self,
        message: DdlMessage,
        lsn: Lsn,
        commit: Lsn,
    ) -> Result<Option<DdlStatement>, PipelineError> {
        let at = format!(" at {lsn}");
        if message.event == DdlEvent::SqlDrop {
            self.dropped.extend(message.objects);
            return Ok(None);
        }
        let dropped: Vec<u32> = self
            .dropped
            .iter()
            .filter(|o| o.kind == "table")
            .filter_map(|o| o.oid)
            .collect();
        let mut objects = message.objects;
        objects.append(&mut self.dropped);
        objects.retain(|o| !o.in_extension);
        let tag = message.tag;
        // Every command moves the cursor, replayed or not, so that the next one is looked
        // for after it.
        let statement = statement(&mut self.cursor, &message.query, &tag);
        let refused = match disposition(&tag) {
            Disposition::NotReplicated(why) => {
                tracing::debug!(%tag, why, "schema change not replicated");
                return Ok(None);
            }
            Disposition::Refuse(why) => Some(why),
            Disposition::Replay => None,
        };
        let ours = |schema: &str| self.schemas.iter().any(|s| s == schema);
        let relevant = objects.iter().any(|o| match (&o.schema, o.kind.as_str()) {
            (Some(schema), _) => ours(schema),
            (None, "schema") => o
                .identity
                .as_deref()
                .is_some_and(|identity| ours(&unquote_path(identity).concat())),
            (None, _) => object_table(o).is_some_and(|t| ours(&t.schema)),
        });
        if !relevant {
            tracing::debug!(%tag, "schema change outside the connector's schemas: not replayed");
            return Ok(None);
        }
        if let Some(table) = objects
            .iter()
            .filter_map(object_table)
            .find(|t| self.excluded.contains(t))
        {
            tracing::warn!(
                %tag,
                table = %table,
                "schema change on a table left out of the replica: not replayed"
            );
            return Ok(None);
        }
        let mut tables = objects.iter().filter_map(object_table).peekable();
        if tables.peek().is_some()
            && tables.all(|t| self.defined_at.get(&t).is_some_and(|at| commit < *at))
        {
            tracing::debug!(
                %tag,
                "schema change of tables defined after it (added to the replica): not replayed"
            );
            return Ok(None);
        }
        let refuse = |why: String| {
            PipelineError::definite(
                format!("cannot replay a {tag} command{at} on the replica: {why}"),
                self.retry_setup.clone(),
            )
        };
        if let Some(why) = refused {
            return Err(refuse(why.to_owned()));
        }
        if message
            .settings
            .get("standard_conforming_strings")
            .is_some_and(|v| v == "off")
        {
            return Err(refuse(
                "it ran with standard_conforming_strings off, under which its query cannot be \
                 split into statements safely"
                    .to_owned(),
            ));
        }
        let statement = statement.ok_or_else(|| {
            PipelineError::definite(
                format!(
                    "cannot replay a {tag} command{at} on the replica: the query that ran it does \
                     not hold it as a statement of its own (DDL inside a function or a DO \
                     block?); the query was: {}",
                    excerpt(&message.query)
                ),
                format!(
                    "{}; run schema changes as plain statements to keep them replicated",
                    self.retry_setup
                ),
            )
        })?;
        let words = statements::leading_words(&statement, 16);
        if words.windows(2).any(|w| w[0] == "OWNER" && w[1] == "TO") {
            return Ok(None);
        }
        if let Some(change) = persistence_change(&tag, &statement) {
            let table = objects
                .iter()
                .filter(|o| o.kind == "table")
                .find_map(object_table)
                .map_or_else(|| excerpt(&statement), |t| t.to_string());
            return Err(change.failure(&table, &at, &self.retry_setup));
        }
        let tables = objects
            .iter()
            .filter(|o| o.kind == "table" && o.schema.as_deref().is_some_and(ours))
            .filter(|o| !dropped.iter().any(|d| Some(*d) == o.oid))
            .filter_map(|o| Some((object_table(o)?, o.oid?)))
            .collect();
        let settings = message
            .settings
            .into_iter()
            .filter(|(name, _)| CARRIED_SETTINGS.contains(&name.as_str()))
            .collect();
        Ok(Some(DdlStatement {
            sql: statements::without_concurrently(&statement),
            search_path: message.search_path,
            settings,
            tag,
            tables,
            dropped,
            lsn,
        }))
    }
}

/// A command that changes whether a table is in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persistence {
    /// `ALTER TABLE … SET UNLOGGED`.
    Unlogged,
    /// `ALTER TABLE … SET LOGGED`.
    Logged,
    /// `CREATE UNLOGGED TABLE`.
    CreatedUnlogged,
}

impl Persistence {
    fn failure(self, table: &str, at: &str, retry_setup: &str) -> PipelineError {
        let unlogged = "PostgreSQL writes none of its changes to the WAL, so the replica \
                        cannot follow them";
        let kept = "a new snapshot keeps unlogged tables as definitions without rows, and \
                    lists them as not replicated";
        let (error, next_step) = match self {
            Persistence::Unlogged => (
                format!("table {table} was made UNLOGGED on the source{at}: {unlogged}"),
                format!(
                    "ALTER TABLE … SET LOGGED on the source (or leave it unlogged: {kept}); \
                     then {retry_setup}"
                ),
            ),
            Persistence::Logged => (
                format!(
                    "table {table} was made LOGGED on the source{at}: the rows it got while \
                     unlogged never reached the replica"
                ),
                retry_setup.to_owned(),
            ),
            Persistence::CreatedUnlogged => (
                format!("table {table} was created UNLOGGED on the source{at}: {unlogged}"),
                format!("{retry_setup} ({kept}), or create the table as a logged one"),
            ),
        };
        PipelineError::definite(error, next_step)
    }
}

/// Whether `statement`, run as the command tagged `tag`, changes a table's persistence.
fn persistence_change(tag: &str, statement: &str) -> Option<Persistence> {
    match tag {
        "CREATE TABLE" => statements::leading_words(statement, 3)
            .contains(&"UNLOGGED".to_owned())
            .then_some(Persistence::CreatedUnlogged),
        "ALTER TABLE" => {
            let words = statements::leading_words(statement, usize::MAX);
            words
                .windows(2)
                .find_map(|w| match (w[0].as_str(), w[1].as_str()) {
                    ("SET", "UNLOGGED") => Some(Persistence::Unlogged),
                    ("SET", "LOGGED") => Some(Persistence::Logged),
                    _ => None,
                })
        }
        _ => None,
    }
}

/// The statement of `query` that ran the command tagged `tag`: in a multi-statement query,
/// the next one with that tag after the last found (`cursor`). Never an earlier one: when
/// none is left (DDL run by a function the query called), there is no statement.
fn statement(cursor: &mut Option<(String, usize)>, query: &str, tag: &str) -> Option<String> {
    let all = statements::split(query);
    if let [only] = all[..] {
        return statements::has_tag(only, tag).then(|| only.to_owned());
    }
    let from = match cursor {
        Some((text, next)) if text == query => *next,
        _ => 0,
    };
    let found = (from..all.len()).find(|&i| statements::has_tag(all[i], tag))?;
    *cursor = Some((query.to_owned(), found + 1));
    Some(all[found].to_owned())
}

/// The table an object is or belongs to (a table, one of its columns, an index, a
/// trigger, policy or rule, which PostgreSQL places in no schema of their own).
fn object_table(object: &DdlObject) -> Option<TableName> {
    let path = match object.kind.as_str() {
        "table" | "table column" => unquote_path(object.identity.as_deref()?),
        "index" => unquote_path(object.table.as_deref()?),
        "trigger" | "policy" | "rule" => unquote_path(on_table(object.identity.as_deref()?)?),
        _ => return None,
    };
    match &path[..] {
        [schema, name, ..] => Some(TableName {
            schema: schema.clone(),
            name: name.clone(),
        }),
        _ => None,
    }
}

/// The table of an identity `<name> on <schema>.<table>`: what follows the first ` on `
/// outside double quotes (the name may be quoted and hold ` on ` itself).
fn on_table(identity: &str) -> Option<&str> {
    let mut quoted = false;
    for (i, c) in identity.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted && identity[i..].starts_with(" on ") => return Some(&identity[i + 4..]),
            _ => {}
        }
    }
    None
}

/// `"My S".t.col` as its parts, unquoted.
fn unquote_path(identity: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = identity.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                parts.last_mut().expect("never empty").push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

/// The start of a query for an error message.
fn excerpt(query: &str) -> String {
    const MAX: usize = 200;
    match query.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &query[..end]),
        None => query.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> DdlTracker {
        let excluded = HashSet::from([TableName {
            schema: "public".into(),
            name: "no_key".into(),
        }]);
        DdlTracker::new(
            None,
            vec!["public".into(), "My S".into()],
            excluded,
            HashMap::new(),
            "retry".into(),
        )
    }

    fn object(kind: &str, schema: Option<&str>, identity: &str) -> DdlObject {
        DdlObject {
            kind: kind.into(),
            schema: schema.map(Into::into),
            identity: Some(identity.into()),
            oid: Some(7),
            in_extension: false,
            table: None,
        }
    }

    fn command(tag: &str, query: &str, objects: Vec<DdlObject>) -> DdlMessage {
        DdlMessage {
            version: 1,
            event: DdlEvent::DdlCommandEnd,
            tag: tag.into(),
            query: query.into(),
            search_path: vec!["public".into()],
            objects,
            settings: Default::default(),
        }
    }

    #[test]
    fn schema_changes_before_a_tables_definition_are_not_replayed_onto_it() {
        let added = TableName {
            schema: "public".into(),
            name: "added".into(),
        };
        let mut t = tracker();
        t.defined_at = HashMap::from([(added, Lsn::new(100))]);
        let on = |identity: &str| vec![object("table", Some("public"), identity)];
        let mut index = object("index", Some("public"), "public.i");
        index.table = Some("public.added".into());
        let alter = "alter table added add b int";
        let both = "alter table added add c int references kept";
        for (objects, query, commit, replayed) in [
            // Committed before the dump the table was defined from: in the definition.
            (on("public.added"), alter, 99, false),
            (
                vec![index.clone()],
                "create index i on added (b)",
                99,
                false,
            ),
            // At or after it: replayed, like its rows.
            (on("public.added"), alter, 100, true),
            (vec![index], "create index i on added (b)", 150, true),
            // A command that also touches a table defined before it is replayed.
            (
                [on("public.added"), on("public.kept")].concat(),
                both,
                99,
                true,
            ),
            (on("public.kept"), "alter table kept add d int", 99, true),
        ] {
            let tag = if query.starts_with("create") {
                "CREATE INDEX"
            } else {
                "ALTER TABLE"
            };
            let statement = t
                .on_message(command(tag, query, objects), Lsn::new(90), Lsn::new(commit))
                .unwrap();
            assert_eq!(
                statement.is_some(),
                replayed,
                "{query} committed at {commit}"
            );
        }
    }

    #[test]
    fn each_command_of_a_multi_statement_query_replays_its_own_statement() {
        let mut t = tracker();
        let query = "create table t (id int primary key); insert into t values (1); \
                     alter table t add b int; create index concurrently i on t (b)";
        let table = || vec![object("table", Some("public"), "public.t")];
        let first = t.on_message(
            command("CREATE TABLE", query, table()),
            Lsn::new(16),
            Lsn::new(16),
        );
        assert_eq!(
            first.unwrap().unwrap().sql,
            "create table t (id int primary key)"
        );
        let second = t.on_message(
            command("ALTER TABLE", query, table()),
            Lsn::new(16),
            Lsn::new(16),
        );
        let second = second.unwrap().unwrap();
        assert_eq!(second.sql, "alter table t add b int");
        assert_eq!(
            second.tables[0],
            (
                TableName {
                    schema: "public".into(),
                    name: "t".into()
                },
                7
            )
        );
        let index = vec![object("index", Some("public"), "public.i")];
        let third = t.on_message(
            command("CREATE INDEX", query, index),
            Lsn::new(16),
            Lsn::new(16),
        );
        assert_eq!(third.unwrap().unwrap().sql, "create index  i on t (b)");
    }

    #[test]
    fn commands_elsewhere_privileges_and_excluded_tables_are_not_replayed() {
        let mut t = tracker();
        let other = vec![object("table", Some("audit"), "audit.log")];
        assert!(t
            .on_message(
                command("CREATE TABLE", "create table audit.log ()", other),
                Lsn::new(16),
                Lsn::new(16),
            )
            .unwrap()
            .is_none());
        let grant = vec![object("table", Some("public"), "public.t")];
        assert!(t
            .on_message(
                command("GRANT", "grant select on t to x", grant),
                Lsn::new(16),
                Lsn::new(16),
            )
            .unwrap()
            .is_none());
        let owner = vec![object("table", Some("public"), "public.t")];
        assert!(t
            .on_message(
                command("ALTER TABLE", "alter table t owner to x", owner),
                Lsn::new(16),
                Lsn::new(16),
            )
            .unwrap()
            .is_none());
        let column = vec![object("table column", Some("public"), "public.no_key.a")];
        assert!(t
            .on_message(
                command("ALTER TABLE", "alter table no_key add a int", column),
                Lsn::new(16),
                Lsn::new(16),
            )
            .unwrap()
            .is_none());
    }

    #[test]
    fn drops_take_their_objects_from_sql_drop_and_schemas_count_by_name() {
        let mut t = tracker();
        let mut drop = command(
            "DROP TABLE",
            "drop table \"My S\".t",
            vec![object("table", Some("My S"), "\"My S\".t")],
        );
        drop.event = DdlEvent::SqlDrop;
        assert!(t
            .on_message(drop, Lsn::new(16), Lsn::new(16))
            .unwrap()
            .is_none());
        let end = command("DROP TABLE", "drop table \"My S\".t", vec![]);
        assert_eq!(
            t.on_message(end, Lsn::new(16), Lsn::new(16))
                .unwrap()
                .unwrap()
                .sql,
            "drop table \"My S\".t"
        );
        let schema = vec![object("schema", None, "\"My S\"")];
        let create = command("CREATE SCHEMA", "create schema \"My S\"", schema);
        assert!(t
            .on_message(create, Lsn::new(16), Lsn::new(16))
            .unwrap()
            .is_some());
    }

    #[test]
    fn ddl_inside_a_function_stops_the_pipeline() {
        let mut t = tracker();
        let table = vec![object("table", Some("public"), "public.t")];
        let nested = command(
            "ALTER TABLE",
            "do $$ begin execute 'alter table t add c int'; end $$",
            table,
        );
        let error = t
            .on_message(nested, Lsn::new(16), Lsn::new(16))
            .unwrap_err()
            .to_string();
        assert!(error.contains("DO"), "{error}");
    }

    #[test]
    fn commands_not_replayed_still_move_past_their_statement() {
        let mut t = tracker();
        let query = "drop table if exists public.gone; drop table public.b";
        // The first DROP found nothing: no object, nothing replayed, but its statement is
        // used up.
        assert!(t
            .on_message(
                command("DROP TABLE", query, vec![]),
                Lsn::new(16),
                Lsn::new(16)
            )
            .unwrap()
            .is_none());
        let b = vec![object("table", Some("public"), "public.b")];
        let second = t.on_message(command("DROP TABLE", query, b), Lsn::new(16), Lsn::new(16));
        assert_eq!(second.unwrap().unwrap().sql, "drop table public.b");
    }

    #[test]
    fn commands_whose_rows_bypass_the_stream_or_are_no_ddl_stop_the_pipeline() {
        let table = || vec![object("table", Some("public"), "public.t")];
        let ctas = command("CREATE TABLE AS", "create table t as select 1", table());
        assert!(tracker()
            .on_message(ctas, Lsn::new(16), Lsn::new(16))
            .is_err());
        let copy = command("COPY", "copy t from program 'x'", table());
        assert!(tracker()
            .on_message(copy, Lsn::new(16), Lsn::new(16))
            .is_err());
        let mut legacy = command(
            "ALTER TABLE",
            "alter table t add c text default 'a\\'",
            table(),
        );
        legacy
            .settings
            .insert("standard_conforming_strings".into(), "off".into());
        assert!(tracker()
            .on_message(legacy, Lsn::new(16), Lsn::new(16))
            .is_err());
    }

    /// Every command tag of PostgreSQL 13–18's event trigger firing matrix has a
    /// deliberate disposition.
    #[test]
    fn every_tag_of_the_event_trigger_matrix_is_decided() {
        use Disposition::{NotReplicated, Refuse, Replay};
        let objects = [
            "ACCESS METHOD",
            "AGGREGATE",
            "CAST",
            "COLLATION",
            "CONVERSION",
            "DOMAIN",
            "EXTENSION",
            "FOREIGN DATA WRAPPER",
            "FOREIGN TABLE",
            "FUNCTION",
            "INDEX",
            "LANGUAGE",
            "MATERIALIZED VIEW",
            "OPERATOR",
            "OPERATOR CLASS",
            "OPERATOR FAMILY",
            "POLICY",
            "PROCEDURE",
            "ROUTINE",
            "RULE",
            "SCHEMA",
            "SEQUENCE",
            "SERVER",
            "STATISTICS",
            "TABLE",
            "TEXT SEARCH CONFIGURATION",
            "TEXT SEARCH DICTIONARY",
            "TEXT SEARCH PARSER",
            "TEXT SEARCH TEMPLATE",
            "TRIGGER",
            "TYPE",
            "USER MAPPING",
            "VIEW",
        ];
        for object in objects {
            for verb in ["CREATE", "ALTER", "DROP"] {
                assert_eq!(
                    disposition(&format!("{verb} {object}")),
                    Replay,
                    "{verb} {object}"
                );
            }
        }
        for (tag, expected) in [
            ("GRANT", "privileges"),
            ("REVOKE", "privileges"),
            ("ALTER DEFAULT PRIVILEGES", "privileges"),
            ("SECURITY LABEL", "privileges"),
            ("CREATE PUBLICATION", "publications"),
            ("ALTER PUBLICATION", "publications"),
            ("DROP PUBLICATION", "publications"),
            ("CREATE SUBSCRIPTION", "subscriptions"),
            ("ALTER SUBSCRIPTION", "subscriptions"),
            ("DROP SUBSCRIPTION", "subscriptions"),
            ("ALTER LARGE OBJECT", "large objects"),
            ("REINDEX", "indexes"),
        ] {
            match disposition(tag) {
                NotReplicated(why) => assert!(why.contains(expected), "{tag}: {why}"),
                other => panic!("{tag}: {other:?}"),
            }
        }
        for tag in [
            "COMMENT",
            "REFRESH MATERIALIZED VIEW",
            "IMPORT FOREIGN SCHEMA",
        ] {
            assert_eq!(disposition(tag), Replay, "{tag}");
        }
        for tag in [
            "CREATE TABLE AS",
            "SELECT INTO",
            "DROP OWNED",
            "COPY",
            "VACUUM",
            "",
        ] {
            assert!(matches!(disposition(tag), Refuse(_)), "{tag}");
        }
    }

    #[test]
    fn privilege_commands_with_objects_without_identity_are_left_out() {
        // As tributary.emit describes `GRANT SELECT ON t TO r`: no schema, no identity.
        let body = r#"{"v": 2, "tag": "GRANT", "event": "ddl_command_end", "query": "grant select on t to r", "objects": [{"type": "table", "schema": null, "identity": null, "oid": null, "in_extension": false, "table": null}], "search_path": ["public"]}"#;
        let message = DdlMessage::parse(body).unwrap();
        assert_eq!(message.objects[0].identity, None);
        assert!(tracker()
            .on_message(message, Lsn::new(16), Lsn::new(16))
            .unwrap()
            .is_none());
        let body = r#"{"v": 2, "tag": "ALTER DEFAULT PRIVILEGES", "event": "ddl_command_end", "query": "alter default privileges grant select on tables to r", "objects": [{"type": "table", "schema": null, "identity": null, "oid": null, "in_extension": false, "table": null}], "search_path": ["public"]}"#;
        let message = DdlMessage::parse(body).unwrap();
        assert!(tracker()
            .on_message(message, Lsn::new(16), Lsn::new(16))
            .unwrap()
            .is_none());
    }

    #[test]
    fn tables_made_unlogged_or_logged_stop_the_pipeline() {
        for (tag, sql, expected) in [
            (
                "ALTER TABLE",
                "alter table t set unlogged",
                Some(Persistence::Unlogged),
            ),
            (
                "ALTER TABLE",
                "ALTER TABLE t ADD COLUMN c int, SET LOGGED",
                Some(Persistence::Logged),
            ),
            (
                "CREATE TABLE",
                "create unlogged table t (a int)",
                Some(Persistence::CreatedUnlogged),
            ),
            ("CREATE TABLE", "create table t (a int)", None),
            (
                "ALTER TABLE",
                "alter table t add column c text default 'set unlogged'",
                None,
            ),
            (
                "ALTER TABLE",
                "alter table t alter column c set not null",
                None,
            ),
        ] {
            assert_eq!(persistence_change(tag, sql), expected, "{sql}");
        }

        let table = || vec![object("table", Some("public"), "public.t")];
        let message = command("ALTER TABLE", "alter table t set unlogged", table());
        let Err(PipelineError::Definite { error, next_step }) =
            tracker().on_message(message, Lsn::new(16), Lsn::new(16))
        else {
            panic!("SET UNLOGGED was replayed");
        };
        assert!(
            error.starts_with("table public.t was made UNLOGGED on the source at 0/10"),
            "{error}"
        );
        assert!(next_step.contains("SET LOGGED"), "{next_step}");
        assert!(next_step.ends_with("retry"), "{next_step}");
        let message = command("CREATE TABLE", "create unlogged table t (a int)", table());
        assert!(tracker()
            .on_message(message, Lsn::new(16), Lsn::new(16))
            .is_err());
        // Outside the connector's schemas, nothing is replayed, so nothing stops.
        let elsewhere = vec![object("table", Some("other"), "other.t")];
        let message = command("ALTER TABLE", "alter table other.t set unlogged", elsewhere);
        assert_eq!(
            tracker()
                .on_message(message, Lsn::new(16), Lsn::new(16))
                .unwrap(),
            None
        );
    }

    #[test]
    fn quoted_paths_unquote() {
        assert_eq!(unquote_path("\"My S\".\"a\"\"b\".c"), ["My S", "a\"b", "c"]);
    }

    #[test]
    fn triggers_policies_and_rules_belong_to_their_table() {
        for (kind, identity, table) in [
            ("policy", "own on app.orders", Some(("app", "orders"))),
            (
                "trigger",
                "\"t on x\" on \"My S\".\"a b\"",
                Some(("My S", "a b")),
            ),
            ("rule", "r on public.t", Some(("public", "t"))),
            ("rule", "no table here", None),
            ("function", "app.f()", None),
        ] {
            let found = object_table(&object(kind, None, identity));
            let expected = table.map(|(schema, name)| TableName {
                schema: schema.into(),
                name: name.into(),
            });
            assert_eq!(found, expected, "{kind} {identity}");
        }
        let mut t = tracker();
        let policy = vec![object("policy", None, "own on public.t")];
        let create = command(
            "CREATE POLICY",
            "create policy own on t using (true)",
            policy,
        );
        assert!(t
            .on_message(create, Lsn::new(16), Lsn::new(16))
            .unwrap()
            .is_some());
        let elsewhere = vec![object("policy", None, "own on audit.t")];
        let create = command(
            "CREATE POLICY",
            "create policy own on audit.t using (true)",
            elsewhere,
        );
        assert!(t
            .on_message(create, Lsn::new(16), Lsn::new(16))
            .unwrap()
            .is_none());
    }
}
