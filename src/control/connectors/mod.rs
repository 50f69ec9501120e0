//! A connector's lifecycle, as the CLI (and tests) drive it: finding one by name, and
//! deleting one (`delete.rs`).

pub mod delete;

use crate::bookkeeping::{self, Bookkeeping, Connector};
use crate::types::{ConnectorName, InvalidConnectorName};

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
