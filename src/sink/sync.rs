//! The replica's record of its snapshot, table by table (`tributary.snapshot`,
//! `tributary.table_sync`), which lets an interrupted snapshot resume.
//!
//! Each table's copy is exact at its own source position L (the consistent point of the
//! slot whose exported snapshot it was read under); the copy and the row saying "copied at
//! L" commit in one transaction (or, for a table copied in page ranges, the row commits
//! after every range has), so the replica never claims a copy it does not hold. A table
//! without such a row holds nothing that counts: it is emptied and copied again.
//!
//! Every write here and in the snapshot's copy workers first locks the lease row
//! ([`FENCE_SQL`]) and checks the token: a daemon that lost the connector cannot add rows
//! to a table its successor is copying.

use std::collections::HashMap;

use super::error::SinkError;
use super::replica::{connect, parse_lsn, read_applied_lsn, setup};
use crate::change::TableName;
use crate::pg::{self, ConnInfo, PgClient};
use crate::types::{FencingToken, Lsn, SlotName};

/// Inside a transaction of a snapshot's writer: locks the lease row against a claim until
/// the transaction ends, and reads its token (see [`check_fence`]).
pub const FENCE_SQL: &str = "SELECT token FROM tributary.lease FOR SHARE";

/// Records a complete copy of table `$1.$2` exact at `$3`, in the copy's transaction.
pub const RECORD_COPIED_SQL: &str = "\
    INSERT INTO tributary.table_sync AS s (schema_name, table_name, copied_lsn, copies) \
    VALUES ($1, $2, $3::text::pg_lsn, 1) \
    ON CONFLICT (schema_name, table_name) \
    DO UPDATE SET copied_lsn = EXCLUDED.copied_lsn, copies = s.copies + 1 \
    RETURNING copies";

/// Checks, inside the caller's open transaction, that the replica is still `token`'s.
pub async fn check_fence(
    client: &PgClient,
    database: &str,
    token: FencingToken,
) -> Result<(), SinkError> {
    let row = client
        .query_opt(FENCE_SQL, &[])
        .await
        .map_err(setup(database, "locking the replica's lease row"))?;
    let current = FencingToken(row.map_or(0, |row| row.get(0)));
    if current != token {
        return Err(SinkError::Fenced {
            database: database.to_owned(),
            token,
            current,
        });
    }
    Ok(())
}

/// The snapshot a replica was (or is being) made by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub slot: SlotName,
    /// Where the slot's stream starts: the replica's applied position once complete.
    pub consistent_point: Lsn,
    /// pg_dump's archive of the schema, kept until post-data is restored, so that a
    /// resumed snapshot restores the same schema.
    pub schema_dump: Option<Vec<u8>>,
    /// The archive's table of contents, as filtered for the restore.
    pub schema_list: Option<String>,
    pub post_data_restored: bool,
}

/// One table of the snapshot as the replica recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    pub table: TableName,
    /// Where its last complete copy is exact; `None` while it has none.
    pub copied_at: Option<Lsn>,
    pub copies: u32,
    /// For a table added to a kept replica: the position its definition was dumped at;
    /// the stream replays none of its schema changes from before it.
    pub defined_at: Option<Lsn>,
}

/// Records a new snapshot in a fresh replica: its slot, start, schema archive and tables,
/// none copied yet.
pub async fn begin_snapshot(
    replica: &ConnInfo,
    token: FencingToken,
    record: &SnapshotRecord,
    tables: &[TableName],
) -> Result<(), SinkError> {
    let database = &replica.dbname;
    let client = connect(replica).await?;
    let writing = || setup(database, "recording the snapshot (tributary.snapshot)");
    client.batch_execute("BEGIN").await.map_err(writing())?;
    check_fence(&client, database, token).await?;
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    client
        .batch_execute("DELETE FROM tributary.snapshot; DELETE FROM tributary.table_sync")
        .await
        .map_err(writing())?;
    client
        .execute(
            "INSERT INTO tributary.snapshot \
                 (slot_name, consistent_point, schema_dump, schema_list) \
             VALUES ($1, $2::text::pg_lsn, $3, $4)",
            &[
                &record.slot.as_str(),
                &record.consistent_point.to_string(),
                &record.schema_dump,
                &record.schema_list,
            ],
        )
        .await
        .map_err(writing())?;
    client
        .execute(
            "INSERT INTO tributary.table_sync (schema_name, table_name) \
             SELECT * FROM unnest($1::text[], $2::text[])",
            &[&schemas, &names],
        )
        .await
        .map_err(writing())?;
    client.batch_execute("COMMIT").await.map_err(writing())
}

/// The unfinished snapshot the replica records, taken with `slot`: `None` when the replica
/// does not exist, has an applied position (its snapshot completed) or records another
/// slot's snapshot (or none).
pub async fn interrupted_snapshot(
    store: &ConnInfo,
    database: &str,
    slot: &SlotName,
) -> Result<Option<SnapshotRecord>, SinkError> {
    if !super::replica_exists(store, database).await? {
        return Ok(None);
    }
    let client = connect(&store.with_dbname(database)).await?;
    let reading = || setup(database, "reading the replica's snapshot record");
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('tributary.snapshot') IS NOT NULL",
            &[],
        )
        .await
        .map_err(reading())?
        .get(0);
    if !exists || read_applied_lsn(&client, database).await?.is_some() {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT slot_name, consistent_point::text, schema_dump, schema_list, \
                    post_data_restored \
             FROM tributary.snapshot",
            &[],
        )
        .await
        .map_err(reading())?;
    let Some(row) = row else {
        return Ok(None);
    };
    if row.get::<_, &str>(0) != slot.as_str() {
        return Ok(None);
    }
    Ok(Some(SnapshotRecord {
        slot: slot.clone(),
        consistent_point: parse_lsn(&row.get::<_, String>(1)),
        schema_dump: row.get(2),
        schema_list: row.get(3),
        post_data_restored: row.get(4),
    }))
}

/// The snapshot's tables as the replica recorded them, ordered by schema and name.
pub async fn table_copies(replica: &ConnInfo) -> Result<Vec<TableCopy>, SinkError> {
    let client = connect(replica).await?;
    let rows = client
        .query(
            "SELECT schema_name, table_name, copied_lsn::text, copies, defined_lsn::text \
             FROM tributary.table_sync ORDER BY schema_name, table_name",
            &[],
        )
        .await
        .map_err(setup(&replica.dbname, "reading tributary.table_sync"))?;
    Ok(rows
        .iter()
        .map(|row| TableCopy {
            table: TableName {
                schema: row.get(0),
                name: row.get(1),
            },
            copied_at: row.get::<_, Option<String>>(2).map(|l| parse_lsn(&l)),
            copies: u32::try_from(row.get::<_, i32>(3)).unwrap_or(0),
            defined_at: row.get::<_, Option<String>>(4).map(|l| parse_lsn(&l)),
        })
        .collect())
}

/// The stored (non-generated) columns of each of `tables` in the replica, in `attnum`
/// order, as `source::catalog::SourceTable::columns` lists the source's; a table the
/// replica does not have is left out.
pub async fn stored_columns(
    replica: &ConnInfo,
    tables: &[TableName],
) -> Result<HashMap<TableName, Vec<String>>, SinkError> {
    let client = connect(replica).await?;
    let (schemas, names): (Vec<&str>, Vec<&str>) = tables
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .unzip();
    let rows = client
        .query(
            "SELECT n.nspname, c.relname, a.attname \
             FROM unnest($1::text[], $2::text[]) AS t(schema_name, table_name) \
             JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema_name \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY n.nspname, c.relname, a.attnum",
            &[&schemas, &names],
        )
        .await
        .map_err(setup(
            &replica.dbname,
            "reading the replica tables' columns",
        ))?;
    let mut columns: HashMap<TableName, Vec<String>> = HashMap::new();
    for row in &rows {
        let table = TableName {
            schema: row.get(0),
            name: row.get(1),
        };
        columns.entry(table).or_default().push(row.get(2));
    }
    Ok(columns)
}

/// In the open transaction: `TRUNCATE ONLY qualified`, which a table with rows of another
/// copy needs before `COPY … FREEZE`; `false` when a foreign key references the table
/// (then nothing changed: the caller emptied it before, see [`empty_tables`]).
pub async fn try_truncate(
    client: &PgClient,
    qualified: &str,
) -> Result<bool, tokio_postgres::Error> {
    match client
        .batch_execute(&format!("SAVEPOINT whole; TRUNCATE ONLY {qualified}"))
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED) => {
            client.batch_execute("ROLLBACK TO SAVEPOINT whole").await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Empties `tables` (copies that did not complete, or that are done again), under the
/// fence; a table a foreign key references (a complete replica has its constraints) is
/// emptied with DELETE, its triggers not firing.
pub async fn empty_tables(
    replica: &ConnInfo,
    token: FencingToken,
    tables: &[TableName],
) -> Result<(), SinkError> {
    if tables.is_empty() {
        return Ok(());
    }
    let database = &replica.dbname;
    let client = connect(replica).await?;
    let emptying = || setup(database, "emptying tables whose copy was interrupted");
    client
        .batch_execute("BEGIN; SET LOCAL session_replication_role = replica")
        .await
        .map_err(emptying())?;
    check_fence(&client, database, token).await?;
    for table in tables {
        let name = qualified(table);
        if !try_truncate(&client, &name).await.map_err(emptying())? {
            client
                .batch_execute(&format!("DELETE FROM ONLY {name}"))
                .await
                .map_err(emptying())?;
        }
    }
    client.batch_execute("COMMIT").await.map_err(emptying())
}

/// Records `tables` as not copied (the operator asked for them to be copied again, or
/// they were just added, with their definitions dumped at `defined_at`), under the fence.
pub async fn forget_copies(
    replica: &ConnInfo,
    token: FencingToken,
    tables: &[TableName],
    defined_at: Option<Lsn>,
) -> Result<(), SinkError> {
    let database = &replica.dbname;
    let client = connect(replica).await?;
    let writing = || setup(database, "recording the tables to copy again");
    client.batch_execute("BEGIN").await.map_err(writing())?;
    check_fence(&client, database, token).await?;
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    client
        .execute(
            "INSERT INTO tributary.table_sync (schema_name, table_name, defined_lsn) \
             SELECT t.*, $3::text::pg_lsn FROM unnest($1::text[], $2::text[]) AS t \
             ON CONFLICT (schema_name, table_name) DO UPDATE SET copied_lsn = NULL, \
                 defined_lsn = coalesce(EXCLUDED.defined_lsn, table_sync.defined_lsn)",
            &[&schemas, &names, &defined_at.map(|l| l.to_string())],
        )
        .await
        .map_err(writing())?;
    client.batch_execute("COMMIT").await.map_err(writing())
}

/// Records `tables`, which the caller emptied, as copied at `at`: they no longer exist on
/// the source there.
pub async fn record_empty(
    replica: &ConnInfo,
    token: FencingToken,
    tables: &[&TableName],
    at: Lsn,
) -> Result<(), SinkError> {
    let database = &replica.dbname;
    let client = connect(replica).await?;
    let writing = || setup(database, "recording tables dropped on the source");
    client.batch_execute("BEGIN").await.map_err(writing())?;
    check_fence(&client, database, token).await?;
    for table in tables {
        client
            .query_one(
                RECORD_COPIED_SQL,
                &[&table.schema, &table.name, &at.to_string()],
            )
            .await
            .map_err(writing())?;
    }
    client.batch_execute("COMMIT").await.map_err(writing())
}

/// Records that post-data is restored, dropping the schema archive (branches copy the
/// replica, and need not carry it).
pub async fn post_data_restored(replica: &ConnInfo, token: FencingToken) -> Result<(), SinkError> {
    let database = &replica.dbname;
    let client = connect(replica).await?;
    let writing = || setup(database, "recording the restored post-data");
    client.batch_execute("BEGIN").await.map_err(writing())?;
    check_fence(&client, database, token).await?;
    client
        .batch_execute(
            "UPDATE tributary.snapshot \
             SET post_data_restored = true, schema_dump = NULL, schema_list = NULL; COMMIT",
        )
        .await
        .map_err(writing())
}

fn qualified(table: &TableName) -> String {
    format!(
        "{}.{}",
        pg::quote_ident(&table.schema),
        pg::quote_ident(&table.name)
    )
}
