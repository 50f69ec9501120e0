//! `tributary connector …`: preflight, create (`create.rs`), list and delete connectors.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use serde::Serialize;

use super::Failure;
use crate::bookkeeping::{Bookkeeping, Connector};
use crate::change::TableName;
use crate::pg::ConnInfo;
use crate::settings::Settings;
use crate::sink;
use crate::source::ReplicationClient;
use crate::types::ConnectorName;

/// How long `connector delete` waits for a running daemon to let go of the slot.
const SLOT_DROP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Check whether a source database can be replicated: connection, settings, privileges,
    /// wal2json, replica identities. Changes and stores nothing; prints a grant script for
    /// what is missing. Exit code 0 when every required check passes, 1 otherwise.
    Preflight(super::preflight::PreflightArgs),
    /// Register a source database after a preflight; a running daemon snapshots it and
    /// starts streaming. Tables without a usable replica identity need a decision
    /// (exclude, add_pk or replica_identity_full): from a file, the default (exclude) or,
    /// on a terminal, asked per table. Exit code 1 when preflight fails, 2 for undecided
    /// tables or a bad decisions file; nothing is created then.
    Create(super::create::CreateArgs),
    /// List connectors with their state.
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Delete a connector: its bookkeeping, its replication slot on the source and its
    /// replica database on the branch store.
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SourceKind {
    Postgresql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub async fn run(
    command: ConnectorCommand,
    settings: Settings,
    config_path: &Path,
) -> Result<(), Failure> {
    let bookkeeping = Bookkeeping::open(
        &settings.store(),
        &settings.secrets,
        &super::default_key_file(config_path),
    )
    .await?;
    match command {
        ConnectorCommand::Create(args) => super::create::run(args, &bookkeeping).await,
        ConnectorCommand::List { format } => {
            let connectors = bookkeeping.connectors().await?;
            let mut excluded = Vec::with_capacity(connectors.len());
            for connector in &connectors {
                excluded.push(excluded_tables(&bookkeeping, connector).await?);
            }
            print_list(&connectors, &excluded, format)?;
            Ok(())
        }
        ConnectorCommand::Delete { name } => {
            let name = ConnectorName::new(name).map_err(Failure::usage)?;
            delete(&bookkeeping, &settings, &name).await
        }
        ConnectorCommand::Preflight(_) => unreachable!("handled by cli::dispatch"),
    }
}

/// `--schemas` as given, trimmed, without empty entries and repetitions.
pub(super) fn schema_list(raw: Vec<String>) -> Result<Vec<String>, Failure> {
    let mut schemas: Vec<String> = Vec::with_capacity(raw.len());
    for schema in raw {
        let schema = schema.trim();
        if !schema.is_empty() && !schemas.iter().any(|s| s == schema) {
            schemas.push(schema.to_owned());
        }
    }
    if schemas.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!("--schemas names no schema")));
    }
    Ok(schemas)
}

/// The contract of `connector list --format json`: one object per connector.
#[derive(Serialize)]
struct ConnectorView<'a> {
    name: &'a str,
    state: &'a str,
    enabled: bool,
    source: &'a str,
    schemas: &'a [String],
    slot_name: &'a str,
    replica_database: &'a str,
    last_error: Option<&'a str>,
    next_step: Option<&'a str>,
    /// Tables of the selected schemas that are not replicated, with the decision why.
    excluded_tables: &'a [ExcludedTable],
}

#[derive(Serialize)]
struct ExcludedTable {
    table: String,
    decision: &'static str,
}

/// The decided tables the latest snapshot did not include (all of them before the first
/// snapshot): a table whose key or replica identity was fixed in time is replicated.
async fn excluded_tables(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
) -> Result<Vec<ExcludedTable>, Failure> {
    let included: HashSet<TableName> = bookkeeping
        .tables(connector.id)
        .await?
        .into_iter()
        .filter(|t| t.decision == "include")
        .map(|t| t.table)
        .collect();
    Ok(bookkeeping
        .table_decisions(connector.id)
        .await?
        .into_iter()
        .filter(|(table, _)| !included.contains(table))
        .map(|(table, decision)| ExcludedTable {
            table: format!("{}.{}", table.schema, table.name),
            decision: decision.as_str(),
        })
        .collect())
}

fn print_list(
    connectors: &[Connector],
    excluded: &[Vec<ExcludedTable>],
    format: Format,
) -> anyhow::Result<()> {
    let views: Vec<ConnectorView> = connectors
        .iter()
        .zip(excluded)
        .map(|(c, excluded)| ConnectorView {
            name: c.name.as_str(),
            state: c.state.as_str(),
            enabled: c.enabled,
            source: &c.source_display,
            schemas: &c.schemas,
            slot_name: c.slot_name.as_str(),
            replica_database: &c.replica_database,
            last_error: c.last_error.as_deref(),
            next_step: c.next_step.as_deref(),
            excluded_tables: excluded,
        })
        .collect();
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        println!("no connectors; create one with `tributary connector create postgresql <url> --name <name>`");
        return Ok(());
    }
    println!(
        "{:<20} {:<13} {:<32} SOURCE",
        "NAME", "STATE", "REPLICA DATABASE"
    );
    for v in &views {
        println!(
            "{:<20} {:<13} {:<32} {}",
            v.name, v.state, v.replica_database, v.source
        );
        if let Some(error) = v.last_error {
            println!("    error: {error}");
            if let Some(next) = v.next_step {
                println!("    next step: {next}");
            }
        }
        if !v.excluded_tables.is_empty() {
            let tables: Vec<String> = v
                .excluded_tables
                .iter()
                .map(|t| format!("{} ({})", t.table, t.decision))
                .collect();
            println!(
                "    warning: {} table{} not replicated: {}",
                tables.len(),
                if tables.len() == 1 { "" } else { "s" },
                tables.join(", ")
            );
        }
    }
    Ok(())
}

async fn delete(
    bookkeeping: &Bookkeeping,
    settings: &Settings,
    name: &ConnectorName,
) -> Result<(), Failure> {
    let connector = bookkeeping.connector(name).await?.ok_or_else(|| {
        anyhow::anyhow!("no connector named {name}; `tributary connector list` shows them")
    })?;
    let source = ConnInfo::parse(&bookkeeping.source_url(&connector).await?)?;
    // First the bookkeeping: a running daemon hears of it and stops the pipeline, which
    // lets go of the slot.
    bookkeeping.delete_connector(connector.id).await?;
    sink::drop_replica(&settings.store(), &connector.replica_database)
        .await
        .with_context(|| {
            format!(
                "dropping the replica database {}",
                connector.replica_database
            )
        })?;

    let slot = &connector.slot_name;
    let dropped = tokio::time::timeout(SLOT_DROP_TIMEOUT, async {
        let mut client = ReplicationClient::connect(&source).await?;
        let result = client.drop_slot(slot, true).await;
        client.close().await;
        match result {
            Err(e) if e.sqlstate() == Some("42704") => Ok(()), // already gone
            other => other,
        }
    })
    .await;
    match dropped {
        Ok(Ok(())) => {
            println!("deleted connector {name}: replica database and replication slot dropped");
            Ok(())
        }
        failed => {
            let reason = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!(
                    "timed out after {SLOT_DROP_TIMEOUT:?} waiting for the slot to be released"
                ),
            };
            Err(anyhow::anyhow!(
                "deleted connector {name} and its replica database, but could not drop replication \
                 slot {slot} on the source ({reason}). It retains WAL until dropped: run on the \
                 source `SELECT pg_drop_replication_slot('{slot}');`"
            )
            .into())
        }
    }
}
