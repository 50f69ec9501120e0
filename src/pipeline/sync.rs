//! The snapshot, table by table: each table is copied under a short-lived exported
//! snapshot and is exact at that snapshot's position; an interrupted snapshot resumes with
//! the tables it had not finished.
//!
//! ```text
//!  take:   new slot S (exported snapshot, consistent point C)
//!            ├─ pg_dump on S, pre-data restored; dump kept in the replica
//!            ├─ tributary.snapshot ← (S, C);  tributary.table_sync ← every table, uncopied
//!            └─ group 1: tables copied under S's snapshot, each recorded "copied at C"
//!  resume: (after any interruption: only tables without a copy are left)
//!  finish: while tables are left:
//!            empty them; temporary slot T (exported snapshot, consistent point L)
//!            group: tables copied under T, each recorded "copied at L"
//!            (no table is started once T's transaction is `snapshot_max_transaction` old)
//!          post-data restored from the kept dump; the replica's applied position := C
//!          streaming starts from C on S
//! ```
//!
//! **Exactly once, per table.** A slot's exported snapshot sees exactly the transactions
//! whose commit record lies before its consistent point, and the slot streams exactly the
//! others. All slots decode the same WAL, so a table copied at L holds every transaction
//! committed before L and none after: the stream, which starts at C ≤ L, applies a change
//! to that table only if its transaction's commit record is at or after L
//! (`stream::TableFilter::copied_at`). Until the stream passes the largest L the tables
//! are at different positions and the replica is not one instant of the source, so it is
//! not `streaming` and branches wait.
//!
//! The slot S does not advance before the stream starts, so the WAL from C on is kept for
//! the whole snapshot, as before; what the groups bound is the age of the source
//! transactions that hold back vacuum.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use super::tables;
use super::PipelineContext;
use crate::bookkeeping::TableSyncState;
use crate::change::TableName;
use crate::crash::{self, CrashPoint};
use crate::metrics::METRICS;
use crate::pg::{self, ConnInfo};
use crate::pipeline::plugins::{self, Refused};
use crate::pipeline::snapshot::{self, Progress, SchemaDump, Section, SnapshotJob, Tools};
use crate::pipeline::PipelineError;
use crate::sink::sync::{self as replica_sync, SnapshotRecord};
use crate::sink::{self, ReplicaSink};
use crate::source::catalog::SourceTable;
use crate::source::{catalog, prepared, CreatedSlot, ReplicationClient, SnapshotAction};
use crate::types::{Lsn, SlotName};

/// Where a snapshot reads and writes, and with what.
pub(super) struct Copying<'a> {
    pub ctx: &'a PipelineContext,
    pub source: &'a ConnInfo,
    pub store: &'a ConnInfo,
    /// The branch-store server with the replica database.
    pub replica: &'a ConnInfo,
    pub tools: &'a Tools,
}

impl Copying<'_> {
    pub(super) fn job<'a>(
        &'a self,
        snapshot_name: &'a str,
        tables: &'a [catalog::SourceTable],
        exclude: &'a [TableName],
        (copied_at, deadline): (Lsn, Option<Instant>),
    ) -> SnapshotJob<'a> {
        let settings = &self.ctx.settings.pipeline;
        SnapshotJob {
            source: self.source,
            replica: self.replica,
            snapshot_name,
            schemas: &self.ctx.connector.schemas,
            only: None,
            replicated: &[],
            tables,
            exclude,
            copied_at,
            token: self.ctx.lease,
            deadline,
            workers: settings.snapshot_workers,
            chunk_bytes: settings.snapshot_chunk_bytes,
            tools: self.tools,
        }
    }

    fn deadline(&self, opened: Instant) -> Option<Instant> {
        let limit = self.ctx.settings.pipeline.snapshot_max_transaction();
        limit.map(|limit| opened + limit)
    }
}

/// A new snapshot into a fresh replica under the new slot `slot`, created here on
/// `repl`; returns its consistent point, now the replica's applied position.
pub(super) async fn take(
    run: &Copying<'_>,
    slot: &SlotName,
    repl: &mut ReplicationClient,
) -> Result<Lsn, PipelineError> {
    let ctx = run.ctx;
    let (store, replica) = (run.store, run.replica);
    let started = Instant::now();
    // Claimed again just before it goes: a newer owner's replica is never dropped.
    sink::claim_replica(store, &replica.dbname, ctx.lease).await?;
    sink::drop_database(store, &replica.dbname, true).await?;
    sink::prepare_replica(store, &replica.dbname, ctx.lease).await?;

    let created = create_slot(run, repl, slot, false).await?;
    let opened = Instant::now();
    crash::reach(CrashPoint::AfterSlotBeforeFirstCommit);
    let snapshot_name = exported(&created)?;
    // From here until the first group is copied, `repl` must stay idle: its next command
    // ends the exported snapshot.
    let tables::SnapshotTables {
        tables, excluded, ..
    } = tables::snapshot_tables(
        (&ctx.bookkeeping, &ctx.connector, ctx.lease),
        run.source,
        snapshot_name,
    )
    .await?;
    let exclude: Vec<TableName> = excluded.iter().map(|(t, _)| t.clone()).collect();
    let at = created.consistent_point;
    tracing::info!(
        tables = tables.len(),
        excluded = exclude.len(),
        consistent_point = %at,
        "snapshot started"
    );
    let job = run.job(snapshot_name, &tables, &exclude, (at, run.deadline(opened)));
    let schema = SchemaDump::create(&job).await?;
    schema.restore(&job, Section::PreData).await?;
    let (dump, list) = schema.archive()?;
    let record = SnapshotRecord {
        slot: slot.clone(),
        consistent_point: at,
        schema_dump: Some(dump),
        schema_list: Some(list),
        post_data_restored: false,
    };
    let names: Vec<TableName> = tables.iter().map(|t| t.name.clone()).collect();
    replica_sync::begin_snapshot(replica, ctx.lease, &record, &names).await?;
    copy_group(run, &job).await?;
    // Ends the exported snapshot's transaction on the source.
    repl.identify_system().await?;
    let applied = finish(run, &record, Some(schema)).await?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "snapshot complete"
    );
    Ok(applied)
}

/// Goes on with the interrupted snapshot `record` of the replica: tables already copied
/// stay; the others are copied under new snapshots. Returns its consistent point, now the
/// replica's applied position.
pub(super) async fn resume(
    run: &Copying<'_>,
    record: &SnapshotRecord,
) -> Result<Lsn, PipelineError> {
    let ctx = run.ctx;
    let copies = replica_sync::table_copies(run.replica).await?;
    let copied: Vec<_> = copies.iter().filter(|t| t.copied_at.is_some()).collect();
    tracing::info!(
        slot = %record.slot,
        consistent_point = %record.consistent_point,
        copied = copied.len(),
        left = copies.len() - copied.len(),
        "resuming the interrupted snapshot: tables already copied stay copied"
    );
    // The replica is the record; the bookkeeping may have missed the last copies.
    for table in copied {
        let at = table.copied_at.unwrap_or(record.consistent_point);
        ctx.bookkeeping
            .table_copied(ctx.connector.id, ctx.lease, &table.table, at, table.copies)
            .await?;
    }
    finish(run, record, None).await
}

/// The tables the operator asked to copy again (`connector resync`): `pending` in the
/// bookkeeping once the snapshot is complete.
pub(super) async fn requested_copies(
    ctx: &PipelineContext,
) -> Result<Vec<TableName>, PipelineError> {
    Ok(ctx
        .bookkeeping
        .tables(ctx.connector.id)
        .await?
        .into_iter()
        .filter(|t| t.state == TableSyncState::Pending && t.decision == "include")
        .map(|t| t.table)
        .collect())
}

/// Copies `tables` again into the complete replica, under new snapshots, before streaming
/// goes on from the replica's applied position: the stream then takes each from its
/// copy's position (their earlier changes are in the copy), the others as before. Tables
/// just added come with the position their definitions were dumped at (`defined_at`).
pub(super) async fn recopy(
    run: &Copying<'_>,
    tables: &[TableName],
    defined_at: Option<Lsn>,
) -> Result<(), PipelineError> {
    let names: Vec<String> = tables.iter().map(ToString::to_string).collect();
    tracing::info!(tables = %names.join(", "), "copying tables");
    replica_sync::forget_copies(run.replica, run.ctx.lease, tables, defined_at).await?;
    while copy_left(run).await? {}
    Ok(())
}

/// Copies the tables left, restores post-data, and records the consistent point as the
/// replica's applied position.
async fn finish(
    run: &Copying<'_>,
    record: &SnapshotRecord,
    schema: Option<SchemaDump>,
) -> Result<Lsn, PipelineError> {
    let ctx = run.ctx;
    let connector = &ctx.connector;
    while copy_left(run).await? {}
    if !record.post_data_restored {
        let schema = match schema {
            Some(schema) => schema,
            None => match (&record.schema_dump, &record.schema_list) {
                (Some(dump), Some(list)) => SchemaDump::from_archive(dump, list)?,
                _ => {
                    return Err(PipelineError::definite(
                        "the interrupted snapshot's schema archive is missing from the replica",
                        super::error::retry_setup(connector),
                    ))
                }
            },
        };
        let job = run.job("", &[], &[], (record.consistent_point, None));
        schema.restore(&job, Section::PostData).await?;
        replica_sync::post_data_restored(run.replica, ctx.lease).await?;
    }
    let source_sql = pg::connect(run.source).await?;
    let views = catalog::materialized_views(&source_sql, &connector.schemas, true).await?;
    let oids = catalog::table_oids(&source_sql, &connector.schemas).await?;
    drop(source_sql);
    let mut sink = ReplicaSink::connect(run.store, &run.replica.dbname, ctx.lease).await?;
    sink.populate_materialized_views(&views).await?;
    sink.record_source_tables(&oids, &[]).await?;
    sink.mark_applied(record.consistent_point).await?;
    Ok(record.consistent_point)
}

/// One group of the tables not copied yet, under a new temporary slot's snapshot; `false`
/// when none was left.
async fn copy_left(run: &Copying<'_>) -> Result<bool, PipelineError> {
    let ctx = run.ctx;
    // A table held out (`failed`) waits for `connector resync`, which sets it pending.
    let held_out = ctx.bookkeeping.held_out_tables(ctx.connector.id).await?;
    let left: Vec<TableName> = replica_sync::table_copies(run.replica)
        .await?
        .into_iter()
        .filter(|t| t.copied_at.is_none() && !held_out.contains(&t.table))
        .map(|t| t.table)
        .collect();
    if left.is_empty() {
        return Ok(false);
    }
    // Rows of an interrupted copy (page ranges commit one by one) do not count.
    replica_sync::empty_tables(run.replica, ctx.lease, &left).await?;
    ctx.bookkeeping
        .tables_unfinished(ctx.connector.id, ctx.lease)
        .await?;
    let mut repl = ReplicationClient::connect(run.source).await?;
    let slot = group_slot_name();
    let created = create_slot(run, &mut repl, &slot, true).await?;
    let opened = Instant::now();
    let snapshot_name = exported(&created)?;
    let listed = tables::list_in_snapshot(run.source, snapshot_name, &ctx.connector.schemas)
        .await?
        .into_iter()
        .filter(|t| left.contains(&t.name))
        .collect::<Vec<_>>();
    let at = created.consistent_point;
    let listed = hold_out_redefined(run, listed).await?;
    let gone: Vec<&TableName> = left
        .iter()
        .filter(|t| !listed.iter().any(|l| &l.name == *t))
        .collect();
    if !gone.is_empty() {
        // Dropped on the source since the snapshot started: empty at L, which is exact.
        // Captured schema changes drop it from the replica too, in their place in the
        // stream; without them the replica keeps the empty table.
        let names: Vec<String> = gone.iter().map(ToString::to_string).collect();
        tracing::warn!(
            tables = %names.join(", "),
            "tables dropped on the source during the snapshot: recorded as copied empty"
        );
        replica_sync::record_empty(run.replica, ctx.lease, &gone, at).await?;
    }
    tracing::info!(
        tables = listed.len(),
        consistent_point = %at,
        "copying tables under a new snapshot"
    );
    let job = run.job(snapshot_name, &listed, &[], (at, run.deadline(opened)));
    copy_group(run, &job).await?;
    // Dropping the connection drops the temporary slot and ends its snapshot.
    drop(repl);
    Ok(true)
}

/// The tables of `listed` whose columns under the group's snapshot are the replica's;
/// the others are held out. The replica's definition of a table is as of the position its
/// schema was taken at (the snapshot's start, or the applied position for a resync); a
/// schema change since, before the group's position, would be replayed by the stream onto
/// rows copied after it (an added column backfilled with UPDATEs would keep its default),
/// so the table is held out instead, its schema changes replayed, and copying it again
/// once the replica has them (`connector resync`) is exact. (Compared: the stored columns'
/// names and order, so a column dropped and added again under its name shows too.)
async fn hold_out_redefined(
    run: &Copying<'_>,
    listed: Vec<SourceTable>,
) -> Result<Vec<SourceTable>, PipelineError> {
    let ctx = run.ctx;
    let names: Vec<TableName> = listed.iter().map(|t| t.name.clone()).collect();
    let replica_columns = replica_sync::stored_columns(run.replica, &names).await?;
    let mut same = Vec::with_capacity(listed.len());
    for table in listed {
        if replica_columns.get(&table.name) == Some(&table.columns) {
            same.push(table);
            continue;
        }
        let problem = format!(
            "{} changed on the source while it waited to be copied (its columns are now: {}; \
             the replica's: {}): its copy would not match the schema changes the stream \
             replays onto it",
            table.name,
            table.columns.join(", "),
            replica_columns
                .get(&table.name)
                .map_or_else(|| "none".to_owned(), |c| c.join(", "))
        );
        let next_step = format!(
            "nothing to fix: copy it again with `tributary connector resync {} --table {}` \
             once the connector streams (the replica has the schema change by then)",
            ctx.connector.name, table.name
        );
        tracing::warn!(table = %table.name, "holding the table out: {problem}");
        ctx.bookkeeping
            .set_table_state(
                ctx.connector.id,
                ctx.lease,
                &table.name,
                TableSyncState::Failed,
                Some((problem.as_str(), next_step.as_str())),
            )
            .await?;
    }
    Ok(same)
}

/// Copies the job's tables (as many as its deadline allows), recording progress in the
/// bookkeeping and the metrics beside the copy, never from inside it.
async fn copy_group(run: &Copying<'_>, job: &SnapshotJob<'_>) -> Result<(), PipelineError> {
    let ctx = run.ctx;
    let connector = &ctx.connector;
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    // The channel closes when the copy (which owns the sender) is done.
    let copy = async {
        let report = move |p: Progress<'_>| {
            let _ = progress_tx.send((p.table.clone(), p.rows, p.bytes, p.copies));
        };
        snapshot::copy_data(job, &report).await
    };
    let metrics = METRICS.connector(connector.name.as_str());
    metrics
        .snapshot_tables_remaining
        .set(job.tables.len() as i64);
    let record = async {
        let mut remaining = job.tables.len();
        while let Some((table, rows, bytes, copies)) = progress_rx.recv().await {
            metrics.snapshot_rows.inc_by(rows);
            let bk = &ctx.bookkeeping;
            let recorded = match copies {
                Some(copies) => {
                    remaining = remaining.saturating_sub(1);
                    metrics.snapshot_tables_remaining.set(remaining as i64);
                    tracing::info!(table = %table, remaining, at = %job.copied_at, "table copied");
                    crash::reach(CrashPoint::AfterCopyBeforeProgress);
                    match bk
                        .table_progress(
                            connector.id,
                            ctx.lease,
                            &table,
                            rows,
                            bytes,
                            TableSyncState::Copied,
                        )
                        .await
                    {
                        Ok(()) => {
                            bk.table_copied(connector.id, ctx.lease, &table, job.copied_at, copies)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                }
                None => {
                    bk.table_progress(
                        connector.id,
                        ctx.lease,
                        &table,
                        rows,
                        bytes,
                        TableSyncState::Copying,
                    )
                    .await
                }
            };
            if let Err(e) = recorded {
                tracing::warn!("recording snapshot progress: {e}");
            }
        }
    };
    let (stats, ()) = tokio::join!(copy, record);
    let stats = stats?;
    tracing::info!(
        tables = stats.tables,
        rows = stats.rows,
        bytes = stats.bytes,
        copy_seconds = stats.elapsed.as_secs_f64(),
        at = %job.copied_at,
        "group copied"
    );
    Ok(())
}

/// Creates `slot` with an exported snapshot, saying in the log what it waits for while it
/// looks for its consistent point.
pub(super) async fn create_slot(
    run: &Copying<'_>,
    repl: &mut ReplicationClient,
    slot: &SlotName,
    temporary: bool,
) -> Result<CreatedSlot, PipelineError> {
    let explain = explain_slot_wait(run.source);
    tokio::pin!(explain);
    tokio::select! {
        created = repl.create_slot(slot, temporary, SnapshotAction::Export) => match created {
            Ok(created) => Ok(created),
            Err(e) => {
                let refused = Refused::CreatingSlot;
                let name = &run.ctx.connector.name;
                Err(plugins::explain(e, refused, run.source, name, slot).await)
            }
        },
        never = &mut explain => match never {},
    }
}

pub(super) fn exported(created: &CreatedSlot) -> Result<&str, PipelineError> {
    created.snapshot_name.as_deref().ok_or_else(|| {
        PipelineError::definite(
            "the source did not export a snapshot",
            "check the source's version (13 or newer)",
        )
    })
}

/// A temporary slot's name: unique, so that a previous owner's group still running (a
/// lease takeover) cannot collide with it; it disappears with its connection.
pub(super) fn group_slot_name() -> SlotName {
    SlotName::new(format!("tributary_group_{:016x}", rand::random::<u64>()))
        .expect("lower-case hex is a valid slot name")
}

/// When the log first says what a slot still being created waits for, and how often then.
const SLOT_WAIT_FIRST: Duration = Duration::from_secs(10);
const SLOT_WAIT_EVERY: Duration = Duration::from_secs(60);

/// Logs what a new slot waits for while it looks for its consistent point (prepared
/// transactions, which `pg_stat_activity` does not show, or long-running ones); `status`
/// says the same. Runs until dropped.
async fn explain_slot_wait(source: &ConnInfo) -> Infallible {
    tokio::time::sleep(SLOT_WAIT_FIRST).await;
    loop {
        match pg::connect(source).await {
            Ok(client) => match prepared::pending(&client).await {
                Ok(pending) => tracing::warn!(
                    "the new replication slot is still waiting for its consistent point: {}",
                    prepared::slot_wait_reason(&pending)
                ),
                Err(e) => tracing::debug!("reading pg_prepared_xacts: {}", pg::error_message(&e)),
            },
            Err(e) => tracing::debug!("connecting to look at the slot's wait: {e}"),
        }
        tokio::time::sleep(SLOT_WAIT_EVERY).await;
    }
}
