//! The rows of a snapshot: the parallel binary COPY under the exported snapshot, large
//! tables in ctid ranges (see the parent module's doc).

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::change::TableName;
use crate::pg::{quote_ident, ConnInfo, PgClient};
use crate::sink::sync;
use crate::source::catalog::SourceTable;
use crate::source::copy::{OpenError, SnapshotSession};
use crate::types::{FencingToken, Lsn};

use super::{
    connect, query_error, server_version_num, source_error, Side, SnapshotError, SnapshotJob,
    SnapshotStats, ValueRemedy,
};

/// From this version on, `ctid` ranges are read with a TID Range Scan; before, every
/// range would scan the whole table.
const TID_RANGE_SCAN_VERSION: u32 = 140_000;

/// Settings of every worker's source session: no timeouts cut a long read short, values
/// copied as text come out in forms any server parses back exactly (an empty
/// `search_path` qualifies the names `regclass` and its kin print, so that they resolve
/// on the replica whatever its path), and row-level security raises an error rather than
/// silently hiding rows.
const SOURCE_SESSION: &str = "SET statement_timeout = 0; SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; SET row_security = off; \
     SET search_path = ''; \
     SET datestyle = 'ISO, YMD'; SET intervalstyle = postgres; SET timezone = 'UTC'; \
     SET extra_float_digits = 3; SET bytea_output = hex";

/// Settings of every worker's replica session; see the module docs on
/// `synchronous_commit`. A table copied again into a complete replica (a resync) has its
/// triggers and foreign keys: as in an apply session, they do not fire.
const REPLICA_SESSION: &str = "SET statement_timeout = 0; SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; SET synchronous_commit = off; \
     SET datestyle = 'ISO, YMD'; SET intervalstyle = postgres; \
     SET session_replication_role = replica";

/// Parallel copy of the job's tables from its snapshot into the replica, which must have
/// its pre-data schema. `workers` tasks, each with its own source and replica session,
/// take chunks largest first; the first error stops the others and is returned.
///
/// Once `job.deadline` has passed no table is started any more (the chunks of tables
/// already started are finished: a table is exact at one snapshot): those tables are left
/// for the next snapshot, which keeps each source transaction short. A table whose copy
/// completes is recorded in the replica as copied at `job.copied_at`, in the transaction
/// of its last chunk or right after it.
///
/// `progress` is called after each chunk is committed on the replica.
pub async fn copy_data(
    job: &SnapshotJob<'_>,
    progress: &(dyn Fn(Progress<'_>) + Send + Sync),
) -> Result<SnapshotStats, SnapshotError> {
    let started = Instant::now();
    let version = {
        let source = connect(Side::Source, job.source).await?;
        server_version_num(&source, Side::Source).await?
    };
    let chunks = plan_chunks(
        job.tables,
        job.chunk_bytes,
        version >= TID_RANGE_SCAN_VERSION,
    );
    let remaining: Vec<AtomicUsize> = (0..job.tables.len()).map(|_| AtomicUsize::new(0)).collect();
    for chunk in &chunks {
        remaining[chunk.table].fetch_add(1, Ordering::Relaxed);
    }
    let workers = job.workers.max(1).min(chunks.len());
    tracing::info!(
        tables = job.tables.len(),
        chunks = chunks.len(),
        workers,
        "copying rows under snapshot {}",
        job.snapshot_name
    );
    let context = Arc::new(CopyContext {
        source: job.source.clone(),
        replica: job.replica.clone(),
        snapshot_name: job.snapshot_name.to_owned(),
        tables: job.tables.iter().map(TablePlan::new).collect(),
        queue: Mutex::new(Queue {
            started: vec![false; job.tables.len()],
            chunks: chunks.into(),
        }),
        remaining,
        deadline: job.deadline,
        copied_at: job.copied_at,
        token: job.token,
    });

    let (events, mut received) = mpsc::unbounded_channel::<ChunkDone>();
    // Owns every worker: dropping it (an error here, or the caller giving up on this
    // future) aborts them all, which closes their sessions.
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(worker(context.clone(), events.clone()));
    }
    drop(events);

    let mut stats = SnapshotStats {
        tables: job.tables.len(),
        rows: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    let mut report = |done: ChunkDone| {
        stats.rows += done.rows;
        stats.bytes += done.bytes;
        progress(Progress {
            table: &job.tables[done.table].name,
            rows: done.rows,
            bytes: done.bytes,
            copies: done.copies,
        });
    };
    loop {
        tokio::select! {
            // Progress first, so that it is reported before a worker's end is seen.
            biased;
            Some(done) = received.recv() => report(done),
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(error))) => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    return Err(error);
                }
                Some(Err(join_error)) => {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    match join_error.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        // Only this function aborts workers, and it has returned by then.
                        Err(e) => unreachable!("copy worker cancelled: {e}"),
                    }
                }
            },
        }
    }
    while let Ok(done) = received.try_recv() {
        report(done);
    }
    stats.tables = context
        .remaining
        .iter()
        .filter(|left| left.load(Ordering::Acquire) == 0)
        .count();
    stats.elapsed = started.elapsed();
    tracing::info!(
        rows = stats.rows,
        bytes = stats.bytes,
        elapsed_ms = stats.elapsed.as_millis() as u64,
        "rows copied"
    );
    Ok(stats)
}

/// A part of one table: heap pages `[start, end)`, `end` open for the last part (the
/// table may have grown since its size was read), or the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    table: usize,
    start: u64,
    end: Option<u64>,
    estimated_bytes: u64,
}

impl Chunk {
    fn is_whole(&self) -> bool {
        self.start == 0 && self.end.is_none()
    }

    fn filter(&self) -> String {
        match (self.start, self.end) {
            (0, None) => String::new(),
            (0, Some(end)) => format!(" WHERE ctid < '({end},0)'"),
            (start, None) => format!(" WHERE ctid >= '({start},0)'"),
            (start, Some(end)) => format!(" WHERE ctid >= '({start},0)' AND ctid < '({end},0)'"),
        }
    }
}

/// Splits tables above `chunk_bytes` into page ranges of about that size (when `ranges`
/// are efficient on the source), and orders them table by table, largest table first: the
/// longest tables start early and small ones fill the gaps at the end, and tables complete
/// one after the other (the workers share the ranges of one table), so an interruption
/// leaves about one unfinished table per worker to copy again, not every table.
fn plan_chunks(tables: &[SourceTable], chunk_bytes: u64, ranges: bool) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (index, table) in tables.iter().enumerate() {
        let whole = Chunk {
            table: index,
            start: 0,
            end: None,
            estimated_bytes: table.estimated_bytes,
        };
        if !ranges || chunk_bytes == 0 || table.estimated_bytes <= chunk_bytes || table.pages < 2 {
            chunks.push(whole);
            continue;
        }
        let parts = table.estimated_bytes.div_ceil(chunk_bytes).min(table.pages);
        let pages_per_part = table.pages.div_ceil(parts);
        let mut start = 0;
        while start < table.pages {
            let end = start + pages_per_part;
            let pages = end.min(table.pages) - start;
            chunks.push(Chunk {
                table: index,
                start,
                end: (end < table.pages).then_some(end),
                estimated_bytes: table.estimated_bytes / table.pages * pages,
            });
            start = end;
        }
    }
    let size = |c: &Chunk| tables[c.table].estimated_bytes;
    chunks.sort_by(|a, b| {
        size(b)
            .cmp(&size(a))
            .then(a.table.cmp(&b.table))
            .then(a.start.cmp(&b.start))
    });
    chunks
}

/// One chunk copied, as [`copy_data`] reports it.
#[derive(Debug)]
pub struct Progress<'a> {
    pub table: &'a TableName,
    pub rows: u64,
    pub bytes: u64,
    /// Set when this completed the table's copy: how many complete copies of it the
    /// replica has recorded now.
    pub copies: Option<u32>,
}

/// What every worker shares.
struct CopyContext {
    source: ConnInfo,
    replica: ConnInfo,
    snapshot_name: String,
    tables: Vec<TablePlan>,
    queue: Mutex<Queue>,
    /// Per table, its chunks not yet committed.
    remaining: Vec<AtomicUsize>,
    deadline: Option<Instant>,
    copied_at: Lsn,
    token: FencingToken,
}

struct Queue {
    chunks: VecDeque<Chunk>,
    /// Per table, whether a chunk of it was handed out.
    started: Vec<bool>,
}

impl CopyContext {
    /// The next chunk, largest first; past the deadline only chunks of tables already
    /// started.
    fn next_chunk(&self) -> Option<Chunk> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let late = self.deadline.is_some_and(|at| Instant::now() >= at);
        let index = if late {
            let started = &queue.started;
            queue.chunks.iter().position(|c| started[c.table])?
        } else {
            0
        };
        let chunk = queue.chunks.remove(index)?;
        queue.started[chunk.table] = true;
        Some(chunk)
    }
}

/// The SQL of one table, written once.
struct TablePlan {
    display: String,
    schema: String,
    name: String,
    /// `"schema"."table"`.
    qualified: String,
    /// `"a", "b"`: the stored columns, in order.
    columns: String,
    /// ` ("a", "b")`, or nothing for a table without stored columns (which may still
    /// have rows).
    column_list: String,
    binary: bool,
}

impl TablePlan {
    fn new(table: &SourceTable) -> TablePlan {
        let columns = table
            .columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        TablePlan {
            display: format!("{}.{}", table.name.schema, table.name.name),
            schema: table.name.schema.clone(),
            name: table.name.name.clone(),
            qualified: format!(
                "{}.{}",
                quote_ident(&table.name.schema),
                quote_ident(&table.name.name)
            ),
            column_list: if columns.is_empty() {
                String::new()
            } else {
                format!(" ({columns})")
            },
            columns,
            binary: table.binary_copy,
        }
    }

    /// The source side of `chunk`. A whole table is copied by name, which reads it
    /// without the executor (and, like `ONLY`, without an inheritance child's rows, which
    /// are tables of their own); a page range needs a query.
    fn copy_out(&self, chunk: &Chunk) -> String {
        let format = self.format();
        if chunk.is_whole() {
            format!(
                "COPY {}{} TO STDOUT (FORMAT {format})",
                self.qualified, self.column_list
            )
        } else {
            format!(
                "COPY (SELECT {} FROM ONLY {}{}) TO STDOUT (FORMAT {format})",
                self.columns,
                self.qualified,
                chunk.filter()
            )
        }
    }

    /// The replica side of `chunk`. A whole table is loaded with `FREEZE`, right after
    /// [`TablePlan::truncate`] in the same transaction (which `FREEZE` requires): rows are
    /// written frozen and pages marked all-visible, so neither the index builds after the
    /// copy nor the first readers of the replica and its branches rewrite every page to
    /// set hint bits, and no anti-wraparound vacuum has to visit them later. That frozen
    /// rows are visible to older snapshots does not matter: nothing reads the replica
    /// before the table is in sync. `frozen` says whether the truncate could be done (a
    /// table a foreign key references cannot be truncated; it was emptied before).
    fn copy_in(&self, frozen: bool) -> String {
        let freeze = if frozen { ", FREEZE" } else { "" };
        format!(
            "COPY {}{} FROM STDIN (FORMAT {}{freeze})",
            self.qualified,
            self.column_list,
            self.format()
        )
    }

    fn format(&self) -> &'static str {
        if self.binary {
            "binary"
        } else {
            "text"
        }
    }
}

/// A finished chunk, for the progress report.
#[derive(Debug)]
struct ChunkDone {
    table: usize,
    rows: u64,
    bytes: u64,
    copies: Option<u32>,
}

/// One copy worker: opens its sessions, then copies chunks until the queue is empty.
async fn worker(
    context: Arc<CopyContext>,
    events: mpsc::UnboundedSender<ChunkDone>,
) -> Result<(), SnapshotError> {
    let mut source = SnapshotSession::open(&context.source, SOURCE_SESSION, &context.snapshot_name)
        .await
        .map_err(|e| match e {
            OpenError::SnapshotGone { name, source } => SnapshotError::SnapshotGone {
                name,
                reason: source.to_string(),
            },
            OpenError::Session(e) => source_error("opening the snapshot session", e),
        })?;
    let replica = connect(Side::Replica, &context.replica).await?;
    replica
        .batch_execute(REPLICA_SESSION)
        .await
        .map_err(|e| query_error(Side::Replica, "setting up the session", e))?;

    let fence = Fence {
        database: &context.replica.dbname,
        token: context.token,
        copied_at: context.copied_at,
    };
    while let Some(chunk) = context.next_chunk() {
        let table = &context.tables[chunk.table];
        let (rows, bytes, mut copies) =
            copy_chunk(&mut source, &replica, table, &chunk, &fence).await?;
        tracing::debug!(table = %table.display, rows, bytes, start = chunk.start, "chunk copied");
        // The last range of a table committed: every range is in, so the copy is.
        let last = context.remaining[chunk.table].fetch_sub(1, Ordering::AcqRel) == 1;
        if last && copies.is_none() {
            replica
                .batch_execute("BEGIN")
                .await
                .map_err(|e| query_error(Side::Replica, "recording a table's copy", e))?;
            copies = Some(fence.record(&replica, table).await?);
            replica
                .batch_execute("COMMIT")
                .await
                .map_err(|e| query_error(Side::Replica, "recording a table's copy", e))?;
        }
        if events
            .send(ChunkDone {
                table: chunk.table,
                rows,
                bytes,
                copies,
            })
            .is_err()
        {
            break; // copy_data has gone away.
        }
    }
    source
        .close()
        .await
        .map_err(|e| source_error("ending the snapshot transaction", e))
}

/// COPY data is passed on in blocks of this size: large enough that per-block costs
/// vanish, small enough to stay in the CPU caches.
const COPY_BLOCK: usize = 64 * 1024;

/// What every write of a copy worker to the replica checks and records.
struct Fence<'a> {
    database: &'a str,
    token: FencingToken,
    /// The position of the job's snapshot.
    copied_at: Lsn,
}

impl Fence<'_> {
    /// In the open transaction: the replica is still ours (see `sink::sync`).
    async fn check(&self, replica: &PgClient) -> Result<(), SnapshotError> {
        Ok(sync::check_fence(replica, self.database, self.token).await?)
    }

    /// In the open transaction: `table` is copied at the job's position; returns its
    /// complete copies so far.
    async fn record(&self, replica: &PgClient, table: &TablePlan) -> Result<u32, SnapshotError> {
        self.check(replica).await?;
        let row = replica
            .query_one(
                sync::RECORD_COPIED_SQL,
                &[&table.schema, &table.name, &self.copied_at.to_string()],
            )
            .await
            .map_err(|e| query_error(Side::Replica, "recording a table's copy", e))?;
        Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
    }
}

/// One chunk: `COPY … TO STDOUT` on the snapshot piped into `COPY … FROM STDIN` on the
/// replica in blocks of [`COPY_BLOCK`] bytes, committed on its own after the fence is
/// checked; a whole table records its copy in the same transaction. Returns the rows the
/// replica took, the bytes of COPY data, and the table's copies when it recorded one.
async fn copy_chunk(
    source: &mut SnapshotSession,
    replica: &PgClient,
    table: &TablePlan,
    chunk: &Chunk,
    fence: &Fence<'_>,
) -> Result<(u64, u64, Option<u32>), SnapshotError> {
    let read_error = |e| source_error(&format!("reading {}", table.display), e);
    let write_error =
        |e: tokio_postgres::Error| match e.code().and_then(|c| ValueRemedy::of(c.code())) {
            Some(remedy) => SnapshotError::Value {
                table: table.display.clone(),
                remedy,
                source: e,
            },
            None => query_error(Side::Replica, &format!("writing {}", table.display), e),
        };
    let mut out = source
        .copy_out(&table.copy_out(chunk))
        .await
        .map_err(read_error)?;
    replica.batch_execute("BEGIN").await.map_err(write_error)?;
    fence.check(replica).await?;
    let frozen = chunk.is_whole()
        && sync::try_truncate(replica, &table.qualified)
            .await
            .map_err(write_error)?;
    let sink = replica
        .copy_in::<_, Bytes>(&table.copy_in(frozen))
        .await
        .map_err(write_error)?;
    let mut sink = pin!(sink);
    let mut bytes = 0u64;
    let mut block = BytesMut::with_capacity(COPY_BLOCK);
    while out.read(&mut block, COPY_BLOCK).await.map_err(read_error)? {
        bytes += block.len() as u64;
        sink.feed(block.split().freeze())
            .await
            .map_err(write_error)?;
        block.reserve(COPY_BLOCK);
    }
    let rows = sink.as_mut().finish().await.map_err(write_error)?;
    let copies = if chunk.is_whole() {
        Some(fence.record(replica, table).await?)
    } else {
        None
    };
    replica.batch_execute("COMMIT").await.map_err(write_error)?;
    Ok((rows, bytes, copies))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::catalog::ReplicaIdentity;

    fn table(name: &str, bytes: u64, pages: u64) -> SourceTable {
        SourceTable {
            name: TableName {
                schema: "s".into(),
                name: name.into(),
            },
            identity: ReplicaIdentity::PrimaryKey,
            columns: vec!["id".into()],
            estimated_bytes: bytes,
            pages,
            binary_copy: true,
        }
    }

    #[test]
    fn large_tables_split_into_page_ranges_largest_first() {
        let tables = [table("small", 100, 1), table("big", 10 * 8192, 10)];
        let chunks = plan_chunks(&tables, 3 * 8192, true);
        let ranges: Vec<(usize, u64, Option<u64>)> =
            chunks.iter().map(|c| (c.table, c.start, c.end)).collect();
        // 10 pages in 4 parts of 3 pages, the last open-ended.
        assert_eq!(
            ranges,
            [
                (1, 0, Some(3)),
                (1, 3, Some(6)),
                (1, 6, Some(9)),
                (1, 9, None),
                (0, 0, None)
            ]
        );
        assert_eq!(chunks[0].filter(), " WHERE ctid < '(3,0)'");

        // Table by table, the largest first: one table's ranges are never interleaved
        // with another's, so tables complete one after the other.
        let three = [
            table("a", 6 * 8192, 6),
            table("b", 9 * 8192, 9),
            table("c", 100, 1),
        ];
        let order: Vec<(usize, u64)> = plan_chunks(&three, 3 * 8192, true)
            .iter()
            .map(|c| (c.table, c.start))
            .collect();
        assert_eq!(order, [(1, 0), (1, 3), (1, 6), (0, 0), (0, 3), (2, 0)]);
        assert_eq!(
            chunks[1].filter(),
            " WHERE ctid >= '(3,0)' AND ctid < '(6,0)'"
        );
        assert_eq!(chunks[3].filter(), " WHERE ctid >= '(9,0)'");
        assert_eq!(chunks[4].filter(), "");

        // A whole table is read by name and loaded frozen; a range needs a query.
        let small = TablePlan::new(&tables[0]);
        assert_eq!(
            small.copy_out(&chunks[4]),
            r#"COPY "s"."small" ("id") TO STDOUT (FORMAT binary)"#
        );
        assert_eq!(
            small.copy_in(chunks[4].is_whole()),
            r#"COPY "s"."small" ("id") FROM STDIN (FORMAT binary, FREEZE)"#
        );
        let big = TablePlan::new(&tables[1]);
        assert_eq!(
            big.copy_out(&chunks[1]),
            r#"COPY (SELECT "id" FROM ONLY "s"."big" WHERE ctid >= '(3,0)' AND ctid < '(6,0)') TO STDOUT (FORMAT binary)"#
        );
        assert_eq!(
            big.copy_in(chunks[1].is_whole()),
            r#"COPY "s"."big" ("id") FROM STDIN (FORMAT binary)"#
        );
    }

    #[test]
    fn no_split_without_tid_range_scans_or_chunk_size() {
        let tables = [table("big", 10 * 8192, 10)];
        assert_eq!(plan_chunks(&tables, 8192, false).len(), 1);
        assert_eq!(plan_chunks(&tables, 0, true).len(), 1);
        assert_eq!(plan_chunks(&[], 8192, true), []);
    }
}
