//! The operator's decisions as commands take them: about tables without a usable replica
//! identity (a file, the defaults, or asked on a terminal; judged by `control::decisions`)
//! and about NaN arriving as NULL.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Args;

use super::Failure;
use crate::bookkeeping::TableDecision;
use crate::change::TableName;
use crate::control::decisions;
use crate::source::preflight::{self, TableIdentity};

const DECISIONS_FLAG: &str = "--replica-identity-decisions FILE";
const DEFAULTS_FLAG: &str = "--accept-replica-identity-defaults";

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
            return decisions::match_decisions(&entries, &report.tables, &keyless, schemas)
                .map_err(Failure::usage);
        }
        // An exclusion stands while the table exists, key or not; the other decisions only
        // while it has no usable identity.
        let mut decisions = decisions::standing(existing, report);
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
                decisions::allowed_values(),
            )));
        }
        decisions.sort_by(|a, b| (&a.0.schema, &a.0.name).cmp(&(&b.0.schema, &b.0.name)));
        Ok(decisions)
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
    decisions::parse_decisions(&text).map_err(|problems| {
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
            write!(out, "{} [E/a/f]: ", table.name)?;
            out.flush()?;
            let line = match lines.next() {
                Some(line) => line?,
                None => {
                    return Err(Failure::usage(anyhow!(
                        "no decision for {} (end of input). {nothing_done}",
                        table.name
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
