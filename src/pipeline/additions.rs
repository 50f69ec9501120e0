//! Tables added to a complete replica without rebuilding it: those of a schema added to
//! the connector (`connector update --schemas`), tables a changed decision includes now or
//! that were fixed since the snapshot, and, with new tables included but schema changes
//! not captured, tables created on the source since. (With capture, a new table arrives
//! with its CREATE TABLE in the stream.)
//!
//! Their definitions are dumped and restored as pre-data, their rows copied like a
//! snapshot's last groups (`sync.rs`: each exact at its own snapshot's position, which the
//! stream then takes them from), then their post-data (indexes, constraints) restored.
//! Streaming waits meanwhile; the other tables are not touched.

use std::collections::HashSet;

use super::plan;
use super::sync::{self, Copying};
use super::{PipelineContext, PipelineError};
use crate::bookkeeping::TableSyncState;
use crate::change::TableName;
use crate::pg::{self, ConnInfo};
use crate::pipeline::drift::catalog_session;
use crate::pipeline::snapshot::{SchemaDump, Section, SnapshotJob};
use crate::sink::ReplicaSink;
use crate::source::{catalog, ReplicationClient};

/// What the replica lacks.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Additions {
    /// Schemas the connector replicates that the replica does not have.
    schemas: Vec<String>,
    /// Tables to copy (those of the new schemas too), by the operator's decisions.
    pub(super) tables: Vec<TableName>,
    /// Tables of the new schemas a decision leaves out.
    excluded: Vec<TableName>,
}

impl Additions {
    pub(super) fn is_empty(&self) -> bool {
        self.schemas.is_empty() && self.tables.is_empty()
    }
}

/// Compares what the connector replicates on the source with what the replica has.
pub(super) async fn find(
    ctx: &PipelineContext,
    source: &ConnInfo,
    replica: &ConnInfo,
) -> Result<Additions, PipelineError> {
    let connector = &ctx.connector;
    let schemas = &connector.schemas;
    let replica_sql = pg::connect(replica).await?;
    let have_schemas: HashSet<String> = replica_sql
        .query(
            "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY($1)",
            &[schemas],
        )
        .await
        .map_err(|source| catalog::CatalogError::Query {
            what: "the replica's schemas",
            source,
        })?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let have_tables: HashSet<TableName> = catalog::table_oids(&replica_sql, schemas)
        .await?
        .into_iter()
        .map(|(table, _)| table)
        .collect();
    drop(replica_sql);
    let source_sql = catalog_session(source).await?;
    let listed = catalog::list_tables(&source_sql, schemas, &[]).await?;
    drop(source_sql);
    let known: HashSet<TableName> = ctx
        .bookkeeping
        .tables(connector.id)
        .await?
        .into_iter()
        .map(|t| t.table)
        .collect();
    let decisions = ctx.bookkeeping.table_decisions(connector.id).await?;
    let identities: Vec<(TableName, bool)> = listed
        .iter()
        .map(|t| (t.name.clone(), t.identity.is_usable()))
        .collect();
    let split = plan::split_tables(&identities, &decisions);
    let new_schema = |table: &TableName| !have_schemas.contains(&table.schema);
    Ok(Additions {
        schemas: schemas
            .iter()
            .filter(|s| !have_schemas.contains(*s))
            .cloned()
            .collect(),
        tables: split
            .copied
            .into_iter()
            .filter(|t| !have_tables.contains(t))
            .filter(|t| new_schema(t) || connector.include_new_tables || known.contains(t))
            .collect(),
        excluded: split
            .excluded
            .into_iter()
            .map(|e| e.table)
            .filter(new_schema)
            .collect(),
    })
}

/// Creates the added tables in the replica and copies them; returns when they are copied
/// (the stream takes each from its copy's position).
pub(super) async fn add(run: &Copying<'_>, additions: &Additions) -> Result<(), PipelineError> {
    let ctx = run.ctx;
    let connector = &ctx.connector;
    let names: Vec<String> = additions.tables.iter().map(ToString::to_string).collect();
    tracing::info!(
        schemas = %additions.schemas.join(", "),
        tables = %names.join(", "),
        "adding to the replica what it lacks; its other tables are kept"
    );
    let old_schemas: Vec<String> = connector
        .schemas
        .iter()
        .filter(|s| !additions.schemas.contains(s))
        .cloned()
        .collect();
    let in_old: Vec<TableName> = additions
        .tables
        .iter()
        .filter(|t| old_schemas.contains(&t.schema))
        .cloned()
        .collect();
    // The definitions, as one snapshot sees them (its rows are not copied under it).
    let mut repl = ReplicationClient::connect(run.source).await?;
    let created = sync::create_slot(run, &mut repl, &sync::group_slot_name(), true).await?;
    let snapshot_name = sync::exported(&created)?;
    let base = run.job(snapshot_name, &[], &[], (created.consistent_point, None));
    let mut dumps = Vec::new();
    if !additions.schemas.is_empty() {
        let job = SnapshotJob {
            schemas: &additions.schemas,
            replicated: &old_schemas,
            exclude: &additions.excluded,
            ..base
        };
        dumps.push(SchemaDump::create(&job).await?);
    }
    if !in_old.is_empty() {
        let job = SnapshotJob {
            only: Some(&in_old),
            ..base
        };
        dumps.push(SchemaDump::create(&job).await?);
    }
    drop(repl);
    for dump in &dumps {
        dump.restore(&base, Section::PreData).await?;
    }
    for table in &additions.tables {
        ctx.bookkeeping
            .set_table_state(
                connector.id,
                ctx.lease,
                table,
                TableSyncState::Pending,
                None,
            )
            .await?;
    }
    for table in &additions.excluded {
        tracing::info!(%table, "table of an added schema excluded by decision");
    }
    // Their schema changes from before the definitions' snapshot are in them already.
    sync::recopy(run, &additions.tables, Some(created.consistent_point)).await?;
    for dump in &dumps {
        dump.restore(&base, Section::PostData).await?;
    }
    // The table watch compares these with the source's.
    let source_sql = pg::connect(run.source).await?;
    let oids: Vec<(TableName, u32)> = catalog::table_oids(&source_sql, &connector.schemas)
        .await?
        .into_iter()
        .filter(|(t, _)| additions.tables.contains(t))
        .collect();
    drop(source_sql);
    let mut sink = ReplicaSink::connect(run.store, &run.replica.dbname, ctx.lease).await?;
    sink.record_source_tables(&oids, &[]).await?;
    Ok(())
}
