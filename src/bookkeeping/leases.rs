//! Connector leases: which daemon runs each connector's pipeline.
//!
//! Several daemons may share one bookkeeping database. A daemon runs a connector only while
//! it holds the connector's lease, a row of `tributary.leases` that expires at a time of
//! the bookkeeping server's clock unless renewed. Taking a lease draws a new fencing token
//! from one sequence, so every later owner holds a larger token; the replica is claimed
//! with it and refuses the transactions of smaller ones (`sink/replica.rs`). Releasing a
//! lease expires it at once and notifies the other daemons, so that one takes it over
//! without waiting for its poll.
//!
//! A lease whose holder's bookkeeping session is gone (the process crashed or was killed;
//! the server ends its sessions at once) may be taken before it expires: each daemon holds
//! a lock named after it on its listening session (`store.rs`). A paused or cut-off daemon
//! keeps its session, so its leases are taken only once they expire; either way the new
//! holder's token fences the old one out.
//!
//! Daemons also say they are alive (`tributary.daemons`), so that each knows how many
//! share the connectors.
//!
//! The supervisor renews its leases well before they expire and stops its pipelines when
//! it could not (see `supervisor.rs`): the lease is a promise that no one else runs the
//! connector, the token the proof checked where it matters.

use std::collections::HashMap;
use std::time::Duration;

use super::store::{DAEMON_NAME_LOCK_CLASS, NOTIFY_CHANNEL};
use super::{Bookkeeping, Error};
use crate::types::{ConnectorId, FencingToken};

/// A connector's current lease, as `tributary status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The holder, as `host:pid`.
    pub owner: String,
    pub token: FencingToken,
    /// Seconds until it expires; zero or less once it is free.
    pub expires_in: f64,
    /// Whether the holder still has its session on the bookkeeping (a daemon that was
    /// killed has none, though its lease has not expired yet).
    pub holder_connected: bool,
    /// Seconds since the holder took it: what was recorded before, an earlier holder did.
    pub held_for: f64,
    /// Whether the holder has recorded a state since it took the lease: until then the
    /// recorded state is an earlier holder's (a restarted daemon's pipeline is starting).
    pub state_recorded: bool,
}

impl Lease {
    /// Whether a daemon holds it.
    pub fn is_held(&self) -> bool {
        self.expires_in > 0.0
    }

    /// Whether a daemon holds it and is still there: the connector runs, or will soon.
    pub fn is_live(&self) -> bool {
        self.is_held() && self.holder_connected
    }
}

/// SQL: the daemon named by the expression `name` has no session on the bookkeeping any
/// more (its name's lock is free; see `store.rs`).
fn session_gone(name: &str) -> String {
    format!(
        "NOT EXISTS (
             SELECT FROM pg_catalog.pg_locks k
              WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
                AND k.database = (SELECT oid FROM pg_catalog.pg_database
                                   WHERE datname = pg_catalog.current_database())
                AND k.classid = {DAEMON_NAME_LOCK_CLASS}::oid
                AND k.objid = pg_catalog.hashtext({name})::oid)"
    )
}

impl Bookkeeping {
    /// Takes the lease of connector `id` for `owner` when no one holds it (it expired, or
    /// its holder's session is gone), for `ttl`; returns its new fencing token, or `None`
    /// when another daemon holds it.
    pub async fn acquire_lease(
        &self,
        id: ConnectorId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<FencingToken>, Error> {
        let mut tx = self.pool.begin().await?;
        let gone = session_gone("l.owner");
        let held: Option<bool> = sqlx::query_scalar(&format!(
            "SELECT l.expires_at > now() AND NOT {gone}
               FROM tributary.leases l WHERE l.connector_id = $1 FOR UPDATE OF l"
        ))
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        if held == Some(true) {
            tx.rollback().await?;
            return Ok(None);
        }
        // The previous lease ended when it expired or its holder went away (had it been
        // released, it would say).
        sqlx::query(
            "UPDATE tributary.lease_history h
                SET ended_at = greatest(h.acquired_at, least(l.expires_at, now()))
               FROM tributary.leases l
              WHERE l.connector_id = $1 AND h.token = l.token AND h.ended_at IS NULL",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        // Two daemons finding no row both insert: the WHERE turns the second one away.
        let token: Option<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO tributary.leases AS l (connector_id, owner, token, expires_at)
             VALUES ($1, $2, nextval('tributary.fencing_tokens'),
                     now() + make_interval(secs => $3))
             ON CONFLICT (connector_id) DO UPDATE
                SET owner = EXCLUDED.owner, token = EXCLUDED.token, acquired_at = now(),
                    renewed_at = now(), expires_at = EXCLUDED.expires_at
              WHERE l.expires_at <= now() OR {gone}
             RETURNING token"
        ))
        .bind(id.0)
        .bind(owner)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(token) = token else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO tributary.lease_history (token, connector_id, owner, acquired_at)
             VALUES ($1, $2, $3, now())",
        )
        .bind(token)
        .bind(id.0)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(FencingToken(token)))
    }

    /// Extends the leases of `tokens` by `ttl` from now; returns the tokens still held
    /// (an expired lease is not revived: another daemon may be taking it).
    pub async fn renew_leases(
        &self,
        tokens: &[FencingToken],
        ttl: Duration,
    ) -> Result<Vec<FencingToken>, Error> {
        let tokens: Vec<i64> = tokens.iter().map(|t| t.0).collect();
        let renewed: Vec<i64> = sqlx::query_scalar(
            "UPDATE tributary.leases
                SET renewed_at = now(), expires_at = now() + make_interval(secs => $2)
              WHERE token = ANY($1) AND expires_at > now()
             RETURNING token",
        )
        .bind(&tokens)
        .bind(ttl.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(renewed.into_iter().map(FencingToken).collect())
    }

    /// Whether the lease of `token` on connector `id` is still current.
    pub async fn holds_lease(&self, id: ConnectorId, token: FencingToken) -> Result<bool, Error> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM tributary.leases
                             WHERE connector_id = $1 AND token = $2 AND expires_at > now())",
        )
        .bind(id.0)
        .bind(token.0)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Gives up the lease of `token` on connector `id`, and tells the other daemons.
    pub async fn release_lease(&self, id: ConnectorId, token: FencingToken) -> Result<(), Error> {
        sqlx::query(
            "WITH released AS (
                 UPDATE tributary.leases SET expires_at = now()
                  WHERE connector_id = $1 AND token = $2 AND expires_at > now()
                 RETURNING connector_id),
             ended AS (
                 UPDATE tributary.lease_history SET ended_at = now()
                  WHERE token = $2 AND ended_at IS NULL)
             SELECT pg_catalog.pg_notify($3, connector_id::text) FROM released",
        )
        .bind(id.0)
        .bind(token.0)
        .bind(NOTIFY_CHANNEL)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that daemon `name` is alive; returns how many daemons were seen within
    /// `ttl` and still have their session, this one included. Forgets daemons not seen for
    /// a hundred TTLs.
    pub async fn heartbeat(&self, name: &str, ttl: Duration) -> Result<usize, Error> {
        let gone = session_gone("d.name");
        let others: i64 = sqlx::query_scalar(&format!(
            "WITH seen AS (
                 INSERT INTO tributary.daemons AS d (name) VALUES ($1)
                 ON CONFLICT (name) DO UPDATE SET seen_at = now()),
             forgotten AS (
                 DELETE FROM tributary.daemons
                  WHERE seen_at < now() - make_interval(secs => 100 * $2))
             SELECT count(*) FROM tributary.daemons d
              WHERE d.name <> $1 AND d.seen_at > now() - make_interval(secs => $2)
                AND NOT {gone}"
        ))
        .bind(name)
        .bind(ttl.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(others).unwrap_or(0) + 1)
    }

    /// Removes daemon `name` from the daemons seen (it is stopping).
    pub async fn sign_off(&self, name: &str) -> Result<(), Error> {
        sqlx::query("DELETE FROM tributary.daemons WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The current lease of every connector that ever had one.
    pub async fn leases(&self) -> Result<HashMap<ConnectorId, Lease>, Error> {
        let gone = session_gone("l.owner");
        let rows: Vec<(i64, String, i64, f64, bool, f64, bool)> = sqlx::query_as(&format!(
            "SELECT l.connector_id, l.owner, l.token,
                    extract(epoch FROM l.expires_at - now())::float8, NOT {gone},
                    extract(epoch FROM now() - l.acquired_at)::float8,
                    coalesce((SELECT h.at FROM tributary.state_history h
                               WHERE h.connector_id = l.connector_id
                               ORDER BY h.id DESC LIMIT 1) >= l.acquired_at, false)
               FROM tributary.leases l"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, owner, token, expires_in, holder_connected, held_for, state_recorded)| {
                    (
                        ConnectorId(id),
                        Lease {
                            owner,
                            token: FencingToken(token),
                            expires_in,
                            holder_connected,
                            held_for,
                            state_recorded,
                        },
                    )
                },
            )
            .collect())
    }
}

/// Locks connector `id` for the rest of `tx` if `lease` is its current token; otherwise
/// [`Error::LeaseLost`] (or [`Error::NotFound`] for a deleted connector). The connector's
/// row is locked first (`FOR NO KEY UPDATE`, as a delete would, so the two queue instead of
/// deadlocking), then the lease row with `FOR KEY SHARE`: the lease cannot be taken over
/// before `tx` ends, yet its holder can still renew it meanwhile.
/// In one statement, with `$1` the connector and `$2` the token: whether that lease is
/// still held. The lease row is share-locked until the statement's transaction ends, so
/// a takeover waits for a write under it, and a write after a takeover sees the new
/// token. A write that is one statement holds no lock between round trips: a daemon
/// frozen mid-way cannot keep its successor waiting.
pub(super) const LEASE_HELD: &str = "EXISTS (SELECT 1 FROM tributary.leases
      WHERE connector_id = $1 AND token = $2 AND expires_at > now() FOR SHARE)";

pub(super) async fn hold_lease(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: ConnectorId,
    lease: FencingToken,
) -> Result<(), Error> {
    sqlx::query_scalar::<_, i64>(
        "SELECT id FROM tributary.connectors WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(id.0)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(Error::NotFound(id))?;
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT connector_id FROM tributary.leases
          WHERE connector_id = $1 AND token = $2 AND expires_at > now()
            FOR KEY SHARE",
    )
    .bind(id.0)
    .bind(lease.0)
    .fetch_optional(&mut **tx)
    .await?;
    held.map(|_| ()).ok_or(Error::LeaseLost(id))
}
