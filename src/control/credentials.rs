//! `connector update NAME --url URL`: new credentials (a changed password, another host
//! name for the same server) for a connector, keeping its slot and replica.
//!
//! ```text
//!  new URL ── replication connection + IDENTIFY_SYSTEM ── fails ──► refused, nothing changed
//!          ── system id or database not the recorded ones ──────► refused, both named
//!          ── SQL session; the connector's slot looked up (missing: said, not refused)
//!          └► sealed with the installation key, stored; the pipeline restarts from its
//!             slot and the replica's applied position (no new snapshot)
//! ```
//!
//! The connector's recorded identity (system id and database, from its first setup)
//! decides; a connector that never reached its source has none, and the new URL's is
//! recorded. Errors never carry the URL: connection errors name `host:port` only.

use crate::bookkeeping::{self, Bookkeeping, Connector, SetupChange, SetupRequest, SourceSeen};
use crate::pg::{self, ConnInfo};
use crate::source::replication::ReplicationClient;
use crate::source::slot::{self, SlotInfo};
use crate::types::{ConnectorName, SlotName};

/// What the connector recorded of its source at setup; `None` before its first setup.
#[derive(Debug, Clone, Copy)]
pub struct Recorded<'a> {
    pub system_id: Option<&'a str>,
    pub database: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the new URL cannot be used, nothing was changed")]
    InvalidUrl(#[from] pg::InvalidUrl),
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
    #[error(
        "the new URL reaches {seen}, but connector {connector} replicates {recorded}: nothing \
         was changed. Give a URL of the connector's own source, or create a new connector for \
         this one"
    )]
    OtherSource {
        connector: ConnectorName,
        seen: String,
        recorded: String,
    },
    #[error("the replication connection with the new URL does not work, nothing was changed")]
    Replication(#[source] crate::source::Error),
    #[error("an SQL session with the new URL does not work, nothing was changed")]
    Sql(#[source] pg::ConnectError),
    #[error("looking up slot {slot} with the new URL failed, nothing was changed")]
    Slot {
        slot: SlotName,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// What the new URL reached: the source's identity and the connector's slot, if it exists.
#[derive(Debug)]
pub struct Checked {
    pub seen: SourceSeen,
    pub slot: Option<SlotInfo>,
}

/// A new source URL, parsed; the text (password included) is kept for sealing and never
/// printed.
pub struct NewUrl {
    raw: String,
    info: ConnInfo,
}

impl NewUrl {
    pub fn parse(raw: &str) -> Result<NewUrl, Error> {
        Ok(NewUrl {
            info: ConnInfo::parse_to_store(raw)?,
            raw: raw.to_owned(),
        })
    }
}

impl std::fmt::Debug for NewUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewUrl({})", self.info)
    }
}

/// What `connector update --url` did.
#[derive(Debug)]
pub struct Updated {
    pub checked: Checked,
    /// Whether the pipeline was asked to start again (else setup is running and uses the
    /// new URL at its next connection).
    pub restarted: bool,
}

/// Checks `url` ([`check_url`]), stores it sealed, and asks the daemon to start the
/// pipeline again: from its slot and the replica's applied position, as a restart after
/// any definite failure does.
pub async fn update_url(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    url: &NewUrl,
) -> Result<Updated, Error> {
    let recorded = Recorded {
        system_id: connector.system_id.as_deref(),
        database: connector.source_database.as_deref(),
    };
    let checked = check_url(&url.info, &connector.name, recorded, &connector.slot_name).await?;
    bookkeeping
        .replace_source_url(connector.id, &url.raw, &checked.seen)
        .await?;
    let change = SetupChange {
        restart: true,
        ..SetupChange::default()
    };
    let restarted =
        bookkeeping.request_setup(connector.id, &change).await? == SetupRequest::Restarted;
    Ok(Updated { checked, restarted })
}

/// Whether `seen` is the recorded source: same system, same database. Unrecorded parts
/// are taken as they are seen.
pub fn same_source(
    connector: &ConnectorName,
    recorded: Recorded<'_>,
    seen: &SourceSeen,
) -> Result<(), Error> {
    let system_matches = recorded.system_id.is_none_or(|s| s == seen.system_id);
    let database_matches = recorded.database.is_none_or(|d| d == seen.database);
    if system_matches && database_matches {
        return Ok(());
    }
    let describe = |system: &str, database: &str| {
        format!("database {database:?} of the PostgreSQL system {system}")
    };
    Err(Error::OtherSource {
        connector: connector.clone(),
        seen: describe(&seen.system_id, &seen.database),
        recorded: describe(
            recorded.system_id.unwrap_or(&seen.system_id),
            recorded.database.unwrap_or(&seen.database),
        ),
    })
}

/// Connects with the new URL as the pipeline will (a replication connection, then an SQL
/// session), checks it reaches the recorded source, and looks up the connector's slot.
pub async fn check_url(
    url: &ConnInfo,
    connector: &ConnectorName,
    recorded: Recorded<'_>,
    slot_name: &SlotName,
) -> Result<Checked, Error> {
    let mut replication = ReplicationClient::connect(url)
        .await
        .map_err(Error::Replication)?;
    let system = replication
        .identify_system()
        .await
        .map_err(Error::Replication)?;
    let seen = SourceSeen {
        system_id: system.system_id,
        timeline: system.timeline,
        database: system.dbname.unwrap_or_else(|| url.dbname.clone()),
    };
    same_source(connector, recorded, &seen)?;
    let client = pg::connect(url).await.map_err(Error::Sql)?;
    let slot = slot::inspect(&client, slot_name)
        .await
        .map_err(|source| Error::Slot {
            slot: slot_name.clone(),
            source,
        })?;
    Ok(Checked { seen, slot })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_url_must_reach_the_recorded_system_and_database() {
        let name = ConnectorName::new("shop").unwrap();
        let seen = SourceSeen {
            system_id: "7301".into(),
            timeline: 1,
            database: "shop".into(),
        };
        let recorded = |system_id, database| Recorded {
            system_id,
            database,
        };
        for (system, database, ok) in [
            (Some("7301"), Some("shop"), true),
            // Nothing recorded yet: whatever is seen is recorded.
            (None, None, true),
            (Some("7301"), None, true),
            (Some("9999"), Some("shop"), false),
            (Some("7301"), Some("orders"), false),
            (None, Some("orders"), false),
        ] {
            let verdict = same_source(&name, recorded(system, database), &seen);
            assert_eq!(verdict.is_ok(), ok, "{system:?} {database:?}: {verdict:?}");
            if let Err(e) = verdict {
                // Both sources named, and the promise that nothing changed.
                let text = e.to_string();
                for needle in [
                    "PostgreSQL system 7301",
                    "database \"shop\"",
                    &format!("system {}", system.unwrap_or("7301")),
                    &format!("database {:?}", database.unwrap_or("shop")),
                    "nothing was changed",
                ] {
                    assert!(text.contains(needle), "{needle}: {text}");
                }
            }
        }
    }
}
