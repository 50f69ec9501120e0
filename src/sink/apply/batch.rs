//! Batching: changes of one shape to one table sent as one statement.
//!
//! A statement per change costs the server a Bind, an Execute and a Sync (with a network
//! flush) each, which dominates for small rows. So changes to one table that have the same
//! shape (kind and column set) are collected into a *batch* and sent as one statement whose
//! rows come from one `text[]` parameter per column (`ROWS FROM (unnest($1), …)`, see
//! `table.rs`). Every table has at most one open batch; it is sent when a change of another
//! shape arrives for the table, when it is full ([`MAX_BATCH_ROWS`]), when the batches hold
//! too much ([`MAX_BUFFERED_BYTES`]), before a TRUNCATE, and at commit.
//!
//! That reorders changes *across* tables inside a target transaction, never within a table.
//! It is safe because the apply session runs with `session_replication_role = replica`:
//! foreign-key checks and cascades, rules and ordinary triggers do not fire, so a statement
//! on one table cannot observe or affect another, and the transaction is atomic, so nobody
//! sees the order. (Triggers enabled `ALWAYS` or `REPLICA` on replica tables do fire and
//! must not depend on other tables.)
//!
//! An UPDATE or DELETE joins to its batch by key, so a batch never holds a key twice and
//! `RETURNING` the row's ordinality shows which change, if any, found no row. An UPDATE of a
//! key the open batch already updates, with the same columns, *replaces* that row's values:
//! both statements would have found the same row, and the later one overwrites every column
//! the earlier one set, so the row ends the same and the server does the work once. This is
//! what keeps hot rows (a counter, pgbench's branches) from cutting batches short. Any other
//! repeat (a DELETE, a different column set) sends the batch first. UPDATEs that change the
//! key, and everything that finds its row by scan, are sent as single statements after the
//! table's open batch. A batch of one row is sent as the single statement too.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use tokio_postgres::types::ToSql;

use super::queue::{Op, Outcome, Request};
use super::shapes::Shape;
use super::{ReplicaSink, ROW_BYTES};
use crate::change::{Change, ChangeKind};
use crate::sink::error::SinkError;
use crate::types::Lsn;

/// Rows in one batch, at most.
const MAX_BATCH_ROWS: usize = 1000;
/// Parameter bytes held in open batches (all tables), at most.
const MAX_BUFFERED_BYTES: usize = 16 << 20;

/// Changes of one shape to one table, waiting to be sent as one statement.
pub(super) struct Batch {
    shape: Arc<Shape>,
    /// One array per statement parameter, one element per row.
    columns: Vec<Vec<Option<String>>>,
    lsns: Vec<Option<Lsn>>,
    /// Key hashes of the rows (UPDATE, DELETE) and the row each belongs to.
    keys: HashMap<u64, usize, BuildHasherDefault<KeyHashHasher>>,
    bytes: usize,
}

impl Batch {
    fn new(shape: Arc<Shape>) -> Batch {
        Batch {
            columns: vec![Vec::new(); shape.params.len()],
            shape,
            lsns: Vec::new(),
            keys: HashMap::default(),
            bytes: 0,
        }
    }

    /// Adds the change's row, taking its values; returns the bytes it holds.
    fn push(&mut self, change: &mut Change, key: Option<u64>) -> usize {
        let mut bytes = ROW_BYTES;
        for (param, column) in self.columns.iter_mut().enumerate() {
            let text = self.shape.take(change, param);
            bytes += text.as_ref().map_or(0, String::len);
            column.push(text);
        }
        if let Some(key) = key {
            self.keys.insert(key, self.lsns.len());
        }
        self.lsns.push(Some(change.lsn));
        self.bytes += bytes;
        bytes
    }

    /// The row holding the same key as `change` (whose key hashes to `key`), if any.
    fn row_with_key(&self, change: &Change, key: u64) -> Option<usize> {
        let row = *self.keys.get(&key)?;
        let same = self.shape.key_params.iter().all(|&param| {
            self.columns[param][row].as_deref() == self.shape.value(change, param).as_text()
        });
        same.then_some(row)
    }

    /// Overwrites `row` with the values of `change`, an UPDATE of the same shape and key
    /// (see the module docs); the row keeps the LSN of its first change, the one a missing
    /// row would fail. Returns the bytes the batch holds now minus before.
    fn replace(&mut self, row: usize, change: &mut Change) -> isize {
        let mut delta = 0isize;
        for (param, column) in self.columns.iter_mut().enumerate() {
            let value = self.shape.take(change, param);
            let slot = &mut column[row];
            delta -= slot.as_ref().map_or(0, String::len) as isize;
            delta += value.as_ref().map_or(0, String::len) as isize;
            *slot = value;
        }
        self.bytes = self.bytes.saturating_add_signed(delta);
        delta
    }
}

/// Key hashes are hashes already.
#[derive(Default)]
struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl ReplicaSink {
    /// Sends `change`, which fits `shape`, into the table's open batch (see the module docs),
    /// or as its single statement when the shape has no batch statement or the change moves
    /// its row to another key.
    pub(super) async fn send(
        &mut self,
        table: usize,
        shape: Arc<Shape>,
        mut change: Change,
    ) -> Result<(), SinkError> {
        if shape.batch.is_none() || !shape.keeps_key(&change) {
            self.flush_batch(table).await?;
            let params = (0..shape.params.len())
                .map(|param| shape.take(&mut change, param))
                .collect();
            return self
                .send_single(table, &shape, Some(change.lsn), params)
                .await;
        }

        let key = (change.kind != ChangeKind::Insert).then(|| shape.key_hash(&change));
        if let (Some(key), Some(batch)) = (key, &mut self.tables[table].open) {
            if change.kind == ChangeKind::Update && Arc::ptr_eq(&batch.shape, &shape) {
                if let Some(row) = batch.row_with_key(&change, key) {
                    let delta = batch.replace(row, &mut change);
                    self.buffered_bytes = self.buffered_bytes.saturating_add_signed(delta);
                    return Ok(());
                }
            }
        }
        let fits = self.tables[table].open.as_ref().is_none_or(|batch| {
            Arc::ptr_eq(&batch.shape, &shape)
                && key.is_none_or(|key| !batch.keys.contains_key(&key))
        });
        if !fits {
            self.flush_batch(table).await?;
        }
        let entry = &mut self.tables[table];
        let batch = match &mut entry.open {
            Some(batch) => batch,
            None => {
                self.open_batches.push(table);
                entry.open.insert(Batch::new(shape))
            }
        };
        self.buffered_bytes += batch.push(&mut change, key);
        if batch.lsns.len() >= MAX_BATCH_ROWS {
            self.flush_batch(table).await?;
        }
        if self.buffered_bytes > MAX_BUFFERED_BYTES {
            self.flush_batches().await?;
        }
        Ok(())
    }

    /// Sends one change as its single-row statement.
    async fn send_single(
        &mut self,
        table: usize,
        shape: &Shape,
        lsn: Option<Lsn>,
        params: Vec<Option<String>>,
    ) -> Result<(), SinkError> {
        let meta = &self.tables[table].meta;
        let op = Op::Change {
            table: Arc::clone(&meta.display),
            kind: shape.key.kind,
            lsn,
            identity_always: meta.has_identity_always,
        };
        let bytes = ROW_BYTES + params.iter().flatten().map(String::len).sum::<usize>();
        let client = Arc::clone(&self.client);
        let statement = shape.statement.clone();
        let request: Request = Box::pin(async move {
            client
                .execute_raw(&statement, params)
                .await
                .map(Outcome::Rows)
        });
        self.push(request, op, bytes).await
    }

    /// Sends the table's open batch, if any.
    async fn flush_batch(&mut self, table: usize) -> Result<(), SinkError> {
        let Some(batch) = self.tables[table].open.take() else {
            return Ok(());
        };
        if let Some(position) = self.open_batches.iter().position(|&t| t == table) {
            self.open_batches.swap_remove(position);
        }
        self.buffered_bytes -= batch.bytes;
        let Batch {
            shape,
            columns,
            lsns,
            bytes,
            ..
        } = batch;
        if lsns.len() == 1 {
            let params = columns
                .into_iter()
                .map(|mut column| column.pop().expect("a batch of one row"))
                .collect();
            return self.send_single(table, &shape, lsns[0], params).await;
        }
        let kind = shape.key.kind;
        let keys = if kind == ChangeKind::Insert && !shape.key_params.is_empty() {
            row_keys(&columns, &shape.key_params, lsns.len())
        } else {
            Vec::new()
        };
        let op = Op::Batch {
            table: Arc::clone(&self.tables[table].meta.display),
            kind,
            lsns,
            keys,
        };
        let client = Arc::clone(&self.client);
        let statement = shape
            .batch
            .clone()
            .expect("only shapes with a batch statement open batches");
        let request: Request = if kind == ChangeKind::Insert {
            Box::pin(async move {
                client
                    .execute_raw(&statement, columns)
                    .await
                    .map(Outcome::Rows)
            })
        } else {
            Box::pin(async move {
                let params: Vec<&(dyn ToSql + Sync)> = columns
                    .iter()
                    .map(|column| column as &(dyn ToSql + Sync))
                    .collect();
                let rows = client.query(&statement, &params).await?;
                Ok(Outcome::Ords(rows.iter().map(|row| row.get(0)).collect()))
            })
        };
        self.push(request, op, bytes + ROW_BYTES).await
    }

    /// Sends every open batch.
    pub(super) async fn flush_batches(&mut self) -> Result<(), SinkError> {
        while let Some(&table) = self.open_batches.last() {
            self.flush_batch(table).await?;
        }
        Ok(())
    }
}

/// Each row's key as the server quotes it in a duplicate-key error: the values' text
/// joined by `", "`.
fn row_keys(columns: &[Vec<Option<String>>], key_params: &[usize], rows: usize) -> Vec<String> {
    (0..rows)
        .map(|row| {
            key_params
                .iter()
                .map(|&param| columns[param][row].as_deref().unwrap_or("null"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_rows_render_keys_as_the_server_quotes_them() {
        let columns = vec![
            vec![Some("1".to_owned()), Some("2".to_owned())],
            vec![Some("a b".to_owned()), Some("c".to_owned())],
        ];
        assert_eq!(row_keys(&columns, &[0], 2), ["1", "2"]);
        assert_eq!(row_keys(&columns, &[0, 1], 2), ["1, a b", "2, c"]);
    }
}
