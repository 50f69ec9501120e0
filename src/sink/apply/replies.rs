//! Each reply checked against what its statement had to do: an error, or a row count that
//! shows a change found no row, fails the target transaction naming the change.

use std::sync::Arc;

use super::queue::{InFlight, Op, Outcome, Reply};
use super::ReplicaSink;
use crate::change::{ChangeKind, NanPolicy};
use crate::sink::error::{DetailForDebug, SinkError};
use crate::sink::replica::setup;
use crate::types::Lsn;

impl ReplicaSink {
    /// Checks a reply against what its request expected.
    pub(super) fn check(&mut self, done: InFlight) -> Result<(), SinkError> {
        self.check_reply(done).map_err(|error| self.diagnose(error))
    }

    /// `error` with its likely cause when the connector accepted NaN arriving as NULL: a
    /// NULL that was NaN on the source breaks a NOT NULL column, and cannot find its row
    /// under `REPLICA IDENTITY FULL`.
    fn diagnose(&self, error: SinkError) -> SinkError {
        if self.nan != NanPolicy::AsNull {
            return error;
        }
        let meta = |name: &str| self.tables.iter().find(|t| &*t.meta.display == name);
        let columns = match &error {
            SinkError::RowNotFound { table, .. } => meta(table)
                .filter(|t| t.meta.replica_identity == 'f')
                .map(|t| t.meta.nan_columns()),
            SinkError::Statement { table, source, .. }
            | SinkError::BatchStatement { table, source, .. } => source
                .as_db_error()
                .filter(|db| db.code().code() == "23502")
                .and_then(|db| {
                    let column = db.column()?;
                    meta(table).map(|t| {
                        let mut columns = t.meta.nan_columns();
                        columns.retain(|c| *c == column);
                        columns
                    })
                }),
            _ => None,
        };
        match columns {
            Some(columns) if !columns.is_empty() => SinkError::NanArrivedAsNull {
                columns: columns.join(", "),
                error: Box::new(error),
            },
            _ => error,
        }
    }

    fn check_reply(&mut self, done: InFlight) -> Result<(), SinkError> {
        self.in_flight_bytes -= done.bytes;
        let reply = done.reply.expect("only replied requests are checked");
        match done.op {
            Op::Begin => reply
                .map(drop)
                .map_err(setup(&self.database, "starting the target transaction")),
            Op::ReadProgress => self.lock_progress(reply),
            Op::Change {
                table,
                kind,
                lsn,
                identity_always,
            } => check_change(table, kind, lsn, identity_always, reply),
            Op::Batch {
                table,
                kind,
                lsns,
                keys,
            } => check_batch(table, kind, &lsns, &keys, reply),
            Op::Truncate { tables, lsn } => reply.map(drop).map_err(|source| {
                tracing::debug!(%tables, ?lsn, "truncating failed: {}", DetailForDebug(&source));
                SinkError::Statement {
                    table: tables,
                    kind: ChangeKind::Truncate,
                    lsn,
                    source,
                }
            }),
            Op::Refresh { view, lsn } => reply.map(drop).map_err(|source| {
                tracing::debug!(%view, ?lsn, "refreshing failed: {}", DetailForDebug(&source));
                SinkError::Refresh { view, lsn, source }
            }),
            Op::RecordProgress { lsn } => self.check_recorded(lsn, reply),
        }
    }
}

fn check_change(
    table: Arc<str>,
    kind: ChangeKind,
    lsn: Option<Lsn>,
    identity_always: bool,
    reply: Reply,
) -> Result<(), SinkError> {
    match reply {
        Ok(Outcome::Rows(1)) => Ok(()),
        Ok(Outcome::Rows(0)) if kind != ChangeKind::Insert => Err(SinkError::RowNotFound {
            table: table.to_string(),
            kind,
            lsn,
            identity_always,
        }),
        Ok(Outcome::Rows(affected)) => Err(SinkError::RowCount {
            table: table.to_string(),
            kind,
            lsn,
            affected,
            expected: 1,
        }),
        Ok(_) => unreachable!("a single change reports rows"),
        Err(source) => {
            tracing::debug!(%table, ?lsn, "applying failed: {}", DetailForDebug(&source));
            Err(SinkError::Statement {
                table: table.to_string(),
                kind,
                lsn,
                source,
            })
        }
    }
}

fn check_batch(
    table: Arc<str>,
    kind: ChangeKind,
    lsns: &[Option<Lsn>],
    keys: &[String],
    reply: Reply,
) -> Result<(), SinkError> {
    let expected = lsns.len() as u64;
    match reply {
        Ok(Outcome::Rows(affected)) if affected == expected => Ok(()),
        Ok(Outcome::Ords(ords)) if ords.len() as u64 == expected => Ok(()),
        Ok(Outcome::Ords(ords)) if (ords.len() as u64) < expected => {
            let mut found = vec![false; lsns.len()];
            for ord in ords {
                if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| found.get_mut(i)) {
                    *slot = true;
                }
            }
            let missing = found
                .iter()
                .position(|&f| !f)
                .expect("fewer rows than changes");
            Err(SinkError::RowNotFound {
                table: table.to_string(),
                kind,
                lsn: lsns[missing],
                identity_always: false,
            })
        }
        Ok(Outcome::Rows(affected)) => Err(SinkError::RowCount {
            table: table.to_string(),
            kind,
            lsn: lsns[0],
            affected,
            expected,
        }),
        Ok(Outcome::Ords(ords)) => Err(SinkError::RowCount {
            table: table.to_string(),
            kind,
            lsn: lsns[0],
            affected: ords.len() as u64,
            expected,
        }),
        Ok(Outcome::Progress(_)) => unreachable!("a batch reports rows"),
        Err(source) => {
            tracing::debug!(%table, first = ?lsns[0], "a batch failed: {}", DetailForDebug(&source));
            match duplicate_key_row(&source, keys) {
                Some(row) => Err(SinkError::Statement {
                    table: table.to_string(),
                    kind,
                    lsn: lsns[row],
                    source,
                }),
                None => Err(SinkError::BatchStatement {
                    table: table.to_string(),
                    kind,
                    rows: lsns.len(),
                    first_lsn: lsns[0],
                    last_lsn: lsns[lsns.len() - 1],
                    source,
                }),
            }
        }
    }
}

/// The row of a batched INSERT whose key a unique violation quotes
/// (`Key (id)=(5) already exists.`), when it is one of `keys`: the last one, since when
/// the batch holds the key twice, the later row is the duplicate.
fn duplicate_key_row(error: &tokio_postgres::Error, keys: &[String]) -> Option<usize> {
    let db = error.as_db_error()?;
    if db.code().code() != "23505" {
        return None;
    }
    let detail = db.detail()?;
    let values = detail
        .strip_prefix("Key (")?
        .split_once(")=(")?
        .1
        .strip_suffix(") already exists.")?;
    keys.iter().rposition(|key| key == values)
}
