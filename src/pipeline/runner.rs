//! One run of a connector's pipeline, from setup to shutdown or error.
//!
//! ```text
//!  validating: connect source + branch store, identify the source, look at the slot
//!      │
//!      ├─ `connector retry-setup` asked for a new snapshot ──► snapshotting (slot dropped)
//!      ├─ replica has an applied LSN and the slot is healthy ──► streaming from it
//!      ├─ replica has an applied LSN, slot missing or lost ───► failed: re-snapshot needed
//!      ├─ no applied LSN, an interrupted snapshot under the slot ──► snapshotting: the
//!      │     tables not copied yet (`sync.rs`)
//!      └─ no applied LSN (never snapshotted, or the slot is gone)
//!             ▼
//!  snapshotting: drop our slot (never another installation's: `slot.rs`) and replica if
//!      left over, new slot with exported snapshot, pre-data schema, tables copied in
//!      groups under short snapshots (`sync.rs`), post-data schema, record the consistent
//!      point
//!             ▼
//!  streaming (pipeline/stream/) until shutdown or error; each table's changes from its
//!  copy's position on
//! ```
//!
//! The applied LSN in the replica is the fact that decides between resuming and starting
//! over; it is written once the snapshot is complete and then only moves forward with the
//! data it covers. The decision itself, with the slot and the history, is `plan.rs`'s,
//! which `connector retry-setup` asks too.

use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::capture::prepare as prepare_capture;
use super::error::retry_setup;
use super::plan::{self, AskedBy, Blocker, SlotFound, Start};
use super::watchers::{
    cut_branches, hold_out_failed_table, record_table_troubles, tables_joining, watch_source_tables,
};
use super::{additions, sync};
use crate::bookkeeping::{Bookkeeping, Connector, TableSyncState, UNLOGGED_TABLE};
use crate::change::{NanPolicy, TableName};
use crate::metrics::METRICS;
use crate::pg::{self, ConnInfo, PgClient};
use crate::pipeline::ddl::DdlTracker;
use crate::pipeline::drift::Reconciler;
use crate::pipeline::notices::Explainer;
use crate::pipeline::plugins::{self, Refused};
use crate::pipeline::slot::{self, Found, Leftover};
use crate::pipeline::snapshot::Tools;
use crate::pipeline::stream::{self, StreamEnd, TableFilter, Target};
use crate::pipeline::timeline;
use crate::pipeline::{PipelineContext, PipelineError, PipelineState};
use crate::sink::sync::TableCopy;
use crate::sink::{self, ReplicaSink};
use crate::source::capture::{self, CaptureKey};
use crate::source::slot::Ownership;
use crate::source::wal2json::PluginOptions;
use crate::source::{catalog, replication, ReplicationClient, ReplicationStream};
use crate::types::{Lsn, SlotName};

/// Runs the connector until `shutdown` (Ok) or an error. State changes are recorded in the
/// bookkeeping as they happen; the caller records the error. A message on `branch_pokes`
/// says that branches were requested (they are also looked for on the poll interval).
pub async fn run(
    ctx: &PipelineContext,
    shutdown: &CancellationToken,
    branch_pokes: mpsc::Receiver<()>,
) -> Result<StreamEnd, PipelineError> {
    // Setup and snapshot stop at once on shutdown: dropping them kills pg_dump and the copy
    // workers; the next start goes on with the tables whose copy did not complete.
    let Started {
        stream,
        applied,
        capture_key,
        source,
    } = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Ok(StreamEnd::Interrupted),
        started = start(ctx) => match started? {
            Some(started) => started,
            None => return Ok(StreamEnd::Interrupted),
        },
    };
    let connector = &ctx.connector;
    // The tables as the snapshot recorded them: streaming follows the snapshot (a table
    // whose identity was fixed since is not in the replica).
    let tables = ctx.bookkeeping.tables(connector.id).await?;
    let names = |decision: fn(&str) -> bool| {
        tables
            .iter()
            .filter(move |t| decision(&t.decision))
            .map(|t| t.table.clone())
    };
    let capturing = capture_key.is_some();
    // With schema changes captured, a table created later arrives with its CREATE TABLE
    // before its first row: new tables are always included then.
    // Without new tables, the snapshot's tables and the materialized views, whose row
    // changes say the source refreshed them.
    let only = if !connector.include_new_tables && !capturing {
        // The replica's: a view created on the source since the snapshot is not there.
        let store = ctx.settings.store();
        let replica_sql = pg::connect(&store.with_dbname(&connector.replica_database)).await?;
        let views = catalog::materialized_views(&replica_sql, &connector.schemas, false).await?;
        Some(names(|d| d == "include").chain(views).collect())
    } else {
        None
    };
    let store = ctx.settings.store();
    let replica = store.with_dbname(&connector.replica_database);
    let copies = sink::sync::table_copies(&replica).await?;
    let ahead = |at: fn(&TableCopy) -> Option<Lsn>| -> HashMap<TableName, Lsn> {
        copies
            .iter()
            .filter_map(|t| Some((t.table.clone(), at(t)?)))
            .filter(|(_, at)| *at > applied)
            .collect()
    };
    let copied_at = ahead(|t| t.copied_at);
    let defined_at = ahead(|t| t.defined_at);
    // Held out of the stream since a change of them was lost, until copied again.
    let failed = tables
        .iter()
        .filter(|t| t.state == TableSyncState::Failed)
        .map(|t| t.table.clone());
    // Left out by a decision: not in the replica at all, so neither are their schema
    // changes. A held-out table is in the replica: its schema changes are replayed, so
    // that copying it again copies it into the source's definition.
    let decided_out: HashSet<TableName> =
        names(|d| d != "include" && d != UNLOGGED_TABLE).collect();
    let filter = TableFilter {
        schemas: connector.schemas.clone(),
        excluded: decided_out.iter().cloned().chain(failed).collect(),
        only,
        unlogged: names(|d| d == UNLOGGED_TABLE).collect(),
        copied_at,
    };
    let ddl = DdlTracker::new(
        capture_key,
        filter.schemas.clone(),
        decided_out,
        defined_at,
        retry_setup(connector),
    );
    let nan = NanPolicy::new(stream.numeric_as_string(), connector.nan_as_null);
    let sink = ReplicaSink::connect(store, &connector.replica_database, ctx.lease)
        .await?
        .with_nan_policy(nan);
    let (cuts, cut_requests) = mpsc::channel(1);
    let (table_events, table_troubles) = mpsc::unbounded_channel();
    let target = Target {
        sink,
        store,
        cuts: cut_requests,
        metrics: METRICS.connector(connector.name.as_str()),
        reconciler: Reconciler::new(source.clone(), retry_setup(connector)),
        notices: Explainer::new(
            source.clone(),
            retry_setup(connector),
            connector.name.clone(),
        ),
        table_events,
    };
    let streaming = stream::run(
        stream,
        target,
        applied,
        &filter,
        ddl,
        &ctx.settings.pipeline,
        shutdown,
    );
    let watching = async {
        if capturing {
            // Captured DDL keeps the replica's tables the source's.
            std::future::pending::<()>().await;
        }
        watch_source_tables(ctx, &source, &filter).await
    };
    tokio::select! {
        end = streaming => match end {
            // A definite error of one table's: that table is held out, the others go on.
            Err(PipelineError::Sink(error)) => hold_out_failed_table(ctx, error).await,
            end => end,
        },
        // Ends only with an error, or when the applier is gone (then so is the stream).
        Err(e) = cut_branches(ctx, cuts, branch_pokes) => Err(e),
        Err(e) = watching => Err(e),
        Err(e) = tables_joining(ctx, &replica, filter.in_sync_at(applied)) => Err(e),
        Err(e) = record_table_troubles(ctx, table_troubles) => Err(e),
    }
}

/// A pipeline ready to stream.
struct Started {
    stream: ReplicationStream,
    /// The replica's applied LSN, where streaming starts.
    applied: Lsn,
    /// The key of the source's capture messages, when schema changes are captured.
    capture_key: Option<CaptureKey>,
    source: ConnInfo,
}

/// Everything up to a running replication stream; `None` when the connector changed since
/// the supervisor read it (it starts a new run).
async fn start(ctx: &PipelineContext) -> Result<Option<Started>, PipelineError> {
    let connector = &ctx.connector;
    let bk = &ctx.bookkeeping;
    if !bk.begin_run(connector).await? {
        tracing::debug!("the connector changed before its pipeline started: not starting");
        return Ok(None);
    }
    METRICS.set_state(connector.id, PipelineState::Validating);

    // Read once per run: the stream, the catalog watch and the explainers share it.
    let source = bk.source(connector).await?;
    let store = ctx.settings.store();
    let replica = store.with_dbname(&connector.replica_database);

    let mut repl = ReplicationClient::connect(&source).await?;
    // Every session of this run on the server found: a snapshot exported there is
    // unknown elsewhere. The next run looks through the whole list again (a failover).
    let source = source.pinned(repl.endpoint());
    let system = repl.identify_system().await?;
    if let Some(known) = &connector.system_id {
        if *known != system.system_id {
            return Err(PipelineError::definite(
                format!(
                    "the source is a different PostgreSQL cluster (system identifier {} instead of {known})",
                    system.system_id
                ),
                "point the connector back at its source, or create a new connector for this one",
            ));
        }
    }
    let source_db = system
        .dbname
        .clone()
        .unwrap_or_else(|| source.dbname.clone());
    let wal_sender_timeout = repl.wal_sender_timeout().await?;
    let status_interval =
        replication::status_interval(ctx.settings.pipeline.status_interval(), wal_sender_timeout);

    // The replica first: from here on a previous owner can neither commit nor move it.
    let applied = sink::claim_replica(store, &replica.dbname, ctx.lease).await?;
    // Recorded only once accepted: a new timeline is followed, never silently.
    let followed = timeline::check(&mut repl, connector, system.timeline, applied).await?;
    // The change first: once the new timeline is recorded, the next run sees nothing new.
    if let Some((from, fork)) = followed {
        let server = repl.endpoint().target();
        bk.record_timeline_change(connector.id, (from, system.timeline), fork, &server)
            .await?;
    }
    bk.record_source(connector.id, &system.system_id, system.timeline, &source_db)
        .await?;
    let source_sql = pg::connect(&source).await?;
    let capture_key = prepare_capture(&source_sql, connector).await?;
    let found = slot::inspect(&source_sql, bk.installation(), connector, applied).await?;
    drop(source_sql);

    let (applied, slot) = resume_or_start_over(
        ctx,
        applied,
        found.as_ref(),
        (&source, store, &replica),
        &mut repl,
        system.timeline,
    )
    .await?;

    // wal2json 2.6 keeps NaN and Infinity apart from NULL; older versions refuse the
    // option at START_REPLICATION, which a persistent slot survives.
    let plugin = |numeric_as_string| {
        capture::with_messages(PluginOptions {
            numeric_as_string,
            ..PluginOptions::default()
        })
    };
    let slot = &slot;
    let stream = match repl
        .start_replication(slot, applied, plugin(true), status_interval)
        .await
    {
        Err(e) if replication::rejects_numeric_as_string(&e) => {
            tracing::warn!(
                nan_as_null_accepted = connector.nan_as_null,
                "the source's wal2json predates 2.6: NaN and Infinity in numeric and float \
                 columns would arrive as NULL; tables with such columns are refused unless \
                 the connector accepts it (`connector update --nan-as-null accept`)"
            );
            ReplicationClient::connect(&source)
                .await?
                .start_replication(slot, applied, plugin(false), status_interval)
                .await?
        }
        Err(e) => {
            let refused = Refused::Streaming;
            return Err(plugins::explain(e, refused, &source, &connector.name, slot).await);
        }
        Ok(stream) => stream,
    };
    // A silent source is given up after `wal_sender_timeout`, as the source gives up on us.
    // Each failure in a row lengthens it: a huge transaction of tables outside the
    // connector keeps the walsender silent while it is decoded (wal2json sends nothing for
    // it), and must not be restarted forever.
    let mut stream = stream;
    let silence = if wal_sender_timeout.is_zero() {
        replication::DEFAULT_SILENCE_LIMIT
    } else {
        wal_sender_timeout
    };
    stream.set_silence_limit(silence * (1 + ctx.failures.min(7)));
    let source_sql = pg::connect(&source).await?;
    check_not_skipped(&source_sql, connector, slot, applied).await?;
    // The slot's series are there as soon as the state says streaming, not one sampling
    // interval later.
    let info = crate::source::slot::inspect(&source_sql, slot).await;
    METRICS.set_slot(connector.id, info.map_err(drop));
    enter(ctx, PipelineState::Streaming).await?;
    tracing::info!(from = %applied, capturing = capture_key.is_some(), "streaming");
    Ok(Some(Started {
        stream,
        applied,
        capture_key,
        source,
    }))
}

/// Where streaming starts, as `pipeline::plan` decides from what the source and the
/// replica say: the replica's applied position with the connector's slot, or a new
/// snapshot's consistent point with its new slot; an error when only the operator may
/// decide (`Start::Blocked`). `timeline` is the source's current one.
async fn resume_or_start_over(
    ctx: &PipelineContext,
    applied: Option<Lsn>,
    found: Option<&Found>,
    (source, store, replica): (&ConnInfo, &ConnInfo, &ConnInfo),
    repl: &mut ReplicationClient,
    timeline: u32,
) -> Result<(Lsn, SlotName), PipelineError> {
    let connector = &ctx.connector;
    let bk = &ctx.bookkeeping;
    let streamed = applied.is_none() && streamed_since_snapshot(bk, connector).await?;
    let interrupted = match applied {
        Some(_) => None,
        None => {
            let database = &replica.dbname;
            sink::sync::interrupted_snapshot(store, database, &connector.slot_name).await?
        }
    };
    let facts = plan::Facts {
        asked_by: AskedBy::Daemon,
        slot_name: &connector.slot_name,
        replica: &connector.replica_database,
        slot: slot_found(found),
        applied,
        streamed_since_snapshot: streamed,
        interrupted_snapshot: interrupted.is_some(),
        resnapshot: connector.resnapshot_requested,
        schemas_recorded: &connector.schemas,
        schemas_wanted: &connector.schemas,
        tables: None,
    };
    Ok(match plan::decide(&facts) {
        // (`Add` is the operator's: the daemon finds what to add itself.)
        Start::Resume { from } | Start::Add { from, .. } => {
            if let Some(found) = found {
                found.wait_for_holder(&connector.slot_name)?;
            }
            let adding = additions::find(ctx, source, replica).await?;
            let requested = sync::requested_copies(ctx).await?;
            if !adding.is_empty() || !requested.is_empty() {
                let tools = snapshot_tools(ctx, store, repl.server_major()).await?;
                enter(ctx, PipelineState::Snapshotting).await?;
                let run = sync::Copying {
                    ctx,
                    source,
                    store,
                    replica,
                    tools: &tools,
                };
                if !adding.is_empty() {
                    additions::add(&run, &adding).await?;
                }
                // What the operator asked to copy again, but for what was just added.
                let requested: Vec<TableName> = requested
                    .into_iter()
                    .filter(|t| !adding.tables.contains(t))
                    .collect();
                if !requested.is_empty() {
                    sync::recopy(&run, &requested, None).await?;
                }
            }
            (from, connector.slot_name.clone())
        }
        Start::Continue => {
            let record = interrupted.expect("decided from the record");
            if let Some(found) = found {
                found.wait_for_holder(&connector.slot_name)?;
            }
            let tools = snapshot_tools(ctx, store, repl.server_major()).await?;
            enter(ctx, PipelineState::Snapshotting).await?;
            let run = sync::Copying {
                ctx,
                source,
                store,
                replica,
                tools: &tools,
            };
            (sync::resume(&run, &record).await?, record.slot)
        }
        Start::Snapshot { .. } => {
            // A slot left over from an interrupted snapshot of this connector is never
            // reused.
            let why = if connector.resnapshot_requested {
                "for a new snapshot"
            } else {
                "of an interrupted snapshot"
            };
            start_over(ctx, found, why, (source, store, replica), repl).await?
        }
        Start::Blocked(blocker) => {
            let moved = connector
                .timeline
                .filter(|&recorded| recorded != timeline)
                .map(|recorded| (recorded, timeline));
            let source_seen = (repl.server_major(), moved);
            return Err(blocked(connector, store, source_seen, &blocker));
        }
    })
}

/// Records that the pipeline entered `state`: in the bookkeeping, then in the metrics.
async fn enter(ctx: &PipelineContext, state: PipelineState) -> Result<(), PipelineError> {
    let id = ctx.connector.id;
    ctx.bookkeeping
        .set_state(id, ctx.lease, state, None)
        .await?;
    METRICS.set_state(id, state);
    Ok(())
}

/// Whether the connector streamed since its last snapshot started: a connector whose last
/// snapshot completed must find its replica.
async fn streamed_since_snapshot(
    bk: &Bookkeeping,
    connector: &Connector,
) -> Result<bool, PipelineError> {
    let history = bk.history(connector.id).await?;
    let since_snapshot = history
        .iter()
        .rposition(|change| change.to == PipelineState::Snapshotting)
        .map_or(&history[..], |i| &history[i..]);
    Ok(since_snapshot
        .iter()
        .any(|change| change.to == PipelineState::Streaming))
}

/// The slot as the plan sees it: whose it is first, then whether it can stream.
fn slot_found(found: Option<&Found>) -> SlotFound {
    match found {
        None => SlotFound::Missing,
        Some(Found {
            ownership: Ownership::NotOurs(why),
            ..
        }) => SlotFound::NotOurs(why.clone()),
        Some(found) => match found.info.invalidation() {
            Some(how) => SlotFound::Invalidated(how),
            None => SlotFound::Valid,
        },
    }
}

/// The error that stops the pipeline where only the operator may decide on a new snapshot.
/// `(server_major, moved)`: the source's version and, when this run found it on a new
/// timeline, the recorded and the current one.
fn blocked(
    connector: &Connector,
    store: &ConnInfo,
    (server_major, moved): (u32, Option<(u32, u32)>),
    blocker: &Blocker,
) -> PipelineError {
    let slot = &connector.slot_name;
    match blocker {
        Blocker::SlotNotOurs(why) => slot::not_ours(connector, why),
        Blocker::SlotInvalidated { applied, how } => PipelineError::definite(
            format!(
                "replication slot {slot} was invalidated by the source ({how}): changes after \
                 {applied} cannot be streamed"
            ),
            format!("{}; {}", retry_setup(connector), how.cause.advice()),
        ),
        Blocker::SlotMissing { applied } => PipelineError::definite(
            format!(
                "replication slot {slot} is missing on the source; changes after {applied} \
                 cannot be streamed: {}",
                slot::missing_slot_cause(server_major, moved)
            ),
            retry_setup(connector),
        ),
        // The store is not the one it used (store.url changed?) or the replica was
        // dropped. Starting over would drop a slot that may still be needed.
        Blocker::ReplicaGone => PipelineError::definite(
            format!(
                "the replica database {} on {} is missing or has no applied position, but \
                 this connector has streamed into it before",
                connector.replica_database,
                store.target()
            ),
            format!(
                "check store.url; if the replica is really gone, {}",
                retry_setup(connector)
            ),
        ),
    }
}

/// After START_REPLICATION: the slot must not be ahead of where we asked to start, or the
/// server would silently skip the changes in between.
async fn check_not_skipped(
    source: &PgClient,
    connector: &Connector,
    slot: &SlotName,
    applied: Lsn,
) -> Result<(), PipelineError> {
    match slot::read_slot(source, slot)
        .await?
        .and_then(|info| info.confirmed_flush)
    {
        Some(confirmed) if confirmed > applied => Err(PipelineError::definite(
            format!(
                "replication slot {slot} has moved to {confirmed}, past the replica's applied position \
                 {applied}: the changes in between cannot be streamed any more"
            ),
            format!(
                "{}; make sure no other client uses this slot",
                retry_setup(connector)
            ),
        )),
        _ => Ok(()),
    }
}

/// The client programs a snapshot runs, once the branch store's apply session is known to
/// work.
async fn snapshot_tools(
    ctx: &PipelineContext,
    store: &ConnInfo,
    source_major: u32,
) -> Result<Tools, PipelineError> {
    let tools = Tools::choose(
        ctx.settings.pipeline.pg_bindir.as_deref(),
        source_major,
        sink::server_major(store).await?,
    )
    .await?;
    sink::check_apply_session(store).await?;
    Ok(tools)
}

/// Takes a new snapshot under a new slot, dropping the slot `found` under the connector's
/// name when it is ours (`why` says what it was left from), keeping it when it is not
/// and the new slot has another name (see `slot::leftover`); returns the consistent point
/// and the new slot. The lease is checked first: a daemon that lost it while setting up
/// must not drop what its successor already uses.
async fn start_over(
    ctx: &PipelineContext,
    found: Option<&Found>,
    why: &str,
    (source, store, replica): (&ConnInfo, &ConnInfo, &ConnInfo),
    repl: &mut ReplicationClient,
) -> Result<(Lsn, SlotName), PipelineError> {
    let connector = &ctx.connector;
    let bk = &ctx.bookkeeping;
    if !bk.holds_lease(connector.id, ctx.lease).await? {
        return Err(PipelineError::LeaseLost);
    }
    // Before anything is dropped or created: versions, client programs or a branch-store
    // role that cannot work need the operator, and no new slot should hold WAL meanwhile.
    let tools = snapshot_tools(ctx, store, repl.server_major()).await?;
    let current = &connector.slot_name;
    let new = slot::new_slot_name(bk.installation(), connector);
    match slot::leftover(current, &new, found) {
        Ok(Leftover::None) => {}
        Ok(Leftover::Drop) => {
            tracing::info!(slot = %current, "dropping the slot {why}");
            repl.drop_slot(current, false).await?;
        }
        Ok(Leftover::Keep(not_ours)) => tracing::warn!(
            slot = %current,
            new = %new,
            "keeping replication slot {current} on the source, which may not be this \
             installation's ({not_ours}): the new snapshot uses slot {new}; if no other \
             installation uses {current}, drop it on the source (SELECT \
             pg_drop_replication_slot('{current}');), since it retains WAL"
        ),
        Err(not_ours) => return Err(slot::not_ours(connector, &not_ours)),
    }
    enter(ctx, PipelineState::Snapshotting).await?;
    // Recorded before it exists: a crash right after creating it must find it ours.
    bk.prepare_slot(connector.id, ctx.lease, &new).await?;
    let run = sync::Copying {
        ctx,
        source,
        store,
        replica,
        tools: &tools,
    };
    let consistent_point = sync::take(&run, &new, repl).await?;
    Ok((consistent_point, new))
}
