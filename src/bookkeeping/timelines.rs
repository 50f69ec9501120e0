//! The source's timeline changes that a pipeline followed (`pipeline::timeline` decides
//! which it may follow), so that `status` can say the source failed over, when, and from
//! where, after the log lines have rotated away.

use chrono::{DateTime, Utc};

use super::connectors::timestamp;
use super::{Bookkeeping, Error};
use crate::types::{ConnectorId, Lsn};

/// One followed change of the source's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineChange {
    pub from: u32,
    pub to: u32,
    /// Where the new timeline's history left `from`: everything the replica had applied
    /// was at or before it.
    pub fork: Lsn,
    /// The server (`host:port`) on the new timeline, as the connection string reached it.
    pub server: String,
    pub followed_at: DateTime<Utc>,
}

impl Bookkeeping {
    /// Records that the connector's pipeline followed its source to a new timeline. A run
    /// that records the same change again (it failed before streaming) keeps the first.
    pub async fn record_timeline_change(
        &self,
        id: ConnectorId,
        (from, to): (u32, u32),
        fork: Lsn,
        server: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO tributary.timeline_changes
                 (connector_id, from_timeline, to_timeline, fork_lsn, server)
             VALUES ($1, $2, $3, $4::text::pg_lsn, $5)
             ON CONFLICT (connector_id, to_timeline) DO NOTHING",
        )
        .bind(id.0)
        .bind(i64::from(from))
        .bind(i64::from(to))
        .bind(fork.to_string())
        .bind(server)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The connector's last followed timeline change; `None` when it never had one.
    pub async fn last_timeline_change(
        &self,
        id: ConnectorId,
    ) -> Result<Option<TimelineChange>, Error> {
        let row: Option<(i64, i64, String, String, i64)> = sqlx::query_as(
            "SELECT from_timeline, to_timeline, fork_lsn::text, server,
                    (extract(epoch FROM followed_at) * 1000000)::int8
               FROM tributary.timeline_changes
              WHERE connector_id = $1
              ORDER BY followed_at DESC, to_timeline DESC
              LIMIT 1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        let Some((from, to, fork, server, followed_at)) = row else {
            return Ok(None);
        };
        let timeline =
            |t: i64| u32::try_from(t).map_err(|_| Error::Corrupt(format!("timeline {t}")));
        Ok(Some(TimelineChange {
            from: timeline(from)?,
            to: timeline(to)?,
            fork: fork
                .parse()
                .map_err(|e| Error::Corrupt(format!("fork position {fork:?}: {e}")))?,
            server,
            followed_at: timestamp(followed_at)?,
        }))
    }
}
