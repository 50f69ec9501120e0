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

use anyhow::anyhow;
use clap::Args;

use super::args::{schema_list, SourceKind};
use super::decisions::{refuse_nan_as_null, DecisionArgs, NanAsNull};
use super::render::{print_decisions, require_passed, store_refused};
use super::Failure;
use crate::bookkeeping::Bookkeeping;
use crate::control::connectors::create::{self, NewConnector};
use crate::control::connectors::{check_store, known};
use crate::pg::ConnInfo;
use crate::source::preflight::{self, describe_foreign_keys};
use crate::types::ConnectorName;

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
    create::check_name(bookkeeping, store, &name).await?;
    let connectors = bookkeeping.connectors().await?;
    let known = known(Some(bookkeeping.installation()), &connectors, None);
    let report = preflight::run(&info, &schemas, &known).await;
    require_passed(
        &info,
        &schemas,
        &report,
        &format!("Connector {name} not created."),
    )?;
    check_store(report.server_major, store)
        .await
        .map_err(|e| store_refused(store, e, &format!("Connector {name} not created.")))?;

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

    let new = NewConnector {
        name: &name,
        url: &args.url,
        schemas: &schemas,
        decisions: &decisions,
        nan_as_null,
    };
    let connector = create::record(bookkeeping, &new).await?;
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
    let dangling = create::dangling_foreign_keys(&report, &schemas, &decisions);
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

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn default_names_come_from_the_database() {
        let name = |db: &str| default_name(db).ok().map(|n| n.as_str().to_owned());
        assert_eq!(name("Shop-EU").as_deref(), Some("shop_eu"));
        assert_eq!(name("2024").as_deref(), Some("db_2024"));
    }
}
