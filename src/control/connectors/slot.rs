//! A connector's slot as its source reports it, asked within [`SOURCE_TIMEOUT`]: for
//! `connector list`, `status` and the commands that follow a snapshot.

use std::time::Duration;

use crate::bookkeeping::{self, Bookkeeping, Connector};
use crate::pg::{self, ConnInfo, ConnectError, InvalidUrl};
use crate::source::prepared;
use crate::source::slot::{self, SlotInfo};
use crate::types::SlotName;

/// How long a command waits for each source.
pub const SOURCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the source could not say.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("no answer within {SOURCE_TIMEOUT:?}")]
    NoAnswer,
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(transparent)]
    Url(#[from] InvalidUrl),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

/// The connector's slot on its source; `None` when there is none.
pub async fn inspect(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
) -> Result<Option<SlotInfo>, SourceError> {
    let source = bookkeeping.source(connector).await?;
    tokio::time::timeout(SOURCE_TIMEOUT, async {
        let client = pg::connect(&source).await?;
        Ok(slot::inspect(&client, &connector.slot_name).await?)
    })
    .await
    .map_err(|_| SourceError::NoAnswer)?
}

/// What a new slot waits for while it is being created: `Some` when the connector's slot
/// exists without a confirmed position yet (no consistent point), else `None`.
pub async fn creation_wait(
    source: &ConnInfo,
    slot_name: &SlotName,
) -> Result<Option<String>, SourceError> {
    tokio::time::timeout(SOURCE_TIMEOUT, async {
        let client = pg::connect(source).await?;
        let creating = slot::inspect(&client, slot_name)
            .await?
            .is_some_and(|s| s.confirmed_flush.is_none());
        if !creating {
            return Ok(None);
        }
        let pending = prepared::pending(&client).await?;
        Ok(Some(prepared::slot_wait_reason(&pending)))
    })
    .await
    .map_err(|_| SourceError::NoAnswer)?
}
