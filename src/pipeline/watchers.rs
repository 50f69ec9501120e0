//! What runs beside the stream, each ending only with an error: the source's tables
//! watched where schema changes are not captured, branch requests handed to the applier,
//! tables marked `streaming` as the stream reaches their copies, and each table's own
//! trouble recorded; and once the stream ended with one table's error, that table held
//! out.

use std::convert::Infallible;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::PipelineContext;
use crate::bookkeeping::TableSyncState;
use crate::pg::{self, ConnInfo};
use crate::pipeline::drift::catalog_session;
use crate::pipeline::error::retry_setup;
use crate::pipeline::stream::{CutAt, CutRequest, StreamEnd, TableEvent, TableFilter, HOLD_LIMIT};
use crate::pipeline::PipelineError;
use crate::sink::{self, SinkError};
use crate::source::catalog;
use crate::types::{BranchName, Lsn};

/// Records each table's own trouble as the stream reports it (`stream::TableEvent`);
/// ends only with an error.
pub(super) async fn record_table_troubles(
    ctx: &PipelineContext,
    mut events: mpsc::UnboundedReceiver<TableEvent>,
) -> Result<Infallible, PipelineError> {
    let id = ctx.connector.id;
    let bk = &ctx.bookkeeping;
    while let Some(event) = events.recv().await {
        match event {
            TableEvent::NoIdentity { table, problem } => {
                let next_step = format!(
                    "give {table} a primary key (ALTER TABLE … ADD PRIMARY KEY) or ALTER TABLE \
                     … REPLICA IDENTITY FULL on the source before its rows are updated or \
                     deleted; nothing else is needed then"
                );
                let problem = Some((problem.as_str(), next_step.as_str()));
                bk.set_table_state(
                    id,
                    ctx.lease,
                    &table,
                    TableSyncState::NeedsDecision,
                    problem,
                )
                .await?;
            }
            TableEvent::IdentityBack(table) => {
                bk.set_table_state(id, ctx.lease, &table, TableSyncState::Streaming, None)
                    .await?;
            }
            TableEvent::Stopped {
                table,
                problem,
                next_step,
            } => {
                let problem = Some((problem.as_str(), next_step.as_str()));
                bk.set_table_state(id, ctx.lease, &table, TableSyncState::Failed, problem)
                    .await?;
            }
        }
    }
    // The stream is over; so is this.
    std::future::pending().await
}

/// The stream ended with `error`: when it is a definite error of one replicated table's
/// (`SinkError::table_at_fault`), that table is recorded `failed`, with the error and the
/// next step, and the run ends so that the next one streams without it (the target
/// transaction that failed was rolled back, so the others lose nothing). Otherwise, or
/// when the name is not one table's for sure, the error stops the pipeline as before.
pub(super) async fn hold_out_failed_table(
    ctx: &PipelineContext,
    error: SinkError,
) -> Result<StreamEnd, PipelineError> {
    let Some(at_fault) = error.table_at_fault() else {
        return Err(error.into());
    };
    let id = ctx.connector.id;
    let tables = ctx.bookkeeping.tables(id).await?;
    let mut named = tables.iter().filter(|t| {
        t.table.to_string() == at_fault
            && t.decision == "include"
            && t.state != TableSyncState::Failed
    });
    let (Some(table), None) = (named.next(), named.next()) else {
        return Err(error.into());
    };
    let table = table.table.clone();
    let name = &ctx.connector.name;
    let next_step = format!(
        "{}; then copy the table again: `tributary connector resync {name} --table {table}` \
         (the other tables stream on meanwhile)",
        error.table_fix().replace("<name>", name.as_str())
    );
    let problem = error.to_string();
    tracing::error!(%table, %next_step, "holding the table out of the stream: {problem}");
    ctx.bookkeeping
        .set_table_state(
            id,
            ctx.lease,
            &table,
            TableSyncState::Failed,
            Some((problem.as_str(), next_step.as_str())),
        )
        .await?;
    Ok(StreamEnd::HeldOut(table))
}

/// Marks tables `streaming` in the bookkeeping as the replica's applied position passes
/// their copy positions, until it reaches `in_sync_at`; then waits forever. Ends only
/// with an error.
pub(super) async fn tables_joining(
    ctx: &PipelineContext,
    replica: &ConnInfo,
    in_sync_at: Lsn,
) -> Result<Infallible, PipelineError> {
    let id = ctx.connector.id;
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    loop {
        poll.tick().await;
        // Briefly connected: a branch cut needs the replica without sessions.
        let applied = sink::replica_applied_lsn(ctx.settings.store(), &replica.dbname).await?;
        let Some(applied) = applied else { continue };
        ctx.bookkeeping.tables_streaming(id, applied).await?;
        if applied >= in_sync_at {
            tracing::info!(%applied, "every table is streaming");
            return std::future::pending().await;
        }
    }
}

/// Without schema change capture, two changes on the source would go unnoticed, because
/// the changes that follow them still fit the replica's tables: a table dropped and
/// re-created under the same name (the replica keeps the old table's rows), and a column's
/// new type (a wider numeric scale would be rounded to the old one). A table made
/// UNLOGGED sends no changes at all. So every poll interval the source's table OIDs are
/// compared with those the replica recorded, and the column types of both, and replicated
/// tables are looked for among the unlogged ones; ends with an error, naming the fix, when
/// one differs. (The replica is connected to only briefly: a branch cut needs it without
/// sessions.)
pub(super) async fn watch_source_tables(
    ctx: &PipelineContext,
    source: &ConnInfo,
    filter: &TableFilter,
) -> Result<(), PipelineError> {
    let schemas = &filter.schemas;
    let connector = &ctx.connector;
    let replica = ctx
        .settings
        .store()
        .with_dbname(&connector.replica_database);
    let mut poll = tokio::time::interval(Duration::from_secs(
        ctx.settings.supervisor.poll_interval_secs.max(1),
    ));
    loop {
        poll.tick().await;
        let recorded = sink::source_tables(&replica).await?;
        if recorded.is_empty() {
            continue;
        }
        let client = catalog_session(source).await?;
        let now = catalog::table_oids(&client, schemas).await?;
        let source_types = catalog::column_types(&client, schemas).await?;
        let unlogged = catalog::unlogged_tables(&client, schemas).await?;
        if let Some(table) = unlogged.iter().find(|t| {
            !filter.unlogged.contains(t)
                && recorded.iter().any(|(r, _)| r == *t)
                && filter.applies(t)
        }) {
            return Err(PipelineError::definite(
                format!(
                    "table {table} was made UNLOGGED on the source, and schema changes are not \
                     captured: PostgreSQL writes none of its changes to the WAL any more, so \
                     the replica misses those made since"
                ),
                format!(
                    "ALTER TABLE … SET LOGGED on the source (or leave it unlogged: a new \
                     snapshot keeps unlogged tables as definitions without rows); then {}",
                    retry_setup(connector)
                ),
            ));
        }
        let replica_client = catalog_session(&replica).await?;
        let replica_types = catalog::column_types(&replica_client, schemas).await?;
        drop(replica_client);
        for (table, column, wanted) in &source_types {
            let differs = replica_types
                .iter()
                .find(|(t, c, _)| t == table && c == column)
                .filter(|(_, _, has)| has != wanted);
            if let Some((_, _, has)) = differs {
                let column = pg::quote_ident(column);
                let target = table.to_string();
                return Err(PipelineError::definite(
                    format!(
                        "column {column} of {target} is {wanted} on the source and {has} in the \
                         replica, and schema changes are not captured: values applied since the \
                         change may have been cast to the old type"
                    ),
                    format!(
                        "{}; capturing schema changes (`tributary connector source-sql`) \
                         replays such changes in place",
                        retry_setup(connector)
                    ),
                ));
            }
        }
        for (table, oid) in &recorded {
            if let Some((_, new)) = now.iter().find(|(t, o)| t == table && o != oid) {
                return Err(PipelineError::definite(
                    format!(
                        "table {table} was dropped and re-created on the source (OID {oid}, now \
                         {new}), and schema changes are not captured: the replica still holds \
                         the old table's rows"
                    ),
                    retry_setup(connector),
                ));
            }
        }
    }
}

/// How often a held cut's record is looked at for its position.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// The position a held cut's requester names; `None` when it withdrew (the record is
/// gone), died (see [`requester_gone`]) or took longer than [`HOLD_LIMIT`].
async fn hold_target(
    ctx: &PipelineContext,
    branch: &BranchName,
) -> Result<Option<Lsn>, PipelineError> {
    let bk = &ctx.bookkeeping;
    let named = async {
        loop {
            let Some(hold) = bk.branch_hold(branch).await? else {
                return Ok(None);
            };
            if hold.cut_at.is_some() {
                return Ok(hold.cut_at);
            }
            tokio::time::sleep(HOLD_POLL).await;
        }
    };
    tokio::select! {
        named = named => named,
        gone = requester_gone(ctx, branch) => {
            gone?;
            tracing::warn!(%branch, "the held cut's requester is gone: streaming on");
            Ok(None)
        }
        () = tokio::time::sleep(HOLD_LIMIT) => {
            tracing::warn!(%branch, "no position named for the held cut in {HOLD_LIMIT:?}: streaming on");
            Ok(None)
        }
    }
}

/// Returns once the requester of a held cut is gone: its making lock is free (looked at
/// every second).
async fn requester_gone(ctx: &PipelineContext, branch: &BranchName) -> Result<(), PipelineError> {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if ctx
            .bookkeeping
            .try_lock_branch_making(branch)
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
}

/// Hands the connector's requested branches to the applier, one at a time, and records
/// each outcome. A cut holds the branch's lock; one left `cutting` by a run that ended is
/// cleaned up and done again. Returns when the applier no longer takes requests.
pub(super) async fn cut_branches(
    ctx: &PipelineContext,
    cuts: mpsc::Sender<CutRequest>,
    mut pokes: mpsc::Receiver<()>,
) -> Result<(), PipelineError> {
    let bk = &ctx.bookkeeping;
    let store = ctx.settings.store();
    let mut poll = tokio::time::interval(Duration::from_secs(
        ctx.settings.supervisor.poll_interval_secs.max(1),
    ));
    loop {
        tokio::select! {
            Some(()) = pokes.recv() => {}
            _ = poll.tick() => {}
        }
        for branch in bk.abandoned_cuts(ctx.connector.id).await? {
            let Some(_lock) = bk.try_lock_branch(&branch).await? else {
                continue; // being cut right now
            };
            tracing::info!(%branch, "cutting the branch again: its last cut was interrupted");
            sink::drop_database(store, branch.as_str(), true).await?;
            bk.requeue_branch(&branch).await?;
        }
        for branch in bk.requested_branches(ctx.connector.id).await? {
            let Some(_lock) = bk.try_lock_branch(&branch).await? else {
                continue;
            };
            if !bk.claim_branch(&branch).await? {
                continue; // withdrawn meanwhile
            }
            let held_out = bk.held_out_tables(ctx.connector.id).await?;
            if !held_out.is_empty() {
                let names: Vec<String> = held_out.iter().map(ToString::to_string).collect();
                let refused = format!(
                    "tables held out of the stream ({}): the replica is not the source at one \
                     instant; resync them (`tributary connector resync`)",
                    names.join(", ")
                );
                bk.branch_cut(&branch, Err(refused)).await?;
                continue;
            }
            sink::checkpoint_ahead(store).await;
            let (reply, mut answer) = oneshot::channel();
            let (at, hold) = match bk.branch_hold(&branch).await? {
                None => (CutAt::Next, None),
                Some(_) => {
                    let (held, held_at) = oneshot::channel();
                    let (release, target) = oneshot::channel();
                    (CutAt::Held { held, target }, Some((held_at, release)))
                }
            };
            let request = CutRequest {
                branch: branch.clone(),
                at,
                reply,
            };
            if cuts.send(request).await.is_err() {
                return Ok(());
            }
            let answered = match hold {
                None => answer.await,
                Some((held_at, release)) => {
                    tokio::select! {
                        // The applier answered without holding (it gave up or failed).
                        answered = &mut answer => answered,
                        // Gone before the applier took the request (it waits for a
                        // boundary, or for the tables to be in sync): dropping the
                        // channels makes the applier pass over it.
                        gone = requester_gone(ctx, &branch) => {
                            gone?;
                            Ok(Err("the requester gave up before the pipeline stood still".to_owned()))
                        }
                        held_at = held_at => {
                            if let Ok(held_at) = held_at {
                                bk.branch_held(&branch, held_at).await?;
                                match hold_target(ctx, &branch).await? {
                                    Some(at) => {
                                        let _ = release.send(at);
                                    }
                                    // Dropped: the applier gives the cut up and streams on.
                                    None => drop(release),
                                }
                            }
                            answer.await
                        }
                    }
                }
            };
            let Ok(outcome) = answered else {
                return Ok(());
            };
            let copied = outcome.is_ok();
            let recorded = bk
                .branch_cut(&branch, outcome.map(|cut| (cut.lsn, cut.paused)))
                .await?;
            if copied && !recorded {
                tracing::info!(%branch, "the branch was deleted while it was cut: dropping the copy");
                sink::drop_database(store, branch.as_str(), true).await?;
            }
        }
    }
}
