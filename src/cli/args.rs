//! Arguments several commands take, turned into the values the library works with. A
//! leaf: it names no other `cli` module.

use clap::ValueEnum;

use super::Failure;
use crate::bookkeeping::{Bookkeeping, Connector};
use crate::control::connectors::{self, FindError};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SourceKind {
    Postgresql,
}

/// The connector called `name`; exit 2 for an invalid name, 1 for an unknown one.
pub async fn find(bookkeeping: &Bookkeeping, name: &str) -> Result<Connector, Failure> {
    connectors::find(bookkeeping, name)
        .await
        .map_err(|e| match e {
            FindError::InvalidName(e) => Failure::usage(e),
            e => e.into(),
        })
}

/// `--schemas` as given, trimmed, without empty entries and repetitions.
pub fn schema_list(raw: Vec<String>) -> Result<Vec<String>, Failure> {
    let mut schemas: Vec<String> = Vec::with_capacity(raw.len());
    for schema in raw {
        let schema = schema.trim();
        if !schema.is_empty() && !schemas.iter().any(|s| s == schema) {
            schemas.push(schema.to_owned());
        }
    }
    if schemas.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!("--schemas names no schema")));
    }
    Ok(schemas)
}
