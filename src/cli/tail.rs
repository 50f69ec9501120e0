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
    replication, AckTracker, ConnInfo, ReplicationClient, SnapshotAction, StreamEvent,
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
            StreamEvent::Keepalive(k) => {
                if let Some(position) = tracker.idle_position(k.wal_end) {
                    tracker.applied(position);
                }
            }
            StreamEvent::Message(decoded) => {
                line.clear();
                let numeric = match &decoded {
                    Message::Change(change) => numbers.of(change).await,
                    _ => None,
                };
                describe(&decoded, numeric, &mut line);
                writeln!(stdout.lock(), "{line}").context("writing to standard output")?;
                match decoded {
                    Message::Begin(_) => tracker.begin(),
                    Message::Commit(c) => {
                        tracker.commit(c.end_lsn);
                        tracker.applied(c.end_lsn);
                    }
                    _ => {}
                }
            }
            // In its place among the changes: a WARNING here is a change wal2json left out.
            StreamEvent::Notice(notice) => {
                writeln!(stdout.lock(), "{notice}").context("writing to standard output")?;
            }
        }
        stream.set_flushed(tracker.flushed());
    }
    // The temporary slot goes away with the session.
    stream.stop().await?.close().await;
    Ok(())
}

/// The columns of each table seen whose type wal2json writes as a number
/// ([`wal2json::sends_as_number`]), from the source's catalog. Without a catalog connection
/// (wal2json before 2.6) there is nothing to ask: numbers come as JSON numbers, by the same
/// rule.
struct NumericColumns {
    catalog: Option<PgClient>,
    known: HashMap<TableName, TableColumns>,
}

#[derive(Default)]
struct TableColumns {
    all: HashSet<String>,
    numeric: HashSet<String>,
}

impl NumericColumns {
    /// The numeric columns of `change`'s table (`None` without a catalog), asked again
    /// when the change has a column not seen before (added since).
    async fn of(&mut self, change: &Change) -> Option<&HashSet<String>> {
        let catalog = self.catalog.as_ref()?;
        let seen = self.known.get(&change.table).is_some_and(|known| {
            change
                .columns
                .iter()
                .chain(&change.identity)
                .all(|c| known.all.contains(&c.name))
        });
        if !seen {
            let rows = catalog
                .query(
                    "SELECT a.attname::text, a.atttypid FROM pg_catalog.pg_attribute a
                       JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0
                        AND NOT a.attisdropped",
                    &[&change.table.schema, &change.table.name],
                )
                .await;
            // A table dropped since, or a failed lookup: its values print as they came.
            let mut columns = TableColumns::default();
            for row in rows.unwrap_or_default() {
                let name: String = row.get(0);
                if wal2json::sends_as_number(row.get(1)) {
                    columns.numeric.insert(name.clone());
                }
                columns.all.insert(name);
            }
            self.known.insert(change.table.clone(), columns);
        }
        Some(&self.known[&change.table].numeric)
    }
}

fn describe(message: &Message, numeric: Option<&HashSet<String>>, out: &mut String) {
    let _ = match message {
        Message::Begin(b) => write!(
            out,
            "BEGIN xid={} commit_time={}",
            b.xid,
            b.commit_time
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ),
        Message::Commit(c) => write!(
            out,
            "COMMIT xid={} lsn={} end_lsn={}",
            c.xid, c.lsn, c.end_lsn
        ),
        Message::Change(change) => describe_change(change, numeric, out),
        Message::Logical(m) => write!(
            out,
            "MESSAGE prefix={} transactional={} content={:?}",
            m.prefix, m.transactional, m.content
        ),
    };
}

/// A change on one line: numbers bare, other text quoted, by the column's type (`numeric`:
/// the columns of number types) whether wal2json sent them as JSON numbers or strings.
fn describe_change(
    change: &Change,
    numeric: Option<&HashSet<String>>,
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
                Value::Text(t) if numeric.is_some_and(|n| n.contains(&c.name)) => {
                    write!(out, " {}={t}", c.name)?
                }
                Value::Text(t) => write!(out, " {}={t:?}", c.name)?,
            }
        }
        Ok(())
    };
    columns(out, "key", &change.identity)?;
    columns(out, "new", &change.columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Lsn;

    #[test]
    fn numbers_print_bare_by_column_type_whatever_json_type_they_came_as() {
        let column = |name: &str, value: Value| Column {
            name: name.to_owned(),
            value,
        };
        let change = |id: Value, price: Value| Change {
            kind: ChangeKind::Update,
            lsn: Lsn::new(0x16),
            table: TableName {
                schema: "app".to_owned(),
                name: "items".to_owned(),
            },
            columns: vec![
                column("id", id.clone()),
                column("price", price),
                column("name", Value::Text("7".to_owned())),
                column("note", Value::Null),
                column("on", Value::Bool(true)),
            ],
            identity: vec![column("id", id)],
        };
        let numeric: HashSet<String> = ["id", "price"].map(str::to_owned).into();
        let text = |s: &str| Value::Text(s.to_owned());
        let number = |s: &str| Value::Number(s.to_owned());
        let printed = |id, price, numeric| {
            let mut out = String::new();
            describe_change(&change(id, price), numeric, &mut out).unwrap();
            out
        };
        // numeric-data-types-as-string (2.6+): every number a string, typed by the catalog.
        assert_eq!(
            printed(text("1"), text("NaN"), Some(&numeric)),
            "UPDATE app.items key: id=1 new: id=1 price=NaN name=\"7\" note=NULL on=true"
        );
        // Before 2.6: numbers are JSON numbers, and no catalog is asked.
        assert_eq!(
            printed(number("1"), number("2.5"), None),
            "UPDATE app.items key: id=1 new: id=1 price=2.5 name=\"7\" note=NULL on=true"
        );
    }

    #[test]
    fn transactions_print_their_positions_and_commit_time() {
        let time = chrono::DateTime::from_timestamp_micros(1_732_219_959_022_360).unwrap();
        let printed = |message: Message| {
            let mut out = String::new();
            describe(&message, None, &mut out);
            out
        };
        assert_eq!(
            printed(Message::Begin(crate::change::Begin {
                xid: 731,
                commit_lsn: Lsn::new(0x1541608),
                end_lsn: Lsn::new(0x1541638),
                commit_time: time,
            })),
            "BEGIN xid=731 commit_time=2024-11-21T20:12:39.022360Z"
        );
        assert_eq!(
            printed(Message::Commit(crate::change::Commit {
                xid: 731,
                lsn: Lsn::new(0x1541608),
                end_lsn: Lsn::new(0x1541638),
                commit_time: time,
            })),
            "COMMIT xid=731 lsn=0/1541608 end_lsn=0/1541638"
        );
    }
}
