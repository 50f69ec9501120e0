//! Connectors and what is recorded about them: state, source identity, apply lag, and the
//! history of states (their tables are in `tables.rs`).
//!
//! Every change to a connector row is announced on [`super::NOTIFY_CHANNEL`] by a trigger,
//! so nothing here notifies by hand. Counters and state changes that belong together are
//! written in one transaction (`set_state` updates the row and appends the history).

use chrono::{DateTime, Utc};

use super::leases::hold_lease;
use super::secrets::SOURCE_URL_AAD;
use super::store::open_pool;
use super::tables::{insert_decisions, TableDecision};
use super::{counter, Bookkeeping, Error};
use crate::change::TableName;
use crate::pg::conninfo::mask_password;
use crate::pg::ConnInfo;
use crate::state::PipelineState;
use crate::types::{ConnectorId, ConnectorName, FencingToken, SlotName};

/// A connector as recorded. The source URL itself is not here (it is encrypted at rest):
/// ask [`Bookkeeping::source_url`] for it, and show [`Connector::source_display`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connector {
    pub id: ConnectorId,
    pub name: ConnectorName,
    /// The source URL with its password masked.
    pub source_display: String,
    /// The source schemas to replicate.
    pub schemas: Vec<String>,
    pub enabled: bool,
    pub slot_name: SlotName,
    /// Whether this installation may have created the slot (it is set before the pipeline
    /// creates it): a slot by that name that exists while this is false is someone else's.
    pub slot_created: bool,
    pub replica_database: String,
    pub state: PipelineState,
    /// With `Failed` (or a transient error being retried): what went wrong…
    pub last_error: Option<String>,
    /// …and what the operator should do about it.
    pub next_step: Option<String>,
    /// The source's identity as recorded at setup ([`Bookkeeping::record_source`]); `None`
    /// before the first setup.
    pub system_id: Option<String>,
    pub timeline: Option<u32>,
    pub source_database: Option<String>,
    /// `connector retry-setup` asked for a new snapshot; cleared when it starts.
    pub resnapshot_requested: bool,
    /// The connector used when a command's `--connector` is omitted.
    pub active: bool,
    /// Extensions that branches leave out (`connector update --drop-extensions`).
    pub drop_extensions: Vec<String>,
    /// Whether tables created later in the selected schemas are replicated.
    pub include_new_tables: bool,
    /// The operator accepts that NaN and ±Infinity arrive as NULL where the source's
    /// wal2json cannot send them (before 2.6); see `pipeline::nan`.
    pub nan_as_null: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What [`Bookkeeping::request_setup`] changes.
#[derive(Debug, Default)]
pub struct SetupChange<'a> {
    /// Replaces every decision about tables without a usable replica identity.
    pub decisions: Option<&'a [(TableName, TableDecision)]>,
    /// Replaces the selected schemas (with `restart`).
    pub schemas: Option<&'a [String]>,
    /// Puts the connector back in `pending`; without it only the decisions are recorded.
    pub restart: bool,
    /// The next setup takes a new snapshot (drops the slot and rebuilds the replica).
    pub resnapshot: bool,
    /// Tables the next setup copies again (`connector resync`), the others streaming on.
    pub resync: &'a [TableName],
    /// The NaN decision (`--nan-as-null`), recorded in the request's transaction: written
    /// before it, the change alone would restart the pipeline, and the request would then
    /// find setup in progress.
    pub nan_as_null: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupRequest {
    /// Back in `pending`: a running daemon sets it up again.
    Restarted,
    /// Decisions recorded, the pipeline left as it is.
    Recorded,
    /// Setup is running (this state): nothing was changed.
    InProgress(PipelineState),
}

/// What [`Bookkeeping::apply_lag`] returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApplyLag {
    pub seconds: f64,
    /// How long ago it was measured.
    pub age_seconds: f64,
    /// Changes applied by the measuring daemon's pipeline since it started.
    pub changes: u64,
    /// When, in seconds since 1970.
    pub measured_at: f64,
}

/// Why a pipeline stopped, for [`Bookkeeping::set_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    /// What the operator should do next, in one sentence.
    pub next_step: String,
}

/// One entry of a connector's history: the state it was put in, and from which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// `None` for the entry written when the connector was created.
    pub from: Option<PipelineState>,
    pub to: PipelineState,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// The columns of [`ConnectorRow`]. Timestamps are read as whole microseconds since the
/// epoch (exact, and needs no sqlx feature for chrono).
const CONNECTOR_COLUMNS: &str = "id, name, source_display, schemas, enabled, slot_name, \
     slot_created, replica_database, state, last_error, next_step, system_id, timeline, \
     source_database, resnapshot_requested, active, drop_extensions, include_new_tables, \
     nan_as_null, \
     (extract(epoch FROM created_at) * 1000000)::int8 AS created_us, \
     (extract(epoch FROM updated_at) * 1000000)::int8 AS updated_us";

#[derive(sqlx::FromRow)]
struct ConnectorRow {
    id: i64,
    name: String,
    source_display: String,
    schemas: Vec<String>,
    enabled: bool,
    slot_name: String,
    slot_created: bool,
    replica_database: String,
    state: String,
    last_error: Option<String>,
    next_step: Option<String>,
    system_id: Option<String>,
    timeline: Option<i64>,
    source_database: Option<String>,
    resnapshot_requested: bool,
    active: bool,
    drop_extensions: Vec<String>,
    include_new_tables: bool,
    nan_as_null: bool,
    created_us: i64,
    updated_us: i64,
}

impl TryFrom<ConnectorRow> for Connector {
    type Error = Error;

    fn try_from(row: ConnectorRow) -> Result<Connector, Error> {
        let corrupt = |what: String| Error::Corrupt(what);
        Ok(Connector {
            id: ConnectorId(row.id),
            name: ConnectorName::new(row.name).map_err(|e| corrupt(e.to_string()))?,
            source_display: row.source_display,
            schemas: row.schemas,
            enabled: row.enabled,
            slot_name: SlotName::new(row.slot_name).map_err(|e| corrupt(e.to_string()))?,
            slot_created: row.slot_created,
            replica_database: row.replica_database,
            state: parse_state(&row.state)?,
            last_error: row.last_error,
            next_step: row.next_step,
            system_id: row.system_id,
            timeline: row
                .timeline
                .map(|t| u32::try_from(t).map_err(|_| corrupt(format!("timeline {t}"))))
                .transpose()?,
            source_database: row.source_database,
            resnapshot_requested: row.resnapshot_requested,
            active: row.active,
            drop_extensions: row.drop_extensions,
            include_new_tables: row.include_new_tables,
            nan_as_null: row.nan_as_null,
            created_at: timestamp(row.created_us)?,
            updated_at: timestamp(row.updated_us)?,
        })
    }
}

impl Bookkeeping {
    /// Records a new connector in state `pending`, enabled, with a history entry. The URL
    /// must parse as a connection URL; it is stored encrypted, and masked for display.
    pub async fn create_connector(
        &self,
        name: &ConnectorName,
        source_url: &str,
        schemas: &[String],
    ) -> Result<Connector, Error> {
        self.create_connector_with_decisions(name, source_url, schemas, &[], false)
            .await
    }

    /// [`Bookkeeping::create_connector`], recording in the same transaction the decisions
    /// about tables without a usable replica identity, and whether NaN may arrive as NULL.
    pub async fn create_connector_with_decisions(
        &self,
        name: &ConnectorName,
        source_url: &str,
        schemas: &[String],
        decisions: &[(TableName, TableDecision)],
        nan_as_null: bool,
    ) -> Result<Connector, Error> {
        ConnInfo::parse(source_url)?;
        let mut tx = self.pool.begin().await?;
        let ciphertext = self
            .keys
            .seal_source_url(&self.pool, &mut tx, source_url)
            .await?;
        // The id first: the slot name carries it (and this installation's id).
        let id: i64 = sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('tributary.connectors', 'id'))",
        )
        .fetch_one(&mut *tx)
        .await?;
        let id = ConnectorId(id);
        let inserted = sqlx::query_as::<_, ConnectorRow>(&format!(
            "INSERT INTO tributary.connectors
                 (id, name, source_url_ciphertext, source_display, schemas, slot_name,
                  replica_database, state, active, nan_as_null)
             OVERRIDING SYSTEM VALUE
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending',
                     NOT EXISTS (SELECT FROM tributary.connectors WHERE active), $8)
             RETURNING {CONNECTOR_COLUMNS}"
        ))
        .bind(id.0)
        .bind(name.as_str())
        .bind(ciphertext)
        .bind(mask_password(source_url))
        .bind(schemas)
        .bind(name.slot_name(self.installation(), id).as_str())
        .bind(name.replica_database())
        .bind(nan_as_null)
        .fetch_one(&mut *tx)
        .await;
        let row = match inserted {
            Ok(row) => row,
            Err(e)
                if violates(
                    &e,
                    &["connectors_name_key", "connectors_replica_database_key"],
                ) =>
            {
                return Err(Error::NameTaken(name.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        sqlx::query(
            "INSERT INTO tributary.state_history (connector_id, from_state, to_state)
             VALUES ($1, NULL, 'pending')",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        insert_decisions(&mut tx, id, decisions).await?;
        tx.commit().await?;
        tracing::info!(connector = %name, id = %id, "connector created");
        row.try_into()
    }

    /// Every connector, ordered by name.
    pub async fn connectors(&self) -> Result<Vec<Connector>, Error> {
        sqlx::query_as::<_, ConnectorRow>(&format!(
            "SELECT {CONNECTOR_COLUMNS} FROM tributary.connectors ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Connector::try_from)
        .collect()
    }

    /// Every connector recorded on `store`, ordered by name, read without migrating,
    /// creating a key or decrypting anything: for `connector preflight`, which must leave
    /// no trace. Empty when the bookkeeping schema does not exist yet.
    pub async fn peek_connectors(store: &ConnInfo) -> Result<Vec<Connector>, Error> {
        let session = open_pool(store, 1).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT pg_catalog.to_regclass('tributary.connectors') IS NOT NULL")
                .fetch_one(&session)
                .await?;
        let rows = if exists {
            sqlx::query_as::<_, ConnectorRow>(&format!(
                "SELECT {CONNECTOR_COLUMNS} FROM tributary.connectors ORDER BY name"
            ))
            .fetch_all(&session)
            .await?
        } else {
            Vec::new()
        };
        session.close().await;
        rows.into_iter().map(Connector::try_from).collect()
    }

    pub async fn connector(&self, name: &ConnectorName) -> Result<Option<Connector>, Error> {
        sqlx::query_as::<_, ConnectorRow>(&format!(
            "SELECT {CONNECTOR_COLUMNS} FROM tributary.connectors WHERE name = $1"
        ))
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(Connector::try_from)
        .transpose()
    }

    pub async fn connector_by_id(&self, id: ConnectorId) -> Result<Option<Connector>, Error> {
        sqlx::query_as::<_, ConnectorRow>(&format!(
            "SELECT {CONNECTOR_COLUMNS} FROM tributary.connectors WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .map(Connector::try_from)
        .transpose()
    }

    /// The connector's source URL, password included, as sealed ([`Bookkeeping::source`]
    /// hands it out parsed).
    pub(super) async fn source_url(&self, connector: &Connector) -> Result<String, Error> {
        let ciphertext: Vec<u8> = sqlx::query_scalar(
            "SELECT source_url_ciphertext FROM tributary.connectors WHERE id = $1",
        )
        .bind(connector.id.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(Error::NotFound(connector.id))?;
        let cipher = self.keys.opening(&self.pool).await?;
        let Ok(plaintext) = cipher.open(&ciphertext, SOURCE_URL_AAD) else {
            self.keys.recheck(&self.pool, cipher).await?;
            return Err(Error::Decrypt {
                connector: connector.name.clone(),
                key_origin: cipher.source().to_string(),
            });
        };
        // Authentic plaintext is what create_connector sealed: a &str.
        String::from_utf8(plaintext)
            .map_err(|_| Error::Corrupt(format!("source URL of connector {}", connector.name)))
    }

    /// Removes the connector with its tables and history. The slot and the replica
    /// database are the caller's to drop, before. The last thing sealed with the key takes
    /// its fingerprint with it ([`forget_key_if_unused`]).
    pub async fn delete_connector(&self, id: ConnectorId) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM tributary.connectors WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(Error::NotFound(id));
        }
        forget_key_if_unused(&mut tx).await?;
        tx.commit().await?;
        tracing::info!(id = %id, "connector deleted");
        Ok(())
    }

    /// Puts the connector in `state` and appends the change to its history, in one
    /// transaction. `last_error` and `next_step` come from `failure`, and are cleared
    /// without one. Entering `snapshotting` answers a request for a new snapshot. Only
    /// the holder of the connector's lease (`lease`) may: anyone else gets
    /// [`Error::LeaseLost`], so a daemon that lost the connector cannot overwrite what the
    /// new owner recorded.
    pub async fn set_state(
        &self,
        id: ConnectorId,
        lease: FencingToken,
        state: PipelineState,
        failure: Option<&Failure>,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        hold_lease(&mut tx, id, lease).await?;
        let from: String =
            sqlx::query_scalar("SELECT state FROM tributary.connectors WHERE id = $1")
                .bind(id.0)
                .fetch_one(&mut *tx)
                .await?;
        record_state(&mut tx, id, &from, state, failure).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Asks the pipeline to set the connector up again (`connector retry-setup`, and
    /// `connector update --schemas`): in one transaction, unless setup is in progress
    /// (`validating` or `snapshotting` without an error being retried:
    /// [`SetupRequest::InProgress`], nothing changed),
    /// replaces the decisions and schemas given, and puts the
    /// connector back in `pending`, asking for a new snapshot when `resnapshot`. A running
    /// daemon restarts the pipeline on the change.
    pub async fn request_setup(
        &self,
        id: ConnectorId,
        change: &SetupChange<'_>,
    ) -> Result<SetupRequest, Error> {
        let mut tx = self.pool.begin().await?;
        let (from, failing): (String, bool) = sqlx::query_as(
            "SELECT state, last_error IS NOT NULL FROM tributary.connectors
              WHERE id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound(id))?;
        let state = parse_state(&from)?;
        if state.is_setting_up() && !failing {
            return Ok(SetupRequest::InProgress(state));
        }
        if let Some(accepted) = change.nan_as_null {
            sqlx::query("UPDATE tributary.connectors SET nan_as_null = $2 WHERE id = $1")
                .bind(id.0)
                .bind(accepted)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(decisions) = change.decisions {
            sqlx::query("DELETE FROM tributary.table_decisions WHERE connector_id = $1")
                .bind(id.0)
                .execute(&mut *tx)
                .await?;
            insert_decisions(&mut tx, id, decisions).await?;
        }
        if !change.restart {
            tx.commit().await?;
            return Ok(SetupRequest::Recorded);
        }
        sqlx::query(
            "UPDATE tributary.connectors
             SET schemas = coalesce($2, schemas),
                 resnapshot_requested = resnapshot_requested OR $3
             WHERE id = $1",
        )
        .bind(id.0)
        .bind(change.schemas)
        .bind(change.resnapshot)
        .execute(&mut *tx)
        .await?;
        if !change.resync.is_empty() {
            let schemas: Vec<&str> = change.resync.iter().map(|t| t.schema.as_str()).collect();
            let names: Vec<&str> = change.resync.iter().map(|t| t.name.as_str()).collect();
            sqlx::query(
                "UPDATE tributary.connector_tables t
                 SET sync_state = 'pending', problem = NULL, next_step = NULL
                 FROM unnest($2::text[], $3::text[]) AS r (schema_name, table_name)
                 WHERE t.connector_id = $1
                   AND (t.schema_name, t.table_name) = (r.schema_name, r.table_name)",
            )
            .bind(id.0)
            .bind(&schemas)
            .bind(&names)
            .execute(&mut *tx)
            .await?;
        }
        record_state(&mut tx, id, &from, PipelineState::Pending, None).await?;
        tx.commit().await?;
        tracing::info!(id = %id, resnapshot = change.resnapshot, "setup requested");
        Ok(SetupRequest::Restarted)
    }

    /// Makes `id` the active connector (and no other).
    pub async fn set_active(&self, id: ConnectorId) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE tributary.connectors SET active = false WHERE active AND id <> $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        let updated = sqlx::query("UPDATE tributary.connectors SET active = true WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        found(updated.rows_affected(), id)?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets the options that need no new setup; `None` leaves one as it is.
    pub async fn update_options(
        &self,
        id: ConnectorId,
        drop_extensions: Option<&[String]>,
        include_new_tables: Option<bool>,
        nan_as_null: Option<bool>,
    ) -> Result<(), Error> {
        let updated = sqlx::query(
            "UPDATE tributary.connectors
             SET drop_extensions = coalesce($2, drop_extensions),
                 include_new_tables = coalesce($3, include_new_tables),
                 nan_as_null = coalesce($4, nan_as_null)
             WHERE id = $1",
        )
        .bind(id.0)
        .bind(drop_extensions)
        .bind(include_new_tables)
        .bind(nan_as_null)
        .execute(&self.pool)
        .await?;
        found(updated.rows_affected(), id)
    }

    /// The pipeline's first step: puts the connector in `validating`, unless it changed
    /// since `seen` was read (a request for setup, a disable or a delete came in between)
    /// or is disabled. `false` then: the pipeline stops, and the supervisor starts it again
    /// from the current row if it should run.
    pub async fn begin_run(&self, seen: &Connector) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        type Row = (String, bool, i64, Option<String>, Option<String>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT state, enabled, (extract(epoch FROM updated_at) * 1000000)::int8,
                    last_error, next_step
               FROM tributary.connectors WHERE id = $1 FOR UPDATE",
        )
        .bind(seen.id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((from, enabled, updated_us, last_error, next_step)) = row else {
            return Ok(false);
        };
        if !enabled || timestamp(updated_us)? != seen.updated_at {
            return Ok(false);
        }
        // A run that retries after an error keeps showing it until the run gets further
        // (or fails again): `status` must not call a retrying connector healthy meanwhile.
        let retrying = last_error.map(|error| Failure {
            error,
            next_step: next_step.unwrap_or_default(),
        });
        record_state(&mut tx, seen.id, &from, PipelineState::Validating, None).await?;
        if let Some(failure) = retrying {
            sqlx::query(
                "UPDATE tributary.connectors SET last_error = $2, next_step = NULLIF($3, '')
                 WHERE id = $1",
            )
            .bind(seen.id.0)
            .bind(&failure.error)
            .bind(&failure.next_step)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Turns a connector on or off. Turning one on that the supervisor had marked
    /// `stopped` puts it back in `pending`, so that it runs again.
    pub async fn set_enabled(&self, id: ConnectorId, enabled: bool) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let from: String = sqlx::query_scalar(
            "UPDATE tributary.connectors SET enabled = $2 WHERE id = $1
             RETURNING state",
        )
        .bind(id.0)
        .bind(enabled)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Error::NotFound(id))?;
        if enabled && from == PipelineState::Stopped.as_str() {
            record_state(&mut tx, id, &from, PipelineState::Pending, None).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records the apply lag the daemon measured for the connector, and how many changes
    /// it has applied for it so far.
    pub async fn record_apply_lag(
        &self,
        id: ConnectorId,
        seconds: f64,
        changes: u64,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO tributary.apply_lag (connector_id, seconds, changes) VALUES ($1, $2, $3)
             ON CONFLICT (connector_id)
             DO UPDATE SET seconds = excluded.seconds, changes = excluded.changes,
                           measured_at = now()",
        )
        .bind(id.0)
        .bind(seconds.max(0.0))
        .bind(counter(changes))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last apply lag recorded for the connector.
    pub async fn apply_lag(&self, id: ConnectorId) -> Result<Option<ApplyLag>, Error> {
        let row: Option<(f64, f64, i64, f64)> = sqlx::query_as(
            "SELECT seconds, extract(epoch FROM now() - measured_at)::float8, changes,
                    extract(epoch FROM measured_at)::float8
               FROM tributary.apply_lag WHERE connector_id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(seconds, age, changes, at)| ApplyLag {
            seconds,
            age_seconds: age,
            changes: u64::try_from(changes).unwrap_or(0),
            measured_at: at,
        }))
    }

    /// Records an error the pipeline will retry by itself: the state stays as it is and no
    /// history entry is written, so retries do not flood the history. Under the lease, like
    /// [`Bookkeeping::set_state`].
    pub async fn record_error(
        &self,
        id: ConnectorId,
        lease: FencingToken,
        failure: &Failure,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        hold_lease(&mut tx, id, lease).await?;
        let updated = sqlx::query(
            "UPDATE tributary.connectors SET last_error = $2, next_step = $3 WHERE id = $1",
        )
        .bind(id.0)
        .bind(&failure.error)
        .bind(&failure.next_step)
        .execute(&mut *tx)
        .await?;
        found(updated.rows_affected(), id)?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the source's identity as seen at setup (`IDENTIFY_SYSTEM`'s system id and
    /// timeline, and the database), to be compared with what later connections see.
    pub async fn record_source(
        &self,
        id: ConnectorId,
        system_id: &str,
        timeline: u32,
        database: &str,
    ) -> Result<(), Error> {
        let updated = sqlx::query(
            "UPDATE tributary.connectors SET system_id = $2, timeline = $3, source_database = $4
             WHERE id = $1",
        )
        .bind(id.0)
        .bind(system_id)
        .bind(i64::from(timeline))
        .bind(database)
        .execute(&self.pool)
        .await?;
        found(updated.rows_affected(), id)
    }

    /// Records, before the pipeline creates it, that this installation may have created
    /// the connector's slot, now named `slot` (a connector with a legacy slot name moves to
    /// one carrying the installation when it needs a new slot). Under the lease, like
    /// [`Bookkeeping::set_state`].
    pub async fn prepare_slot(
        &self,
        id: ConnectorId,
        lease: FencingToken,
        slot: &SlotName,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        hold_lease(&mut tx, id, lease).await?;
        sqlx::query(
            "UPDATE tributary.connectors SET slot_name = $2, slot_created = true WHERE id = $1",
        )
        .bind(id.0)
        .bind(slot.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The connector's state changes, oldest first.
    pub async fn history(&self, id: ConnectorId) -> Result<Vec<StateChange>, Error> {
        let rows: Vec<(Option<String>, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT from_state, to_state, error, (extract(epoch FROM at) * 1000000)::int8
             FROM tributary.state_history
             WHERE connector_id = $1
             ORDER BY id",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(from, to, error, at)| {
                Ok(StateChange {
                    from: from.as_deref().map(parse_state).transpose()?,
                    to: parse_state(&to)?,
                    error,
                    at: timestamp(at)?,
                })
            })
            .collect()
    }
}

/// Within `tx`: forgets the key's fingerprint once nothing sealed with the key is left (no
/// connector's source URL, no branch's password), so that the next `connector create` may
/// seal with a new key: the way out after a lost key (see `keys.rs`). A branch password
/// still sealed keeps it, or `branch url` could never open it again.
pub(super) async fn forget_key_if_unused(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE tributary.installation SET key_fingerprint = NULL
          WHERE NOT EXISTS (SELECT FROM tributary.connectors)
            AND NOT EXISTS (SELECT FROM tributary.branches
                             WHERE password_ciphertext IS NOT NULL)",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Within `tx`, which has locked the row: moves the connector from `from` to `state`, sets
/// or clears the error, answers a request for a new snapshot when entering
/// `snapshotting`, and appends the history entry.
async fn record_state(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: ConnectorId,
    from: &str,
    state: PipelineState,
    failure: Option<&Failure>,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE tributary.connectors SET state = $2, last_error = $3, next_step = $4,
             resnapshot_requested = resnapshot_requested AND $2 <> 'snapshotting'
         WHERE id = $1",
    )
    .bind(id.0)
    .bind(state.as_str())
    .bind(failure.map(|f| f.error.as_str()))
    .bind(failure.map(|f| f.next_step.as_str()))
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO tributary.state_history (connector_id, from_state, to_state, error)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(id.0)
    .bind(from)
    .bind(state.as_str())
    .bind(failure.map(|f| f.error.as_str()))
    .execute(&mut **tx)
    .await?;
    tracing::debug!(id = %id, from = %from, to = %state, "connector state changed");
    Ok(())
}

fn parse_state(text: &str) -> Result<PipelineState, Error> {
    text.parse()
        .map_err(|e: crate::state::UnknownState| Error::Corrupt(e.to_string()))
}

pub(super) fn timestamp(micros: i64) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| Error::Corrupt(format!("timestamp of {micros} µs since 1970")))
}

pub(super) fn found(rows_affected: u64, id: ConnectorId) -> Result<(), Error> {
    if rows_affected == 0 {
        Err(Error::NotFound(id))
    } else {
        Ok(())
    }
}

/// Whether `e` is a unique violation of one of `constraints`.
fn violates(e: &sqlx::Error, constraints: &[&str]) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code().as_deref() == Some("23505")
        && db.constraint().is_some_and(|c| constraints.contains(&c))
}
