//! `connector create`'s work around the operator's decisions: whether the name (and the
//! replica database it derives) is free, recording the connector (its URL sealed by the
//! bookkeeping) with its decisions, and what the decisions leave dangling.

use crate::bookkeeping::{self, Bookkeeping, Connector, TableDecision};
use crate::change::TableName;
use crate::pg::ConnInfo;
use crate::sink::{self, SinkError};
use crate::source::catalog::ForeignKey;
use crate::source::preflight::Report;
use crate::types::ConnectorName;

/// Why a connector of that name cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error(
        "a connector named {0} exists already; choose another --name, or see `tributary \
         connector list`"
    )]
    Exists(ConnectorName),
    #[error(
        "connector {name} would share its replica database {} with connector {other} (slot \
         and database names carry '-' as '_'): choose another --name",
        .name.replica_database()
    )]
    SharesReplica {
        name: ConnectorName,
        other: ConnectorName,
    },
    #[error(
        "a database named {} exists on the branch store already; connector {name} would \
         replace it: choose another --name, or drop or rename that database",
        .name.replica_database()
    )]
    ReplicaInTheWay { name: ConnectorName },
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(transparent)]
    Store(#[from] SinkError),
}

/// Refuses a name that is taken: by a connector, by one whose slot and replica names
/// would be the same, or by a database where its replica would go (the first snapshot
/// drops and re-creates the replica: never someone else's database).
pub async fn check_name(
    bookkeeping: &Bookkeeping,
    store: &ConnInfo,
    name: &ConnectorName,
) -> Result<(), NameError> {
    if bookkeeping.connector(name).await?.is_some() {
        return Err(NameError::Exists(name.clone()));
    }
    let connectors = bookkeeping.connectors().await?;
    if let Some(other) = connectors.iter().find(|c| name.conflicts_with(&c.name)) {
        return Err(NameError::SharesReplica {
            name: name.clone(),
            other: other.name.clone(),
        });
    }
    if sink::replica_exists(store, &name.replica_database()).await? {
        return Err(NameError::ReplicaInTheWay { name: name.clone() });
    }
    Ok(())
}

/// A connector to record.
#[derive(Debug)]
pub struct NewConnector<'a> {
    pub name: &'a ConnectorName,
    /// As given: the bookkeeping seals it.
    pub url: &'a str,
    pub schemas: &'a [String],
    pub decisions: &'a [(TableName, TableDecision)],
    pub nan_as_null: bool,
}

/// Records the connector and its decisions in one transaction; a running daemon picks it
/// up.
pub async fn record(
    bookkeeping: &Bookkeeping,
    new: &NewConnector<'_>,
) -> Result<Connector, bookkeeping::Error> {
    bookkeeping
        .create_connector_with_decisions(
            new.name,
            new.url,
            new.schemas,
            new.decisions,
            new.nan_as_null,
        )
        .await
}

/// The foreign keys of `report` that the decisions leave pointing at a table that is not
/// replicated (those already dangling without them are preflight's to say).
pub fn dangling_foreign_keys<'r>(
    report: &'r Report,
    schemas: &[String],
    decisions: &[(TableName, TableDecision)],
) -> Vec<&'r ForeignKey> {
    let left_out: Vec<TableName> = decisions.iter().map(|(t, _)| t.clone()).collect();
    report
        .foreign_keys
        .iter()
        .filter(|k| !k.dangles(schemas, &[]) && k.dangles(schemas, &left_out))
        .collect()
}
