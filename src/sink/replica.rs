//! The replica database's life cycle on the branch store, its progress table, and the
//! settings of an apply session.
//!
//! ```text
//! branch-store server
//!   ├─ <control database>        store.url's database: bookkeeping (not touched here)
//!   └─ <connector>_replica       created by prepare_replica from template0
//!        ├─ the source's tables  restored by the snapshot, kept in sync by ReplicaSink
//!        ├─ tributary.applied    one row: the source LSN the replica holds everything up to
//!        ├─ tributary.lease      one row: the fencing token of the pipeline that owns it
//!        ├─ tributary.source_tables   each table's OID on the source, as of that LSN
//!        ├─ tributary.snapshot   one row: the snapshot's slot and start (`sync.rs`)
//!        └─ tributary.table_sync      per table: the position its copy is exact at
//! ```
//!
//! The progress row is written in the same transaction as the data it covers, so after any
//! crash the replica states exactly which source commit it equals. Branches are templates
//! of the replica and carry the row with them: it is the LSN a branch represents.
//!
//! Fencing: a pipeline claims the replica with its lease's token ([`claim`]) before it
//! writes anything, and every target transaction starts by locking the lease row and
//! checking that the token is still its own. A daemon that lost its lease (paused, cut off
//! from the bookkeeping) and comes back finds a larger token there and cannot commit; a
//! claim waits for the transaction in flight, so the two never interleave.

use crate::pg::{self, ConnInfo, PgClient};

use super::error::SinkError;
use super::triggers;
use crate::change::TableName;
use crate::pg::quote_ident;
use crate::types::{FencingToken, Lsn};

/// The progress table: exactly one row (`singleton` is always true), written only by
/// [`super::ReplicaSink`].
const PROGRESS_DDL: &str = "\
    CREATE SCHEMA IF NOT EXISTS tributary;\n\
    CREATE TABLE IF NOT EXISTS tributary.applied (\n\
        singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),\n\
        lsn pg_lsn NOT NULL,\n\
        updated_at timestamptz NOT NULL DEFAULT now()\n\
    );\n\
    COMMENT ON TABLE tributary.applied IS \
        'tributary: the source LSN up to which this database holds every change; \
         written in the same transaction as the changes';\n\
    CREATE TABLE IF NOT EXISTS tributary.source_tables (\n\
        schema_name text NOT NULL,\n\
        table_name text NOT NULL,\n\
        source_oid oid NOT NULL UNIQUE,\n\
        PRIMARY KEY (schema_name, table_name)\n\
    );\n\
    COMMENT ON TABLE tributary.source_tables IS \
        'tributary: the OID each table has on the source: a table dropped and re-created \
         there has another';\n\
    CREATE TABLE IF NOT EXISTS tributary.lease (\n\
        singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),\n\
        token bigint NOT NULL,\n\
        claimed_at timestamptz NOT NULL DEFAULT now()\n\
    );\n\
    COMMENT ON TABLE tributary.lease IS \
        'tributary: the fencing token of the connector lease whose pipeline writes here; \
         a transaction of a smaller token is refused';\n\
    CREATE TABLE IF NOT EXISTS tributary.snapshot (\n\
        singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),\n\
        slot_name text NOT NULL,\n\
        consistent_point pg_lsn NOT NULL,\n\
        schema_dump bytea,\n\
        schema_list text,\n\
        post_data_restored bool NOT NULL DEFAULT false,\n\
        started_at timestamptz NOT NULL DEFAULT now()\n\
    );\n\
    COMMENT ON TABLE tributary.snapshot IS \
        'tributary: the snapshot this replica was made by: its slot, the position streaming \
         starts from, and the schema archive until its post-data is restored';\n\
    CREATE TABLE IF NOT EXISTS tributary.table_sync (\n\
        schema_name text NOT NULL,\n\
        table_name text NOT NULL,\n\
        copied_lsn pg_lsn,\n\
        copies integer NOT NULL DEFAULT 0,\n\
        defined_lsn pg_lsn,\n\
        PRIMARY KEY (schema_name, table_name)\n\
    );\n\
    COMMENT ON TABLE tributary.table_sync IS \
        'tributary: per table, the source position its copy is exact at (null until the \
         copy committed, in the same transaction), how often it was copied, and for a table \
         added to a kept replica the position its definition was dumped at';";

/// Locks the lease row for the rest of the transaction and reads the fencing token and the
/// applied LSN: a claim by a newer owner (or a second writer, such as two connectors on one
/// replica by mistake) waits for this transaction instead of interleaving with it.
pub(crate) const READ_PROGRESS_SQL: &str = "\
    SELECT l.token, (SELECT a.lsn::text FROM tributary.applied a) \
      FROM tributary.lease l FOR UPDATE";

/// Writes the progress row; the WHERE keeps it from moving backwards (zero rows then).
pub(crate) const RECORD_PROGRESS_SQL: &str = "\
    INSERT INTO tributary.applied AS a (singleton, lsn, updated_at) \
    VALUES (true, $1::text::pg_lsn, now()) \
    ON CONFLICT (singleton) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = EXCLUDED.updated_at \
    WHERE a.lsn <= EXCLUDED.lsn";

/// Session settings of an apply session, before `session_replication_role`.
///
/// - `search_path = ''`: every name in the sink's SQL is qualified, and `format_type`
///   qualifies every type outside `pg_catalog`, so nothing depends on the path.
/// - The walsender's output settings (see `source/wal2json.rs`): `DateStyle`, `IntervalStyle`
///   (interval input depends on it), `TimeZone`, `extra_float_digits`, `bytea_output`, so
///   values compared in text form are rendered the same way on both sides.
/// - No timeouts: a large source transaction keeps the target transaction open, idle
///   between changes while the source decodes.
/// - `row_security = off`: a row-level security policy that would hide rows makes the
///   statement fail instead of silently changing nothing.
/// - `synchronous_commit`: at least `local`, since a commit must be durable before its
///   LSN is acknowledged to the source. A stricter server setting is kept.
const SESSION_SQL: &str = "\
    SET search_path = '';\n\
    SET DateStyle = 'ISO';\n\
    SET IntervalStyle = 'postgres';\n\
    SET TimeZone = 'UTC';\n\
    SET extra_float_digits = 3;\n\
    SET bytea_output = 'hex';\n\
    SET statement_timeout = 0;\n\
    SET lock_timeout = 0;\n\
    SET idle_in_transaction_session_timeout = 0;\n\
    SET default_transaction_read_only = off;\n\
    SET row_security = off;\n\
    SELECT pg_catalog.set_config('synchronous_commit', 'local', false) \
        WHERE pg_catalog.current_setting('synchronous_commit') = 'off';";

/// Whether the database `database` exists on the branch-store server.
pub async fn replica_exists(store: &ConnInfo, database: &str) -> Result<bool, SinkError> {
    let control = connect(store).await?;
    let row = control
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&database],
        )
        .await
        .map_err(setup(&store.dbname, "looking up the replica database"))?;
    Ok(row.is_some())
}

/// The replica's applied LSN; `None` when the replica does not exist or has none (its
/// snapshot never completed).
pub async fn replica_applied_lsn(
    store: &ConnInfo,
    database: &str,
) -> Result<Option<Lsn>, SinkError> {
    if !replica_exists(store, database).await? {
        return Ok(None);
    }
    let replica = connect(&store.with_dbname(database)).await?;
    read_applied_lsn(&replica, database).await
}

/// Claims the replica for `token` (see [`claim`]), if it exists, and returns its applied
/// LSN: what a pipeline does first, so that nothing it decides rests on a position a
/// previous owner could still move.
pub async fn claim_replica(
    store: &ConnInfo,
    database: &str,
    token: FencingToken,
) -> Result<Option<Lsn>, SinkError> {
    if !replica_exists(store, database).await? {
        return Ok(None);
    }
    let replica = connect(&store.with_dbname(database)).await?;
    claim(&replica, database, token).await?;
    read_applied_lsn(&replica, database).await
}

/// `pg_lsn` prints as `X/X`, which [`Lsn`] parses.
pub(super) fn parse_lsn(text: &str) -> Lsn {
    text.parse()
        .unwrap_or_else(|e| panic!("the server printed a pg_lsn tributary cannot read: {e}"))
}

/// The applied LSN as committed; `None` before the snapshot recorded one.
pub(crate) async fn read_applied_lsn(
    client: &PgClient,
    database: &str,
) -> Result<Option<Lsn>, SinkError> {
    let reading = setup(database, "reading the applied LSN");
    let row = client
        .query_one(
            "SELECT pg_catalog.to_regclass('tributary.applied') IS NOT NULL",
            &[],
        )
        .await
        .map_err(reading)?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT lsn::text FROM tributary.applied", &[])
        .await
        .map_err(setup(database, "reading the applied LSN"))?;
    Ok(row.map(|row| parse_lsn(&row.get::<_, String>(0))))
}

/// Makes `token` the replica's owner (see the module docs), on an apply session of it.
///
/// Refused with [`SinkError::Fenced`] when a larger token claimed it already. Sessions
/// holding the lease row (a previous owner's transaction, left open by a paused or
/// partitioned daemon) are terminated first: the bookkeeping gave this token the
/// connector, so they can only be stale, and their transaction must not block the claim.
pub(crate) async fn claim(
    client: &PgClient,
    database: &str,
    token: FencingToken,
) -> Result<(), SinkError> {
    // Quietly: the tables exist but for replicas made before the lease table was.
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL client_min_messages = warning; {PROGRESS_DDL} {} COMMIT;",
            triggers::TABLE_DDL
        ))
        .await
        .map_err(setup(database, "creating the lease table tributary.lease"))?;
    // A plain read waits for nobody: a larger token is refused before anyone is disturbed.
    if let Some(current) = current_token(client, database).await? {
        if current > token {
            return Err(SinkError::Fenced {
                database: database.to_owned(),
                token,
                current,
            });
        }
    }
    let stale = client
        .query(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_locks \
              WHERE locktype = 'relation' AND pid <> pg_catalog.pg_backend_pid() \
                AND database = (SELECT oid FROM pg_catalog.pg_database \
                                 WHERE datname = pg_catalog.current_database()) \
                AND relation = 'tributary.lease'::regclass",
            &[],
        )
        .await;
    match stale {
        Ok(rows) if !rows.is_empty() => tracing::warn!(
            database,
            sessions = rows.len(),
            "terminated sessions of a previous owner holding the replica's lease row"
        ),
        Ok(_) => {}
        // Not allowed to (another role): the claim below waits for them instead.
        Err(e) => tracing::debug!(database, "terminating a previous owner's sessions: {e}"),
    }
    let claimed = client
        .execute(
            "INSERT INTO tributary.lease AS l (singleton, token, claimed_at) \
             VALUES (true, $1, now()) \
             ON CONFLICT (singleton) DO UPDATE SET token = EXCLUDED.token, claimed_at = now() \
             WHERE l.token <= EXCLUDED.token",
            &[&token.0],
        )
        .await
        .map_err(setup(database, "claiming the replica (tributary.lease)"))?;
    if claimed == 0 {
        let current = current_token(client, database).await?.unwrap_or(token);
        return Err(SinkError::Fenced {
            database: database.to_owned(),
            token,
            current,
        });
    }
    // Triggers that would fire under apply: after a snapshot's post-data, and in replicas
    // made before they were held.
    let holding = async {
        client.batch_execute("BEGIN").await?;
        triggers::hold(client, false).await?;
        client.batch_execute("COMMIT").await
    };
    if let Err(e) = holding.await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(setup(database, "holding ALWAYS and REPLICA triggers")(e));
    }
    Ok(())
}

async fn current_token(
    client: &PgClient,
    database: &str,
) -> Result<Option<FencingToken>, SinkError> {
    let row = client
        .query_opt("SELECT token FROM tributary.lease", &[])
        .await
        .map_err(setup(database, "reading the replica's lease"))?;
    Ok(row.map(|row| FencingToken(row.get(0))))
}

/// Creates the replica database on the store server if missing, and in it schema
/// `tributary` with the progress table (one row: applied LSN), claimed for `token`.
/// `store` points at the control database; `database` is the replica's name.
///
/// The database is created from `template0`, so nothing an administrator added to
/// `template1` gets in the way of restoring the source's schema. Idempotent.
pub async fn prepare_replica(
    store: &ConnInfo,
    database: &str,
    token: FencingToken,
) -> Result<(), SinkError> {
    // A previous owner of the connector (a hand-over, a takeover) may be creating it at
    // this moment: its CREATE DATABASE, not yet committed, makes ours fail with 23505 on
    // pg_database's name index. Then wait for it to commit (or roll back) and look again.
    let mut attempts = 0;
    while !replica_exists(store, database).await? {
        let control = connect(store).await?;
        let created = control
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0",
                quote_ident(database)
            ))
            .await;
        let code = created
            .as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .map(|db| db.code().code().to_owned());
        match (created, code.as_deref()) {
            (Ok(()), _) => {
                // Only the store's role (its owner) connects: branch roles must not.
                control
                    .batch_execute(&format!(
                        "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
                        quote_ident(database)
                    ))
                    .await
                    .map_err(setup(database, "closing the replica database to PUBLIC"))?;
                tracing::info!(database, "created the replica database");
            }
            // Created by someone else in the meantime: fine, it is prepared below.
            (Err(_), Some("42P04")) => {}
            (Err(_), Some("23505")) if attempts < CONCURRENT_CREATE_ATTEMPTS => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            (Err(e), _) => return Err(setup(&store.dbname, "creating the replica database")(e)),
        }
    }
    let replica = connect(&store.with_dbname(database)).await?;
    claim(&replica, database, token).await
}

/// How often [`prepare_replica`] waits for a concurrent creation of the replica (200 ms
/// each): a CREATE DATABASE copies `template0`, a matter of a second or two.
const CONCURRENT_CREATE_ATTEMPTS: u32 = 150;

/// The source table OIDs the replica recorded (empty for a replica made before they were).
pub async fn source_tables(replica: &ConnInfo) -> Result<Vec<(TableName, u32)>, SinkError> {
    let client = connect(replica).await?;
    let reading = setup(&replica.dbname, "reading the source's table OIDs");
    let exists = client
        .query_one(
            "SELECT pg_catalog.to_regclass('tributary.source_tables') IS NOT NULL",
            &[],
        )
        .await
        .map_err(reading)?;
    if !exists.get::<_, bool>(0) {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT schema_name, table_name, source_oid FROM tributary.source_tables",
            &[],
        )
        .await
        .map_err(setup(&replica.dbname, "reading the source's table OIDs"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let table = TableName {
                schema: row.get(0),
                name: row.get(1),
            };
            (table, row.get(2))
        })
        .collect())
}

/// `CREATE DATABASE <name> TEMPLATE <template>` on the store server: a branch of a replica
/// whose sessions are closed (the server refuses while any is open, after waiting up to five
/// seconds for them to go). See [`CopyPlan`] for how the files are copied.
pub async fn copy_database(store: &ConnInfo, template: &str, name: &str) -> Result<(), SinkError> {
    if name == store.dbname || name == template || matches!(name, "template0" | "template1") {
        return Err(SinkError::Refused {
            database: name.to_owned(),
            reason: "it is the control, replica or a template database",
        });
    }
    let control = connect(store).await?;
    let row = control
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int4, \
                    pg_catalog.current_setting('file_copy_method', true)",
            &[],
        )
        .await
        .map_err(setup(
            name,
            "reading the server version and file_copy_method",
        ))?;
    let plan = CopyPlan::of(row.get::<_, i32>(0) as u32, row.get(1));
    control
        .batch_execute(&plan.sql(name, template))
        .await
        .map_err(|source| {
            if plan.clone_failed(source.code().map(|code| code.code())) {
                SinkError::CloneFailed {
                    database: name.to_owned(),
                    source,
                }
            } else {
                setup(name, "creating the branch database")(source)
            }
        })?;
    // The branch's database exists, nothing records it as copied, nothing finished it:
    // whichever process cuts (the pipeline, or `branch create` when none streams) dies
    // here leaving the most to recover, a whole copy its record calls `cutting`.
    crate::crash::reach(crate::crash::CrashPoint::DuringBranchCut);
    Ok(())
}

/// How `CREATE DATABASE … TEMPLATE` copies a replica on a server.
///
/// `STRATEGY FILE_COPY` from PostgreSQL 15 on (before, the only strategy, and no clause):
/// it copies the files after a checkpoint, where the default, `WAL_LOG`, writes the whole
/// database to WAL as well. On PostgreSQL 15 here it took 1.4 s for 1 GB against 2.3–4.0 s,
/// and was as fast or faster from 20 MB up.
///
/// PostgreSQL 18's `file_copy_method = clone` (a server setting, left to the operator)
/// makes FILE_COPY clone the files: with reflinks (XFS, Btrfs) about the same time at any
/// size. On Linux it is `copy_file_range`, which copies inside the kernel where the
/// filesystem has no reflinks (checked on ext4: branches are complete, at the time of a
/// copy). Where the filesystem refuses (macOS outside APFS, some network filesystems) the
/// copy fails with an error the server has no code for (XX000): that failure is reported
/// with the fix rather than retried with `copy`, since the operator chose clone for
/// constant-time branches, and a silent copy would make every branch cut pause the
/// pipeline for as long as copying the replica takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CopyPlan {
    strategy_clause: bool,
    clone: bool,
}

impl CopyPlan {
    /// For a server of `server_version_num` whose `file_copy_method` is as given (`None`
    /// before PostgreSQL 18).
    fn of(server_version_num: u32, file_copy_method: Option<&str>) -> CopyPlan {
        let strategy_clause = server_version_num >= 150_000;
        CopyPlan {
            strategy_clause,
            clone: strategy_clause && file_copy_method == Some("clone"),
        }
    }

    fn sql(&self, name: &str, template: &str) -> String {
        format!(
            "CREATE DATABASE {} TEMPLATE {}{}",
            quote_ident(name),
            quote_ident(template),
            if self.strategy_clause {
                " STRATEGY FILE_COPY"
            } else {
                ""
            }
        )
    }

    /// Whether a CREATE DATABASE that failed with `sqlstate` failed cloning files.
    fn clone_failed(&self, sqlstate: Option<&str>) -> bool {
        self.clone && sqlstate == Some("XX000")
    }
}

/// A `CHECKPOINT` before a branch is cut, outside the pause: `CREATE DATABASE … STRATEGY
/// FILE_COPY` checkpoints first, and what a snapshot or a burst of changes left dirty would
/// otherwise be flushed while replication stands still. Best effort: the store role needs
/// `pg_checkpoint` (PostgreSQL 15+) or superuser, and without it the pause only includes
/// that flush.
pub async fn checkpoint_ahead(store: &ConnInfo) {
    let done = match connect(store).await {
        Ok(control) => control
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(why) = done {
        tracing::debug!(
            "no checkpoint ahead of the branch cut ({why}): its pause includes the server's \
             checkpoint; GRANT pg_checkpoint TO the store role to shorten it"
        );
    }
}

/// `DROP DATABASE IF EXISTS`, with `force` `WITH (FORCE)`, which ends the database's
/// sessions first (without it the server refuses while any is open). Refuses to drop the
/// control database named in `store`, and the template databases.
pub async fn drop_database(store: &ConnInfo, database: &str, force: bool) -> Result<(), SinkError> {
    let refuse = |reason| {
        Err(SinkError::Refused {
            database: database.to_owned(),
            reason,
        })
    };
    if database == store.dbname {
        return refuse("it is the control database holding tributary's bookkeeping (store.url)");
    }
    if matches!(database, "template0" | "template1") {
        return refuse("it is a template database of the server");
    }
    let control = connect(store).await?;
    control
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {}{}",
            quote_ident(database),
            if force { " WITH (FORCE)" } else { "" }
        ))
        .await
        .map_err(setup(database, "dropping the database"))?;
    tracing::info!(database, "dropped the database");
    Ok(())
}

/// An apply session on the replica database: settings as in [`SESSION_SQL`] and
/// `session_replication_role = replica`.
pub(crate) async fn open_session(store: &ConnInfo, database: &str) -> Result<PgClient, SinkError> {
    let client = connect(&store.with_dbname(database)).await?;
    client
        .batch_execute(SESSION_SQL)
        .await
        .map_err(setup(database, "configuring the apply session"))?;
    // Separately, for a precise message: it needs a privilege the other settings do not,
    // granted in a way that depends on the server's version.
    let Err(source) = client
        .batch_execute("SET session_replication_role = replica")
        .await
    else {
        return Ok(client);
    };
    let denied = source.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
    match version_num(&client, database).await {
        Ok(version) if denied => Err(SinkError::ReplicationRole {
            database: database.to_owned(),
            role: store.user.clone(),
            server_major: version / 10_000,
            source,
        }),
        _ => Err(setup(
            database,
            "setting session_replication_role = replica",
        )(source)),
    }
}

/// Whether the branch-store role can open apply sessions (see [`open_session`]), tried on
/// the control database: before a connector is created, and before a snapshot, rather
/// than after the copy.
pub async fn check_apply_session(store: &ConnInfo) -> Result<(), SinkError> {
    open_session(store, &store.dbname).await.map(drop)
}

/// The branch-store server's major version (15 for 15.4).
pub async fn server_major(store: &ConnInfo) -> Result<u32, SinkError> {
    let control = connect(store).await?;
    Ok(version_num(&control, &store.dbname).await? / 10_000)
}

async fn version_num(client: &PgClient, database: &str) -> Result<u32, SinkError> {
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int4",
            &[],
        )
        .await
        .map_err(setup(database, "reading the server version"))?;
    Ok(row.get::<_, i32>(0) as u32)
}

pub(crate) async fn connect(info: &ConnInfo) -> Result<PgClient, SinkError> {
    pg::connect(info)
        .await
        .map_err(|source| SinkError::Connect {
            database: info.dbname.clone(),
            source,
        })
}

/// Maps a failed statement of the sink's own to [`SinkError::Setup`].
pub(crate) fn setup<'a>(
    database: &'a str,
    action: &'static str,
) -> impl FnOnce(tokio_postgres::Error) -> SinkError + 'a {
    move |source| SinkError::Setup {
        database: database.to_owned(),
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_copy_files_with_the_strategy_the_server_has() {
        for (version, method, sql, clone) in [
            (130_023, None, "CREATE DATABASE \"b\" TEMPLATE \"r\"", false),
            (140_023, None, "CREATE DATABASE \"b\" TEMPLATE \"r\"", false),
            (
                150_020,
                None,
                "CREATE DATABASE \"b\" TEMPLATE \"r\" STRATEGY FILE_COPY",
                false,
            ),
            (
                180_006,
                Some("copy"),
                "CREATE DATABASE \"b\" TEMPLATE \"r\" STRATEGY FILE_COPY",
                false,
            ),
            (
                180_006,
                Some("clone"),
                "CREATE DATABASE \"b\" TEMPLATE \"r\" STRATEGY FILE_COPY",
                true,
            ),
        ] {
            let plan = CopyPlan::of(version, method);
            assert_eq!(plan.sql("b", "r"), sql, "{version} {method:?}");
            assert_eq!(plan.clone, clone, "{version} {method:?}");
        }
    }

    #[test]
    fn only_a_clone_failure_is_blamed_on_cloning() {
        let clone = CopyPlan::of(180_006, Some("clone"));
        let copy = CopyPlan::of(180_006, Some("copy"));
        assert!(clone.clone_failed(Some("XX000")));
        assert!(!clone.clone_failed(Some("53100")), "disk full is disk full");
        assert!(
            !clone.clone_failed(Some("55006")),
            "sessions on the template"
        );
        assert!(!clone.clone_failed(None), "a lost connection");
        assert!(!copy.clone_failed(Some("XX000")));
    }
}
