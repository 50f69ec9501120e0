//! `connector retry-setup` and `connector update --schemas`: what setting a connector up
//! again does (`pipeline::plan` decides resume or a new snapshot from what the source and
//! the replica say), and recording the request the daemon's pipeline carries out.

use crate::bookkeeping::{self, Bookkeeping, Connector, SetupChange, SetupRequest, TableDecision};
use crate::change::TableName;
use crate::control::health::{self, Health};
use crate::pg::{self, ConnInfo, ConnectError};
use crate::pipeline::plan::{self, AskedBy, Reason, SlotFound, Start, TableFacts};
use crate::pipeline::PipelineState;
use crate::sink::{self, SinkError};
use crate::source::{preflight, slot};

/// Why a setup could not be planned or requested.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(transparent)]
    Replica(#[from] SinkError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

/// What setting the connector up again does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupPlan {
    /// Why a new snapshot replaces the replica; empty when it is kept.
    pub reasons: Vec<Reason>,
    /// What the kept replica gets copied into it (schemas added, tables to replicate
    /// since the snapshot), the other tables streaming on.
    pub additions: Vec<Reason>,
    /// Tables excluded by decision although they have a usable replica identity (the
    /// operator may have meant to replicate them).
    pub excluded_with_identity: Vec<TableName>,
}

/// What the operator asks of the setup.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub schemas: &'a [String],
    pub decisions: &'a [(TableName, TableDecision)],
    /// A new snapshot even though the slot and replica could be kept.
    pub resnapshot: bool,
}

/// Plans setting `connector` up again as `wanted`, after `report` (the source's
/// preflight).
pub async fn plan(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    connector: &Connector,
    source: &ConnInfo,
    report: &preflight::Report,
    wanted: Wanted<'_>,
) -> Result<SetupPlan, Error> {
    let Wanted {
        schemas,
        decisions,
        resnapshot,
    } = wanted;
    let applied = sink::replica_applied_lsn(store, &connector.replica_database).await?;
    let replica = &connector.replica_database;
    let interrupted = sink::sync::interrupted_snapshot(store, replica, &connector.slot_name)
        .await?
        .is_some();
    let client = pg::connect(source).await?;
    let slot = match slot::inspect(&client, &connector.slot_name).await? {
        None => SlotFound::Missing,
        Some(info) => info
            .invalidation()
            .map_or(SlotFound::Valid, SlotFound::Invalidated),
    };
    drop(client);
    let snapshot = bookkeeping.tables(connector.id).await?;
    let listed: Vec<(TableName, bool)> = report
        .tables
        .iter()
        .map(|t| (t.name.clone(), t.identity.is_usable()))
        .collect();
    let excluded_with_identity = plan::split_tables(&listed, decisions)
        .excluded
        .into_iter()
        .filter(|e| e.usable && e.decision == TableDecision::Exclude)
        .map(|e| e.table)
        .collect();
    let facts = plan::Facts {
        asked_by: AskedBy::Operator,
        slot_name: &connector.slot_name,
        replica: &connector.replica_database,
        slot,
        applied,
        streamed_since_snapshot: false,
        interrupted_snapshot: interrupted,
        resnapshot,
        schemas_recorded: &connector.schemas,
        schemas_wanted: schemas,
        tables: Some(TableFacts {
            listed: &listed,
            decisions,
            snapshot: &snapshot,
            include_new_tables: connector.include_new_tables,
        }),
    };
    let (reasons, additions) = match plan::decide(&facts) {
        Start::Snapshot { reasons } => (reasons, Vec::new()),
        Start::Add { additions, .. } => (Vec::new(), additions),
        Start::Resume { .. } | Start::Continue | Start::Blocked(_) => (Vec::new(), Vec::new()),
    };
    Ok(SetupPlan {
        reasons,
        additions,
        excluded_with_identity,
    })
}

/// What became of a setup request.
#[derive(Debug)]
pub enum Requested {
    /// Setup is running already (it was not restarted).
    InProgress(PipelineState),
    /// Nothing to restart: the connector is as healthy as `Health` says (the decisions
    /// and schemas were recorded).
    Kept(Health),
    /// The connector is back in `pending`: a running daemon sets it up again.
    Restarted,
}

/// Records the plan: new decisions, schemas and NaN decision, and a restart (with a new snapshot when
/// the plan has reasons) when there is one or the connector is not healthy.
pub async fn request(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    plan: &SetupPlan,
    decisions: Option<&[(TableName, TableDecision)]>,
    (schemas, nan_as_null): (Option<&[String]>, Option<bool>),
) -> Result<Requested, Error> {
    let unhealthy = connector.state != PipelineState::Streaming || connector.last_error.is_some();
    let change = SetupChange {
        decisions,
        schemas,
        restart: !plan.reasons.is_empty() || !plan.additions.is_empty() || unhealthy,
        resnapshot: !plan.reasons.is_empty(),
        resync: &[],
        nan_as_null,
    };
    Ok(
        match bookkeeping.request_setup(connector.id, &change).await? {
            SetupRequest::InProgress(state) => Requested::InProgress(state),
            SetupRequest::Recorded => {
                let leases = bookkeeping.leases().await?;
                let assessed =
                    health::assess(bookkeeping, connector, &leases, &health::Slot::Unknown).await?;
                Requested::Kept(assessed.health)
            }
            SetupRequest::Restarted => Requested::Restarted,
        },
    )
}
