//! A connector's lifecycle, as the CLI (and tests) drive it: creating one (`create.rs`),
//! what needs attention in one (`attention.rs`),
//! finding one by name, what a
//! source is compared with and whether the branch store can serve it before one is
//! created or set up again, its slot as the source reports it (`slot.rs`), setting one
//! up again (`setup.rs`), copying some of its tables again (`resync.rs`), its tables as
//! operators see them (`tables.rs`), following one to streaming (`wait.rs`), and deleting
//! one (`delete.rs`).

pub mod attention;
pub mod create;
pub mod delete;
pub mod resync;
pub mod setup;
pub mod slot;
pub mod tables;
pub mod wait;

use crate::bookkeeping::{self, Bookkeeping, Connector};
use crate::control::store_check;
use crate::pg::ConnInfo;
use crate::pipeline::versions::{self, StoreTooOld};
use crate::sink::{self, SinkError};
use crate::source::preflight::{KnownSource, KnownSources, Report, SourceIdentity};
use crate::types::{ConnectorId, ConnectorName, InstallationId, InvalidConnectorName};

/// Why no connector was found.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// Not a connector name at all: a usage error.
    #[error(transparent)]
    InvalidName(#[from] InvalidConnectorName),
    #[error("no connector named {0}; `tributary connector list` shows them")]
    Unknown(ConnectorName),
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
}

/// The connector called `name`.
pub async fn find(bookkeeping: &Bookkeeping, name: &str) -> Result<Connector, FindError> {
    let name = ConnectorName::new(name.to_owned())?;
    bookkeeping
        .connector(&name)
        .await?
        .ok_or(FindError::Unknown(name))
}

/// What preflight compares the source with: `connectors` of `installation`, all but
/// `setting_up` (the one set up again, which is no duplicate of itself) as known sources.
pub fn known(
    installation: Option<&InstallationId>,
    connectors: &[Connector],
    setting_up: Option<ConnectorId>,
) -> KnownSources {
    KnownSources::Known {
        installation: installation.cloned(),
        slots: connectors.iter().map(|c| c.slot_name.clone()).collect(),
        connectors: connectors
            .iter()
            .filter(|c| Some(c.id) != setting_up)
            .map(known_source)
            .collect(),
    }
}

fn known_source(connector: &Connector) -> KnownSource {
    let identity = connector
        .system_id
        .clone()
        .zip(connector.source_database.clone())
        .map(|(system_id, database)| SourceIdentity {
            system_id,
            database,
        });
    // The display URL has its password masked, which does not change where it points.
    let address = ConnInfo::parse(&connector.source_display)
        .ok()
        .map(|source| (source.target(), source.dbname));
    KnownSource {
        connector: connector.name.to_string(),
        identity,
        address,
    }
}

/// The known sources of the branch store `store`, read without changing anything there
/// (preflight runs before any migration).
pub async fn peek_known(store: &ConnInfo) -> Result<KnownSources, bookkeeping::Error> {
    let installation = Bookkeeping::peek_installation(store).await?;
    let connectors = Bookkeeping::peek_connectors(store).await?;
    Ok(known(installation.as_ref(), &connectors, None))
}

/// Why a branch store cannot serve a source.
#[derive(Debug, thiserror::Error)]
pub enum StoreRefusal {
    #[error(transparent)]
    Store(#[from] SinkError),
    #[error(transparent)]
    TooOld(#[from] StoreTooOld),
    /// The store check (`control::store_check`) failed: its report.
    #[error("the branch store cannot serve tributary")]
    Checks(Report),
}

/// Refuses a branch store that cannot serve a source of major version `source_major`
/// (when known): older than it (`pipeline/versions.rs`), or failing the store check (a
/// role that cannot create databases or open apply sessions, …). The daemon would find
/// out only at the snapshot, after creating a slot (and, for apply sessions, after the
/// copy).
pub async fn check_store(source_major: Option<u32>, store: &ConnInfo) -> Result<(), StoreRefusal> {
    let store_major = sink::server_major(store).await?;
    if let Some(source_major) = source_major {
        versions::check_store(source_major, store_major)?;
    }
    let sources: Vec<(String, u32)> = source_major
        .map(|major| ("the source".to_owned(), major))
        .into_iter()
        .collect();
    let report = store_check::check(store, &sources).await;
    if report.failures().next().is_some() {
        return Err(StoreRefusal::Checks(report));
    }
    Ok(())
}
