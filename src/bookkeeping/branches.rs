//! Branches as recorded: requested by `branch create`, cut by the connector's pipeline
//! (or by the command itself when no pipeline runs), made ready by the command.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::secrets::branch_password_aad;
use super::{Bookkeeping, Error};
use crate::pg::conninfo::Password;
use crate::types::{BranchName, ConnectorId, Lsn, RoleName};

/// Where a branch is in its life; stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchState {
    Requested,
    Cutting,
    Copied,
    Ready,
    Failed,
}

impl BranchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BranchState::Requested => "requested",
            BranchState::Cutting => "cutting",
            BranchState::Copied => "copied",
            BranchState::Ready => "ready",
            BranchState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<BranchState, Error> {
        Ok(match text {
            "requested" => BranchState::Requested,
            "cutting" => BranchState::Cutting,
            "copied" => BranchState::Copied,
            "ready" => BranchState::Ready,
            "failed" => BranchState::Failed,
            other => return Err(Error::Corrupt(format!("branch state {other:?}"))),
        })
    }
}

/// Who a branch's URL logs in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchAccess {
    /// Made before branches had roles of their own: the store's role, which may do
    /// everything tributary may.
    StoreRole,
    /// A login role tributary created for the branch and drops with it; its password is
    /// sealed in the bookkeeping.
    OwnRole(RoleName),
    /// An existing role named with `--owner`: tributary neither created it nor drops it,
    /// and does not know its password.
    Owner(RoleName),
}

impl BranchAccess {
    /// The role the branch's URL logs in as; `None` for the store's.
    pub fn role(&self) -> Option<&RoleName> {
        match self {
            BranchAccess::StoreRole => None,
            BranchAccess::OwnRole(role) | BranchAccess::Owner(role) => Some(role),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub name: BranchName,
    /// `None` once the connector was deleted.
    pub connector_id: Option<ConnectorId>,
    pub connector_name: String,
    pub state: BranchState,
    pub lsn: Option<Lsn>,
    pub pause: Option<Duration>,
    /// The database's size when it became ready.
    pub size_bytes: Option<i64>,
    pub error: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub created_at: Option<DateTime<Utc>>,
    pub access: BranchAccess,
}

const BRANCH_COLUMNS: &str = "name, connector_id, connector_name, state, lsn::text, pause_ms, \
     size_bytes, error, (extract(epoch FROM requested_at) * 1000000)::int8, \
     (extract(epoch FROM created_at) * 1000000)::int8, role_name, role_created";

type BranchRow = (
    String,
    Option<i64>,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<bool>,
);

fn branch_names(names: Vec<String>) -> Result<Vec<BranchName>, Error> {
    names
        .into_iter()
        .map(|n| BranchName::new(n).map_err(|e| Error::Corrupt(e.to_string())))
        .collect()
}

fn branch(row: BranchRow) -> Result<Branch, Error> {
    let (
        name,
        connector_id,
        connector_name,
        state,
        lsn,
        pause_ms,
        size_bytes,
        error,
        requested,
        created,
        role_name,
        role_created,
    ) = row;
    let time = |us: i64| {
        DateTime::from_timestamp_micros(us)
            .ok_or_else(|| Error::Corrupt(format!("timestamp of {us} µs since 1970")))
    };
    Ok(Branch {
        name: BranchName::new(name).map_err(|e| Error::Corrupt(e.to_string()))?,
        connector_id: connector_id.map(ConnectorId),
        connector_name,
        state: BranchState::parse(&state)?,
        lsn: lsn
            .map(|text| {
                text.parse()
                    .map_err(|_| Error::Corrupt(format!("branch LSN {text:?}")))
            })
            .transpose()?,
        pause: pause_ms.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        size_bytes,
        error,
        requested_at: time(requested)?,
        created_at: created.map(time).transpose()?,
        access: match (role_name, role_created) {
            (None, _) => BranchAccess::StoreRole,
            (Some(role), created) => {
                let role = RoleName::new(role).map_err(|e| Error::Corrupt(e.to_string()))?;
                if created == Some(true) {
                    BranchAccess::OwnRole(role)
                } else {
                    BranchAccess::Owner(role)
                }
            }
        },
    })
}

/// A branch cut at a position its requester names: the pipeline holds at a source commit
/// boundary (`held_at`), the requester takes a source snapshot at or after it and names
/// its position (`cut_at`), and the pipeline cuts exactly there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub held_at: Option<Lsn>,
    pub cut_at: Option<Lsn>,
}

/// Held while a branch is cut (see [`Bookkeeping::try_lock_branch`]): a cut whose holder
/// is gone is abandoned, and can be cleaned up and done again.
pub struct BranchLock {
    _session: sqlx::PgConnection,
}

impl Bookkeeping {
    /// Records a new branch, `requested` from the connector's pipeline or already
    /// `cutting` by the caller; `false` when a branch of that name is recorded already.
    pub async fn request_branch(
        &self,
        name: &BranchName,
        connector: ConnectorId,
        connector_name: &str,
        state: BranchState,
    ) -> Result<bool, Error> {
        let inserted = sqlx::query(
            "INSERT INTO tributary.branches (name, connector_id, connector_name, state)
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.as_str())
        .bind(connector.0)
        .bind(connector_name)
        .bind(state.as_str())
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Records a branch whose cut waits for a position its requester names (see
    /// [`Hold`]); `false` when a branch of that name is recorded already.
    pub async fn request_held_branch(
        &self,
        name: &BranchName,
        connector: ConnectorId,
        connector_name: &str,
    ) -> Result<bool, Error> {
        let inserted = sqlx::query(
            "INSERT INTO tributary.branches (name, connector_id, connector_name, hold)
             VALUES ($1, $2, $3, true) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.as_str())
        .bind(connector.0)
        .bind(connector_name)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Where a held cut stands; `None` when the branch is gone or was not requested so.
    pub async fn branch_hold(&self, name: &BranchName) -> Result<Option<Hold>, Error> {
        let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT held_at::text, cut_at::text FROM tributary.branches
             WHERE name = $1 AND hold",
        )
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let lsn = |text: Option<String>| {
            text.map(|t| {
                t.parse()
                    .map_err(|_| Error::Corrupt(format!("branch hold LSN {t:?}")))
            })
            .transpose()
        };
        row.map(|(held_at, cut_at)| {
            Ok(Hold {
                held_at: lsn(held_at)?,
                cut_at: lsn(cut_at)?,
            })
        })
        .transpose()
    }

    /// The pipeline stands still at `lsn` for a held cut.
    pub async fn branch_held(&self, name: &BranchName, lsn: Lsn) -> Result<(), Error> {
        self.set_hold_position(name, "held_at", lsn).await
    }

    /// The requester names the position to cut a held branch at.
    pub async fn cut_held_branch_at(&self, name: &BranchName, lsn: Lsn) -> Result<(), Error> {
        self.set_hold_position(name, "cut_at", lsn).await
    }

    async fn set_hold_position(
        &self,
        name: &BranchName,
        column: &str,
        lsn: Lsn,
    ) -> Result<(), Error> {
        sqlx::query(&format!(
            "UPDATE tributary.branches SET {column} = $2::pg_lsn WHERE name = $1 AND hold"
        ))
        .bind(name.as_str())
        .bind(lsn.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims a requested branch for cutting; `false` when it is no longer requested
    /// (withdrawn, or claimed already).
    pub async fn claim_branch(&self, name: &BranchName) -> Result<bool, Error> {
        let claimed = sqlx::query(
            "UPDATE tributary.branches SET state = 'cutting'
             WHERE name = $1 AND state = 'requested'",
        )
        .bind(name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    /// The connector's branches left `cutting` by a pipeline run that ended meanwhile.
    pub async fn abandoned_cuts(&self, connector: ConnectorId) -> Result<Vec<BranchName>, Error> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM tributary.branches WHERE connector_id = $1 AND state = 'cutting'",
        )
        .bind(connector.0)
        .fetch_all(&self.pool)
        .await?;
        branch_names(names)
    }

    /// Asks again for a branch that is not being made (`branch reset`, or a cut that was
    /// abandoned), in `state` as for [`Bookkeeping::request_branch`]; `false` when it is
    /// requested or being cut already.
    pub async fn rerequest_branch(
        &self,
        name: &BranchName,
        state: BranchState,
    ) -> Result<bool, Error> {
        let updated = sqlx::query(
            "UPDATE tributary.branches
             SET state = $2, lsn = NULL, pause_ms = NULL, size_bytes = NULL, error = NULL,
                 created_at = NULL, requested_at = now()
             WHERE name = $1 AND state IN ('copied', 'ready', 'failed')",
        )
        .bind(name.as_str())
        .bind(state.as_str())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Puts an abandoned cut back to `requested` (its holder is gone, its partial copy
    /// dropped).
    pub async fn requeue_branch(&self, name: &BranchName) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tributary.branches SET state = 'requested'
             WHERE name = $1 AND state = 'cutting'",
        )
        .bind(name.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes the lock whoever cuts a branch holds, on a session of its own: released when
    /// the [`BranchLock`] is dropped, or when its holder dies. `None` when another holds it.
    pub async fn try_lock_branch(&self, name: &BranchName) -> Result<Option<BranchLock>, Error> {
        self.try_advisory_lock("tributary.branch:", name).await
    }

    /// Takes the lock a command making a branch (`create`, `reset`) holds from its first
    /// look until the branch is ready, as [`Bookkeeping::try_lock_branch`]: a branch not
    /// ready whose maker's lock is free will never be finished by it.
    pub async fn try_lock_branch_making(
        &self,
        name: &BranchName,
    ) -> Result<Option<BranchLock>, Error> {
        self.try_advisory_lock("tributary.branch-making:", name)
            .await
    }

    async fn try_advisory_lock(
        &self,
        prefix: &str,
        name: &BranchName,
    ) -> Result<Option<BranchLock>, Error> {
        let mut session = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext($1 || $2))",
        )
        .bind(prefix)
        .bind(name.as_str())
        .fetch_one(&mut session)
        .await?;
        Ok(locked.then_some(BranchLock { _session: session }))
    }

    /// The connector's branches waiting for its pipeline, oldest first.
    pub async fn requested_branches(
        &self,
        connector: ConnectorId,
    ) -> Result<Vec<BranchName>, Error> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM tributary.branches
             WHERE connector_id = $1 AND state = 'requested' ORDER BY requested_at, name",
        )
        .bind(connector.0)
        .fetch_all(&self.pool)
        .await?;
        branch_names(names)
    }

    /// The outcome of a cut: copied at `lsn` after a pause, or failed. `false` when the
    /// branch is no longer being cut (deleted meanwhile): the copy is then nobody's.
    pub async fn branch_cut(
        &self,
        name: &BranchName,
        outcome: Result<(Lsn, Duration), String>,
    ) -> Result<bool, Error> {
        let (state, lsn, pause_ms, error) = match outcome {
            Ok((lsn, pause)) => (
                BranchState::Copied,
                Some(lsn.to_string()),
                Some(i64::try_from(pause.as_millis()).unwrap_or(i64::MAX)),
                None,
            ),
            Err(error) => (BranchState::Failed, None, None, Some(error)),
        };
        let updated = sqlx::query(
            "UPDATE tributary.branches
             SET state = $2, lsn = $3::pg_lsn, pause_ms = $4, error = $5,
                 created_at = CASE WHEN $2 = 'copied' THEN now() END
             WHERE name = $1 AND state = 'cutting'",
        )
        .bind(name.as_str())
        .bind(state.as_str())
        .bind(lsn)
        .bind(pause_ms)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Withdraws a request nobody has claimed; `false` when it was claimed meanwhile.
    pub async fn withdraw_branch(&self, name: &BranchName) -> Result<bool, Error> {
        let deleted =
            sqlx::query("DELETE FROM tributary.branches WHERE name = $1 AND state = 'requested'")
                .bind(name.as_str())
                .execute(&self.pool)
                .await?;
        Ok(deleted.rows_affected() == 1)
    }

    /// The branch is handed to the user; `size_bytes` is its database's size then.
    pub async fn branch_ready(&self, name: &BranchName, size_bytes: i64) -> Result<(), Error> {
        sqlx::query(
            "UPDATE tributary.branches SET state = 'ready', error = NULL, size_bytes = $2
             WHERE name = $1",
        )
        .bind(name.as_str())
        .bind(size_bytes)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn branch(&self, name: &BranchName) -> Result<Option<Branch>, Error> {
        let row: Option<BranchRow> = sqlx::query_as(&format!(
            "SELECT {BRANCH_COLUMNS} FROM tributary.branches WHERE name = $1"
        ))
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(branch).transpose()
    }

    /// Every branch, or the connector's, ordered by name.
    pub async fn branches(&self, connector: Option<ConnectorId>) -> Result<Vec<Branch>, Error> {
        let rows: Vec<BranchRow> = sqlx::query_as(&format!(
            "SELECT {BRANCH_COLUMNS} FROM tributary.branches
             WHERE $1::int8 IS NULL OR connector_id = $1 ORDER BY name"
        ))
        .bind(connector.map(|c| c.0))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(branch).collect()
    }

    /// Records who the branch's URL logs in as, with the password of a role of its own
    /// (sealed: never stored in clear). Recorded once the role exists, so a role is only
    /// ever dropped with its branch if tributary created it.
    pub async fn set_branch_access(
        &self,
        name: &BranchName,
        access: &BranchAccess,
        password: Option<&Password>,
    ) -> Result<(), Error> {
        let sealed = match password {
            Some(password) => Some(
                self.keys
                    .seal(
                        &self.pool,
                        password.expose().as_bytes(),
                        &branch_password_aad(name.as_str()),
                    )
                    .await?,
            ),
            None => None,
        };
        let created = match access {
            BranchAccess::StoreRole => None,
            BranchAccess::OwnRole(_) => Some(true),
            BranchAccess::Owner(_) => Some(false),
        };
        sqlx::query(
            "UPDATE tributary.branches
             SET role_name = $2, role_created = $3, password_ciphertext = $4
             WHERE name = $1",
        )
        .bind(name.as_str())
        .bind(access.role().map(RoleName::as_str))
        .bind(created)
        .bind(sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The password of the branch's own role; `None` for other access. Hand it to the
    /// branch's user and nowhere else.
    pub async fn branch_password(&self, name: &BranchName) -> Result<Option<Password>, Error> {
        let sealed: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT password_ciphertext FROM tributary.branches WHERE name = $1",
        )
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let cipher = self.keys.opening(&self.pool).await?;
        let Ok(plaintext) = cipher.open(&sealed, &branch_password_aad(name.as_str())) else {
            self.keys.recheck(&self.pool, cipher).await?;
            return Err(Error::DecryptBranchPassword {
                branch: name.clone(),
                key_origin: cipher.source().to_string(),
            });
        };
        String::from_utf8(plaintext)
            .map(|text| Some(Password::new(text)))
            .map_err(|_| Error::Corrupt(format!("password of branch {name}")))
    }

    /// Removes the branch's row; the last thing sealed with the key takes its fingerprint
    /// with it (`connectors.rs`: `forget_key_if_unused`).
    pub async fn forget_branch(&self, name: &BranchName) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM tributary.branches WHERE name = $1")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await?;
        super::connectors::forget_key_if_unused(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
