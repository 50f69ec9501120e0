//! `tributary tail`: the source side of the pipeline, printed. Useful to check that a
//! source is reachable, that wal2json works and what its changes look like.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::change::{Change, ChangeKind, Column, Message, TableName, Value};
use crate::pg::{self, PgClient};
use crate::source::wal2json::{self, PluginOptions};
use crate::source::{
    replication, AckTracker, ConnInfo, ReplicationClient, ReplicationMessage, SnapshotAction,
};
use crate::types::SlotName;

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Source database URL: postgresql://user:password@host:port/dbname?sslmode=…
    #[arg(
        env = "TRIBUTARY_SOURCE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    source: String,
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let info = ConnInfo::parse(&args.source)?;
    let mut client = ReplicationClient::connect(&info).await?;
    let timeout = client.wal_sender_timeout().await?;
    let system = client.identify_system().await?;
    let slot = SlotName::new(format!("tributary_tail_{}", std::process::id()))?;
    let created = client
        .create_slot(&slot, true, SnapshotAction::NoExport)
        .await
        .context("creating a temporary replication slot")?;
    tracing::info!(
        source = %info,
        system_id = %system.system_id,
        %slot,
        from = %created.consistent_point,
        "streaming changes; Ctrl-C stops"
    );
    let numeric_as_string = replication::probe_numeric_as_string(&info).await?;
    if !numeric_as_string {
        tracing::warn!(
            "the source's wal2json predates 2.6 (no numeric-data-types-as-string): NaN and \
             Infinity in numeric and float columns print as NULL"
        );
    }
    let plugin = PluginOptions {
        numeric_as_string,
        ..PluginOptions::default()
    };
    // With numeric-data-types-as-string every number arrives as a JSON string: which
    // columns are numbers is asked of the catalog, so they print the same on every wal2json.
    let mut numbers = NumericColumns {
        catalog: if numeric_as_string {
            Some(pg::connect(&info).await?)
        } else {
            None
        },
        known: HashMap::new(),
    };
    let interval = replication::status_interval(Duration::from_secs(1), timeout);
    let mut stream = client
        .start_replication(&slot, created.consistent_point, plugin, interval)
        .await?;

    // Nothing is applied anywhere, so a change counts as done once printed.
    let mut tracker = AckTracker::new(created.consistent_point);
    let stdout = std::io::stdout();
    let mut line = String::new();
    // One listener for the whole loop: a signal that arrives while a message is printed
    // would be lost by a listener made anew on each turn.
    let shutdown = super::run::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            message = stream.next() => message?,
        };
        let Some(message) = message else { break };
        match message {
            ReplicationMessage::Keepalive(k) => {
                if let Some(position) = tracker.idle_position(k.wal_end) {
                    tracker.applied(position);
                }
            }
            ReplicationMessage::XLogData(x) => {
                let decoded = wal2json::decode(&x.data)?;
                line.clear();
                let numeric = match &decoded {
                    Message::Change(change) => numbers.of(&change.table).await,
                    _ => HashSet::new(),
                };
                describe(&decoded, &numeric, &mut line);
                writeln!(stdout.lock(), "{line}").context("writing to standard output")?;
                match decoded {
                    Message::Begin(_) => tracker.begin(),
                    Message::Commit(c) => {
                        let end = c.end_lsn.unwrap_or(x.wal_start);
                        tracker.commit(end);
                        tracker.applied(end);
                    }
                    _ => {}
                }
            }
            // In its place among the changes: a WARNING here is a change wal2json left out.
            ReplicationMessage::Notice(notice) => {
                writeln!(stdout.lock(), "{notice}").context("writing to standard output")?;
            }
        }
        stream.set_flushed(tracker.flushed());
    }
    // The temporary slot goes away with the session.
    stream.stop().await?.close().await;
    Ok(())
}

/// The numeric columns of each table seen, from the source's catalog (asked once per
/// table); without a catalog connection, none (numbers then come as JSON numbers).
struct NumericColumns {
    catalog: Option<PgClient>,
    known: HashMap<TableName, HashSet<String>>,
}

impl NumericColumns {
    async fn of(&mut self, table: &TableName) -> HashSet<String> {
        let Some(catalog) = &self.catalog else {
            return HashSet::new();
        };
        if let Some(columns) = self.known.get(table) {
            return columns.clone();
        }
        // Category N is the numbers; money's text form ("$1.00") is not one.
        let rows = catalog
            .query(
                "SELECT a.attname::text FROM pg_catalog.pg_attribute a
                   JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
                  WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0
                    AND t.typcategory = 'N' AND t.typname <> 'money'",
                &[&table.schema, &table.name],
            )
            .await;
        // A table dropped since, or a failed lookup: its values print as they came.
        let columns: HashSet<String> = rows
            .map(|rows| rows.iter().map(|row| row.get(0)).collect())
            .unwrap_or_default();
        self.known.insert(table.clone(), columns.clone());
        columns
    }
}

fn describe(message: &Message, numeric: &HashSet<String>, out: &mut String) {
    let _ = match message {
        Message::Begin(b) => write!(
            out,
            "BEGIN xid={} commit_time={}",
            opt(&b.xid),
            b.commit_time.as_deref().unwrap_or("-")
        ),
        Message::Commit(c) => write!(
            out,
            "COMMIT xid={} lsn={} end_lsn={}",
            opt(&c.xid),
            opt(&c.lsn),
            opt(&c.end_lsn)
        ),
        Message::Change(change) => describe_change(change, numeric, out),
        Message::Logical(m) => write!(
            out,
            "MESSAGE prefix={} transactional={} content={:?}",
            m.prefix, m.transactional, m.content
        ),
    };
}

/// A change on one line; `numeric` columns print bare, other text quoted.
fn describe_change(
    change: &Change,
    numeric: &HashSet<String>,
    out: &mut String,
) -> std::fmt::Result {
    let kind = match change.kind {
        ChangeKind::Insert => "INSERT",
        ChangeKind::Update => "UPDATE",
        ChangeKind::Delete => "DELETE",
        ChangeKind::Truncate => "TRUNCATE",
    };
    write!(out, "{kind} {}.{}", change.table.schema, change.table.name)?;
    let columns = |out: &mut String, label: &str, cols: &[Column]| -> std::fmt::Result {
        if cols.is_empty() {
            return Ok(());
        }
        write!(out, " {label}:")?;
        for c in cols {
            match &c.value {
                Value::Null => write!(out, " {}=NULL", c.name)?,
                Value::Bool(b) => write!(out, " {}={b}", c.name)?,
                Value::Number(n) => write!(out, " {}={n}", c.name)?,
                Value::Text(t) if numeric.contains(&c.name) => write!(out, " {}={t}", c.name)?,
                Value::Text(t) => write!(out, " {}={t:?}", c.name)?,
            }
        }
        Ok(())
    };
    columns(out, "key", &change.identity)?;
    columns(out, "new", &change.columns)
}

fn opt<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map_or_else(|| "-".to_owned(), T::to_string)
}
