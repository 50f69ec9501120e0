//! A connector's source handed out parsed, its URL replaced (`connector update --url`),
//! and a connector removed when its URL can no longer be opened (the key is lost or wrong).
//!
//! The new URL is sealed like the first one ([`Keys::seal_source_url`](super::keys)): the
//! bookkeeping never holds a URL in clear, and a URL sealed with another key than the
//! recorded one is refused before anything is written.

use super::connectors::found;
use super::{Bookkeeping, Connector, Error};
use crate::pg::conninfo::mask_password;
use crate::pg::ConnInfo;
use crate::types::ConnectorId;

/// The source a new URL reaches, as `IDENTIFY_SYSTEM` and the server say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSeen {
    pub system_id: String,
    pub timeline: u32,
    pub database: String,
}

impl Bookkeeping {
    /// The connector's source, password included: hand it to the connections and nowhere
    /// else. Read once per pipeline run (or command) and passed down.
    pub async fn source(&self, connector: &Connector) -> Result<ConnInfo, Error> {
        // Every URL is parsed before it is sealed: one that no longer parses was not
        // written by tributary (or by another version's parser).
        ConnInfo::parse(&self.source_url(connector).await?).map_err(|reason| {
            Error::StoredSourceUrl {
                connector: connector.name.clone(),
                reason,
            }
        })
    }

    /// Replaces the connector's source URL (sealed with the bookkeeping's key) and its
    /// masked copy, and records the source's identity where none was (a connector whose
    /// pipeline never reached the source). The caller has checked that `seen` is the
    /// recorded source; the slot, the replica and the progress are untouched.
    pub async fn replace_source_url(
        &self,
        id: ConnectorId,
        source_url: &str,
        seen: &SourceSeen,
    ) -> Result<(), Error> {
        ConnInfo::parse(source_url)?;
        let mut tx = self.pool.begin().await?;
        let ciphertext = self
            .keys
            .seal_source_url(&self.pool, &mut tx, source_url)
            .await?;
        let updated = sqlx::query(
            "UPDATE tributary.connectors
             SET source_url_ciphertext = $2, source_display = $3,
                 system_id = coalesce(system_id, $4),
                 timeline = coalesce(timeline, $5),
                 source_database = coalesce(source_database, $6)
             WHERE id = $1",
        )
        .bind(id.0)
        .bind(ciphertext)
        .bind(mask_password(source_url))
        .bind(&seen.system_id)
        .bind(i64::from(seen.timeline))
        .bind(&seen.database)
        .execute(&mut *tx)
        .await?;
        found(updated.rows_affected(), id)?;
        tx.commit().await?;
        tracing::info!(id = %id, "source URL replaced");
        Ok(())
    }
}

impl Error {
    /// Whether the error says the source URLs cannot be opened with the key at hand (none,
    /// another one, or a URL that does not open with it): the case `connector delete`
    /// explains as a lost key.
    pub fn is_key_problem(&self) -> bool {
        matches!(
            self,
            Error::NoKey { .. } | Error::WrongKey { .. } | Error::Decrypt { .. }
        )
    }

    /// Whether the connector's source cannot be reached from what is stored: a key
    /// problem, or a URL that opens but no longer parses. `connector delete --force` then
    /// deletes without touching the source.
    pub fn source_unusable(&self) -> bool {
        self.is_key_problem() || matches!(self, Error::StoredSourceUrl { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::retry::{ErrorKind, NextStep};
    use crate::types::ConnectorName;

    /// A stored URL that no longer parses stops the connector and names the command that
    /// stores a new one; neither says the password.
    #[test]
    fn a_stored_url_that_does_not_parse_is_definite_and_names_the_fix() {
        let reason =
            ConnInfo::parse("postgresql://app:hunter2@db/shop?sslmode=sometimes").unwrap_err();
        let error = Error::StoredSourceUrl {
            connector: ConnectorName::new("orders").unwrap(),
            reason,
        };
        let message = error.to_string();
        assert!(message.contains("connector orders"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        match error.kind() {
            ErrorKind::Definite(NextStep::Explained(next)) => assert_eq!(
                next,
                "store the source URL again: tributary connector update orders --url URL"
            ),
            other => panic!("{other:?}"),
        }
        // Not a lost key (its advice would be wrong), but `delete --force` may go on
        // without the source.
        assert!(!error.is_key_problem());
        assert!(error.source_unusable());
    }
}
