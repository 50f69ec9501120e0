//! `tributary connector create`: preflight, replica identity decisions, then the
//! bookkeeping rows a running daemon picks up.
//!
//! ```text
//!  arguments + decisions file (syntax, values)    ── bad ──► exit 2, nothing created
//!  preflight (source/preflight.rs)                ── a required check failed ──► exit 1
//!  branch store older than the source, or its role
//!     cannot open apply sessions                  ──► exit 1
//!  tables without a usable replica identity: a decision each
//!     (file │ --accept-replica-identity-defaults │ prompt on a terminal)
//!                                                 ── unknown or undecided ──► exit 2
//!  connector + decisions in one transaction ──► id and the next command
//! ```
//!
//! A failed replica identity check is not a reason to refuse: it becomes a decision.
//! Tributary never changes a replica identity itself; for `replica_identity_full` it prints
//! the `ALTER TABLE` for the operator to run. The pipeline leaves excluded tables out of
//! the snapshot and the stream (`pipeline/runner.rs`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Args;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::connector::{schema_list, SourceKind};
use super::preflight::{known, require_passed};
use super::Failure;
use crate::bookkeeping::{Bookkeeping, TableDecision};
use crate::change::TableName;
use crate::pg::ConnInfo;
use crate::pipeline::versions;
use crate::sink;
use crate::source::preflight::{
    self, describe_foreign_keys, replica_identity_full_sql, TableIdentity,
};
use crate::types::ConnectorName;

const DECISIONS_FLAG: &str = "--replica-identity-decisions FILE";
const DEFAULTS_FLAG: &str = "--accept-replica-identity-defaults";

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The kind of source; only `postgresql` exists.
    kind: SourceKind,
    /// Source URL: postgresql://user:password@host:port/dbname?sslmode=… (stored encrypted).
    url: String,
    /// Connector name: lower-case letters, digits, '_' and '-', starting with a letter.
    /// [default: the database name]
    #[arg(long)]
    name: Option<String>,
    /// Schemas to replicate, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "public")]
    schemas: Vec<String>,
    #[command(flatten)]
    decisions: DecisionArgs,
    /// Where the source's wal2json predates 2.6, it sends NaN, Infinity and -Infinity in
    /// numeric and float columns as null: `accept` that they arrive as NULL, or `refuse`
    /// tables with such columns (the default: the connector is not created).
    #[arg(
        long,
        value_enum,
        value_name = "accept|refuse",
        default_value = "refuse"
    )]
    nan_as_null: NanAsNull,
}

/// The operator's decision about NaN and ±Infinity arriving as NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NanAsNull {
    Accept,
    Refuse,
}

/// The refusal of a source whose wal2json sends NaN and ±Infinity in `columns` as null;
/// `accept` says how to accept it.
pub fn refuse_nan_as_null(columns: &[String], accept: &str, nothing_done: &str) -> Failure {
    anyhow!(
        "the source's wal2json is older than 2.6: it sends NaN, Infinity and -Infinity in \
         numeric and float columns as null, so {} could differ silently on the \
         replica: {}. Upgrade wal2json on the source to 2.6 or newer (packaged for PostgreSQL \
         17 and 18 by Debian, or built from source), or accept that such values arrive as \
         NULL with {accept}. {nothing_done}",
        match columns.len() {
            1 => "this column".to_owned(),
            n => format!("these {n} columns"),
        },
        columns.join(", ")
    )
    .into()
}

/// How a command learns what to do with tables without a usable replica identity.
#[derive(Debug, Args)]
pub struct DecisionArgs {
    /// A JSON file deciding about every table without a usable replica identity:
    /// {"schema.table": "exclude" | "add_pk" | "replica_identity_full", …}.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "accept_replica_identity_defaults"
    )]
    replica_identity_decisions: Option<PathBuf>,
    /// Exclude every table without a usable replica identity that has no decision yet
    /// (the default decision).
    #[arg(long)]
    accept_replica_identity_defaults: bool,
}

/// The decisions file, read and checked as far as it can be without the source.
pub struct DecisionFile(Vec<(String, TableDecision)>);

impl DecisionArgs {
    /// The flags as given, each with a leading space, for a command line to suggest.
    pub fn flags(&self) -> String {
        match &self.replica_identity_decisions {
            Some(path) => format!(" --replica-identity-decisions '{}'", path.display()),
            None if self.accept_replica_identity_defaults => format!(" {DEFAULTS_FLAG}"),
            None => String::new(),
        }
    }

    /// Whether the command line says anything about decisions.
    pub fn given(&self) -> bool {
        self.replica_identity_decisions.is_some() || self.accept_replica_identity_defaults
    }

    /// Reads the decisions file, if any: exit 2 when it is unreadable or malformed.
    pub fn read_file(&self) -> Result<Option<DecisionFile>, Failure> {
        self.replica_identity_decisions
            .as_deref()
            .map(|path| read_decisions(path).map(DecisionFile))
            .transpose()
    }

    /// The decision about every table of `report` without a usable replica identity. A
    /// file decides about all of them; otherwise the `existing` decisions (of tables still
    /// without an identity) stand, and the rest are excluded with
    /// `--accept-replica-identity-defaults`, asked about on a terminal, or refused (exit 2).
    pub fn decide(
        &self,
        file: Option<DecisionFile>,
        report: &preflight::Report,
        schemas: &[String],
        existing: &[(TableName, TableDecision)],
        nothing_done: &str,
    ) -> Result<Vec<(TableName, TableDecision)>, Failure> {
        let keyless: Vec<&TableIdentity> = report.without_identity().collect();
        if let Some(DecisionFile(entries)) = file {
            return match_decisions(&entries, &report.tables, &keyless, schemas)
                .map_err(Failure::usage);
        }
        // An exclusion stands while the table exists, key or not; the other decisions only
        // while it has no usable identity.
        let mut decisions: Vec<(TableName, TableDecision)> = existing
            .iter()
            .filter(|(table, decision)| {
                keyless.iter().any(|k| k.name == *table)
                    || *decision == TableDecision::Exclude
                        && report.tables.iter().any(|t| t.name == *table)
            })
            .cloned()
            .collect();
        let undecided: Vec<&TableIdentity> = keyless
            .into_iter()
            .filter(|k| !decisions.iter().any(|(table, _)| *table == k.name))
            .collect();
        if undecided.is_empty() {
            // Nothing to ask.
        } else if self.accept_replica_identity_defaults {
            decisions.extend(
                undecided
                    .iter()
                    .map(|t| (t.name.clone(), TableDecision::Exclude)),
            );
        } else if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            decisions.extend(tokio::task::block_in_place(|| {
                prompt(&undecided, nothing_done)
            })?);
        } else {
            return Err(Failure::usage(anyhow!(
                "{} table{} without a usable replica identity need{} a decision, and there is \
                 no terminal to ask on:\n{}\nDecide with {DECISIONS_FLAG} (a JSON object such \
                 as {{\"{}\": \"exclude\"}}; values: {}), or exclude them with \
                 {DEFAULTS_FLAG}. {nothing_done}",
                undecided.len(),
                if undecided.len() == 1 { "" } else { "s" },
                if undecided.len() == 1 { "s" } else { "" },
                undecided
                    .iter()
                    .map(|t| format!("  {}", t.name))
                    .collect::<Vec<_>>()
                    .join("\n"),
                undecided[0].name,
                allowed_values(),
            )));
        }
        decisions.sort_by(|a, b| (&a.0.schema, &a.0.name).cmp(&(&b.0.schema, &b.0.name)));
        Ok(decisions)
    }
}

pub async fn run(
    args: CreateArgs,
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
) -> Result<(), Failure> {
    let SourceKind::Postgresql = args.kind;
    let info = ConnInfo::parse_to_store(&args.url).map_err(Failure::usage)?;
    let name = match args.name {
        Some(name) => ConnectorName::new(name).map_err(Failure::usage)?,
        None => default_name(&info.dbname)?,
    };
    let schemas = schema_list(args.schemas)?;
    let file = args.decisions.read_file()?;
    if bookkeeping.connector(&name).await?.is_some() {
        return Err(anyhow!(
            "a connector named {name} exists already; choose another --name, or see \
             `tributary connector list`"
        )
        .into());
    }
    let connectors = bookkeeping.connectors().await?;
    if let Some(other) = connectors.iter().find(|c| name.conflicts_with(&c.name)) {
        return Err(anyhow!(
            "connector {name} would share its replica database {} with connector {} (slot \
             and database names carry '-' as '_'): choose another --name",
            name.replica_database(),
            other.name
        )
        .into());
    }
    // The first snapshot drops and re-creates the replica: never someone else's database.
    let replica = name.replica_database();
    if crate::sink::replica_exists(store, &replica).await? {
        return Err(anyhow!(
            "a database named {replica} exists on the branch store already; connector {name} \
             would replace it: choose another --name, or drop or rename that database"
        )
        .into());
    }

    let known = known(Some(bookkeeping.installation()), &connectors, None);
    let report = preflight::run(&info, &schemas, &known).await;
    require_passed(
        &info,
        &schemas,
        &report,
        &format!("Connector {name} not created."),
    )?;
    require_store(&report, store, &format!("Connector {name} not created.")).await?;

    let decisions = args
        .decisions
        .decide(file, &report, &schemas, &[], "Nothing was created.")?;
    let nan_as_null = args.nan_as_null == NanAsNull::Accept;
    if !nan_as_null && !report.nan_as_null_columns.is_empty() {
        return Err(refuse_nan_as_null(
            &report.nan_as_null_columns,
            "--nan-as-null accept",
            &format!("Connector {name} not created."),
        ));
    }

    let connector = bookkeeping
        .create_connector_with_decisions(&name, &args.url, &schemas, &decisions, nan_as_null)
        .await?;
    say!(
        "✓ Created connector {} (id {}) for {info}\n  schemas: {}\n  slot: {}\n  replica \
         database: {}",
        connector.name,
        connector.id,
        connector.schemas.join(", "),
        connector.slot_name,
        connector.replica_database
    );
    print_decisions(&decisions);
    if nan_as_null && !report.nan_as_null_columns.is_empty() {
        say!(
            "  NaN, Infinity and -Infinity arrive as NULL in: {} (--nan-as-null accept)",
            report.nan_as_null_columns.join(", ")
        );
    }
    let left_out: Vec<TableName> = decisions.iter().map(|(t, _)| t.clone()).collect();
    let dangling: Vec<_> = report
        .foreign_keys
        .iter()
        .filter(|k| !k.dangles(&schemas, &[]) && k.dangles(&schemas, &left_out))
        .collect();
    if !dangling.is_empty() {
        say!(
            "  warning: foreign keys into tables that are not replicated are left out of the \
             replica and its branches: {}",
            describe_foreign_keys(&dangling)
        );
    }
    say!(
        "\nNext: start the daemon with `tributary run` (one already running picks the \
         connector up and starts the snapshot), then follow it with `tributary connector list`."
    );
    Ok(())
}

/// Refuses a branch store that cannot serve the source of `report`: older than it
/// (`pipeline/versions.rs`), or failing the store check (`control::store_check`: a role that
/// cannot create databases or open apply sessions, …). The daemon would find out only at
/// the snapshot, after creating a slot (and, for apply sessions, after the copy). `refused`
/// says what was therefore not done.
pub(super) async fn require_store(
    report: &preflight::Report,
    store: &ConnInfo,
    refused: &str,
) -> Result<(), Failure> {
    let store_major = sink::server_major(store).await?;
    if let Some(source_major) = report.server_major {
        versions::check_store(source_major, store_major).map_err(|e| anyhow!("{e}. {refused}"))?;
    }
    let sources: Vec<(String, u32)> = report
        .server_major
        .map(|major| ("the source".to_owned(), major))
        .into_iter()
        .collect();
    super::store::require(store, &sources, refused).await
}

/// The connector name a database name suggests: lower-case, other characters as '_'.
fn default_name(dbname: &str) -> Result<ConnectorName, Failure> {
    let mut name: String = dbname
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "db_");
    }
    name.truncate(32);
    ConnectorName::new(name).map_err(|e| {
        Failure::usage(anyhow!(
            "no connector name can be derived from the database name {dbname:?} ({e}): pass \
             --name"
        ))
    })
}

fn display(table: &TableName) -> String {
    format!("{}.{}", table.schema, table.name)
}

fn allowed_values() -> String {
    TableDecision::ALL
        .iter()
        .map(|d| format!("\"{d}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A decisions file's entries in file order, values not yet checked. Keeping every entry
/// (a map would keep only the last of two equal keys) lets repetitions be reported.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Entries, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of \"schema.table\": decision")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// Reads and checks the decisions file as far as it can be without the source: JSON
/// syntax, an object, known values, no table twice. Exit 2 with every problem found.
fn read_decisions(path: &Path) -> Result<Vec<(String, TableDecision)>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::usage(anyhow!(
            "cannot read the replica identity decisions file {}: {e}",
            path.display()
        ))
    })?;
    parse_decisions(&text).map_err(|problems| {
        Failure::usage(anyhow!(
            "the replica identity decisions file {} is not valid:\n{}",
            path.display(),
            problems
                .iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })
}

fn parse_decisions(text: &str) -> Result<Vec<(String, TableDecision)>, Vec<String>> {
    let Entries(entries) = serde_json::from_str(text).map_err(|e| {
        let location = format!(" at line {} column {}", e.line(), e.column());
        let message = e.to_string();
        let message = message.strip_suffix(&location).unwrap_or(&message);
        let what = if e.is_data() {
            "not a decisions object"
        } else {
            "malformed JSON"
        };
        vec![format!(
            "{what} at line {}, column {}: {message}",
            e.line(),
            e.column()
        )]
    })?;
    let mut problems = Vec::new();
    let mut decisions = Vec::with_capacity(entries.len());
    let mut seen = HashSet::new();
    for (table, value) in entries {
        if !seen.insert(table.clone()) {
            problems.push(format!("\"{table}\": decided more than once"));
            continue;
        }
        match value.as_str().and_then(TableDecision::parse) {
            Some(decision) => decisions.push((table, decision)),
            None => problems.push(format!(
                "\"{table}\": bad value {value}; allowed: {}",
                allowed_values()
            )),
        }
    }
    if problems.is_empty() {
        Ok(decisions)
    } else {
        Err(problems)
    }
}

/// Matches the file's decisions with the source's tables: every name must be a table of
/// the selected schemas, without a usable replica identity unless it is excluded, and every
/// table without one must be decided.
fn match_decisions(
    entries: &[(String, TableDecision)],
    tables: &[TableIdentity],
    keyless: &[&TableIdentity],
    schemas: &[String],
) -> anyhow::Result<Vec<(TableName, TableDecision)>> {
    let mut problems = Vec::new();
    let mut decisions = Vec::new();
    for (key, decision) in entries {
        match tables.iter().find(|t| display(&t.name) == *key) {
            None => problems.push(format!(
                "unknown table \"{key}\": no such table in schema{} {} (write \"schema.table\")",
                if schemas.len() == 1 { "" } else { "s" },
                schemas.join(", ")
            )),
            Some(t)
                if *decision != TableDecision::Exclude
                    && !keyless.iter().any(|k| k.name == t.name) =>
            {
                problems.push(format!(
                    "\"{key}\" has a usable replica identity and needs no decision: remove it \
                     (or \"exclude\" it to leave it out)"
                ))
            }
            Some(t) => decisions.push((t.name.clone(), *decision)),
        }
    }
    let undecided: Vec<String> = keyless
        .iter()
        .filter(|k| !decisions.iter().any(|(name, _)| *name == k.name))
        .map(|k| display(&k.name))
        .collect();
    if !undecided.is_empty() {
        problems.push(format!(
            "undecided table{} without a usable replica identity: {} (add {}, each with one of \
             {})",
            if undecided.len() == 1 { "" } else { "s" },
            undecided.join(", "),
            if undecided.len() == 1 { "it" } else { "them" },
            allowed_values()
        ));
    }
    if problems.is_empty() {
        Ok(decisions)
    } else {
        Err(anyhow!(
            "the replica identity decisions do not match the source:\n{}",
            problems
                .iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    }
}

/// Asks on the terminal about each table without a usable replica identity.
fn prompt(
    keyless: &[&TableIdentity],
    nothing_done: &str,
) -> Result<Vec<(TableName, TableDecision)>, Failure> {
    say!(
        "{} table{} without a usable replica identity: without one, UPDATEs and DELETEs \
         cannot be replicated. For each, choose:\n  e  exclude: never replicate it (default)\n  \
         a  add_pk: you will add a primary key; excluded until then\n  f  \
         replica_identity_full: you run ALTER TABLE … REPLICA IDENTITY FULL on the source \
         (every UPDATE and DELETE then logs the whole old row)\n",
        keyless.len(),
        if keyless.len() == 1 { "" } else { "s" },
    );
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut decisions = Vec::with_capacity(keyless.len());
    for table in keyless {
        loop {
            let mut out = std::io::stdout();
            write!(out, "{} [E/a/f]: ", display(&table.name))?;
            out.flush()?;
            let line = match lines.next() {
                Some(line) => line?,
                None => {
                    return Err(Failure::usage(anyhow!(
                        "no decision for {} (end of input). {nothing_done}",
                        display(&table.name)
                    )))
                }
            };
            let decision = match line.trim().to_ascii_lowercase().as_str() {
                "" | "e" | "exclude" => TableDecision::Exclude,
                "a" | "add_pk" => TableDecision::AddPk,
                "f" | "replica_identity_full" => TableDecision::ReplicaIdentityFull,
                other => {
                    say!("  {other:?} is not a choice: e, a or f");
                    continue;
                }
            };
            decisions.push((table.name.clone(), decision));
            break;
        }
    }
    Ok(decisions)
}

pub(super) fn print_decisions(decisions: &[(TableName, TableDecision)]) {
    let mut by_decision: BTreeMap<&str, Vec<&TableName>> = BTreeMap::new();
    for (table, decision) in decisions {
        by_decision
            .entry(decision.as_str())
            .or_default()
            .push(table);
    }
    for decision in TableDecision::ALL {
        let Some(tables) = by_decision.get(decision.as_str()) else {
            continue;
        };
        match decision {
            TableDecision::Exclude => say!("  excluded (exclude):"),
            TableDecision::AddPk => say!(
                "  excluded until they have a primary key (add_pk); a snapshot taken after the \
                 key was added includes them:"
            ),
            TableDecision::ReplicaIdentityFull => say!(
                "  replica_identity_full: run this on the source before the snapshot starts \
                 (tributary never changes a replica identity); until then they are excluded:"
            ),
        }
        for table in tables {
            match decision {
                TableDecision::ReplicaIdentityFull => {
                    say!("    {}", replica_identity_full_sql(table))
                }
                _ => say!("    {}", display(table)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::catalog::{Missing, ReplicaIdentity};

    fn table(name: &str, identity: ReplicaIdentity) -> TableIdentity {
        TableIdentity {
            name: TableName {
                schema: "public".into(),
                name: name.into(),
            },
            identity,
        }
    }

    #[test]
    fn decisions_files_are_checked_precisely() {
        let problems =
            parse_decisions("{\n  \"public.a\": \"exclude\",\n  \"public.b\"\n}").unwrap_err();
        assert_eq!(
            problems,
            ["malformed JSON at line 4, column 1: expected `:`"]
        );
        let problems = parse_decisions("[1]").unwrap_err();
        assert!(
            problems[0].starts_with("not a decisions object at line 1"),
            "{problems:?}"
        );
        let problems = parse_decisions(
            r#"{"public.a": "drop", "public.b": 3, "public.c": "add_pk", "public.c": "exclude"}"#,
        )
        .unwrap_err();
        assert_eq!(
            problems,
            [
                "\"public.a\": bad value \"drop\"; allowed: \"exclude\", \"add_pk\", \
                 \"replica_identity_full\"",
                "\"public.b\": bad value 3; allowed: \"exclude\", \"add_pk\", \
                 \"replica_identity_full\"",
                "\"public.c\": decided more than once",
            ]
        );
        assert_eq!(
            parse_decisions(r#"{"public.a": "replica_identity_full"}"#).unwrap(),
            [("public.a".to_owned(), TableDecision::ReplicaIdentityFull)]
        );
    }

    #[test]
    fn decisions_must_name_every_keyless_table_and_may_exclude_others() {
        let tables = [
            table("keyed", ReplicaIdentity::PrimaryKey),
            table("k1", ReplicaIdentity::Nothing(Missing::NoKey)),
            table("k2", ReplicaIdentity::Nothing(Missing::NoKey)),
        ];
        let keyless: Vec<&TableIdentity> = tables[1..].iter().collect();
        let schemas = ["public".to_owned()];
        let entries = [
            ("public.k1".to_owned(), TableDecision::AddPk),
            ("public.nope".to_owned(), TableDecision::Exclude),
            (
                "public.keyed".to_owned(),
                TableDecision::ReplicaIdentityFull,
            ),
        ];
        let error = match_decisions(&entries, &tables, &keyless, &schemas)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown table \"public.nope\": no such table in schema public"),
            "{error}"
        );
        assert!(
            error.contains("\"public.keyed\" has a usable replica identity"),
            "{error}"
        );
        assert!(
            error.contains("undecided table without a usable replica identity: public.k2"),
            "{error}"
        );
        let entries = [
            ("public.k1".to_owned(), TableDecision::AddPk),
            ("public.k2".to_owned(), TableDecision::Exclude),
            ("public.keyed".to_owned(), TableDecision::Exclude),
        ];
        let decisions = match_decisions(&entries, &tables, &keyless, &schemas).unwrap();
        assert_eq!(decisions.len(), 3, "a keyed table may be excluded");
    }

    #[test]
    fn default_names_come_from_the_database() {
        let name = |db: &str| default_name(db).ok().map(|n| n.as_str().to_owned());
        assert_eq!(name("Shop-EU").as_deref(), Some("shop_eu"));
        assert_eq!(name("2024").as_deref(), Some("db_2024"));
    }
}
