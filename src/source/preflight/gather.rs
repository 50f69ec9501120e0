//! Reading the source: the transport, the login, settings and catalog over one plain SQL
//! session, and the probe slot. What was read is [`Gathered`]; nothing here judges.

use super::*;

/// What the servers said, as far as gathering got.
pub(super) enum Gathered {
    Unreachable(Error),
    TlsFailed(Error),
    LoginFailed {
        encryption: Encryption,
        error: Error,
    },
    /// Logged in, but reading the settings or the catalog failed.
    ReadFailed {
        encryption: Encryption,
        error: Error,
    },
    /// Older than [`MIN_SERVER_VERSION`]: nothing more was read.
    Unsupported {
        encryption: Encryption,
        version: Version,
    },
    Ready {
        encryption: Encryption,
        server: Box<Server>,
        probe: Probe,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Version {
    /// `server_version_num`: 150004 for 15.4.
    pub(super) num: u32,
    /// `server_version` as the server prints it.
    pub(super) text: String,
}

/// Everything read from a supported server.
#[derive(Debug)]
pub(super) struct Server {
    pub(super) version: Version,
    pub(super) in_recovery: bool,
    pub(super) wal_level: String,
    pub(super) max_slots: usize,
    pub(super) slots: Vec<Slot>,
    pub(super) max_senders: usize,
    pub(super) active_senders: usize,
    pub(super) role: Role,
    pub(super) database: String,
    pub(super) can_create: bool,
    /// tributary's schema change capture objects.
    pub(super) capture: CaptureStatus,
    /// Whether this role may read their signing key.
    pub(super) capture_key_readable: bool,
    /// `max_slot_wal_keep_size` in MB; -1 is unlimited.
    pub(super) slot_wal_keep_mb: i64,
    /// `max_wal_size` in MB.
    pub(super) max_wal_size_mb: i64,
    /// `wal_sender_timeout` as `SHOW` prints it.
    pub(super) wal_sender_timeout: String,
    /// Large objects in the database: logical decoding does not carry them.
    pub(super) large_objects: i64,
    /// In the order requested.
    pub(super) schemas: Vec<Schema>,
    /// Tables (also partitioned and unlogged ones: `pg_dump` locks them, which needs
    /// SELECT) and sequences of the selected schemas.
    pub(super) relations: Vec<Relation>,
    /// The tables whose changes are streamed, as `catalog::list_tables` selects them.
    pub(super) tables: Vec<Table>,
    /// `schema.table.column (type)` of every numeric, real and double precision column.
    pub(super) numeric_columns: Vec<String>,
    pub(super) foreign_keys: Vec<ForeignKey>,
    /// Pending prepared transactions: a new slot waits for them.
    pub(super) prepared: Vec<PreparedXact>,
    /// `output_plugin_libraries` as this role sees it.
    pub(super) plugins: PluginList,
    /// Standbys and slot synchronization (its `standbys` read from the URL's other hosts).
    pub(super) failover: failover::Failover,
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) name: String,
    pub(super) active: bool,
    pub(super) temporary: bool,
    /// In the database checked (logical slots belong to one database).
    pub(super) here: bool,
}

#[derive(Debug)]
pub(super) struct Role {
    pub(super) name: String,
    pub(super) superuser: bool,
    pub(super) replication: bool,
    /// The server has Amazon RDS's `rds_replication` role…
    pub(super) on_rds: bool,
    /// …and this role is a member: RDS's stand-in for the REPLICATION attribute.
    pub(super) rds_replication: bool,
}

impl Role {
    pub(super) fn may_replicate(&self) -> bool {
        self.superuser || self.replication || self.rds_replication
    }
}

#[derive(Debug)]
pub(super) struct Schema {
    pub(super) name: String,
    pub(super) exists: bool,
    pub(super) usage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelationKind {
    Table,
    Sequence,
}

#[derive(Debug)]
pub(super) struct Relation {
    pub(super) name: TableName,
    pub(super) kind: RelationKind,
    pub(super) owner: String,
    pub(super) can_select: bool,
    /// An unlogged table: never in the WAL, so never streamed.
    pub(super) unlogged: bool,
}

#[derive(Debug)]
pub(super) struct Table {
    pub(super) name: TableName,
    pub(super) identity: ReplicaIdentity,
    /// A unique index that `REPLICA IDENTITY USING INDEX` would accept: valid, not
    /// partial, not deferrable, no expressions, key columns NOT NULL.
    pub(super) usable_index: Option<String>,
}

/// The wal2json probe: a temporary slot created and dropped over a replication connection.
#[derive(Debug)]
pub(super) enum Probe {
    /// Not attempted, because a check it depends on failed: [`probe_blocker`]'s reason.
    Blocked(&'static str),
    TimedOut,
    Failed(Error),
    Ran {
        /// From `IDENTIFY_SYSTEM`, for the duplicate-source check.
        system_id: String,
        slot: SlotName,
        dropped: Result<()>,
        numeric_as_string: Result<bool>,
    },
}

pub(super) async fn gather(info: &ConnInfo, schemas: &[String]) -> Gathered {
    let encryption = match wire::probe_transport(info).await {
        Ok(encryption) => encryption,
        Err(TransportError::Unreachable(error)) => return Gathered::Unreachable(error),
        Err(TransportError::Tls(error)) => return Gathered::TlsFailed(error),
    };
    let (mut conn, endpoint) = match Connection::connect_endpoint(info, SESSION_PARAMS).await {
        Ok(connected) => connected,
        Err(error) => return Gathered::LoginFailed { encryption, error },
    };
    let read = read_server(&mut conn, schemas).await;
    conn.terminate().await;
    let mut server = match read {
        Ok(Ok(server)) => server,
        Ok(Err(version)) => {
            return Gathered::Unsupported {
                encryption,
                version,
            }
        }
        Err(error) => return Gathered::ReadFailed { encryption, error },
    };
    if server.version.num >= 170_000 {
        server.failover.standbys = failover::look_at_standbys(info, &endpoint).await;
    }
    // Every later session on the server the first one found.
    let info = &info.pinned(&endpoint);
    let probe = match probe_blocker(&server) {
        Some(reason) => Probe::Blocked(reason),
        None => run_probe(info).await,
    };
    if matches!(probe, Probe::TimedOut) {
        // What held the probe is what is pending now, maybe prepared since the first look.
        if let Ok(mut conn) = Connection::connect(info, SESSION_PARAMS).await {
            if let Ok(pending) = read_prepared(&mut conn).await {
                server.prepared = pending;
            }
            conn.terminate().await;
        }
    }
    Gathered::Ready {
        encryption,
        server,
        probe,
    }
}

/// Creates and drops a temporary wal2json slot, then asks whether wal2json knows
/// `numeric-data-types-as-string`, within [`PROBE_TIMEOUT`]. On timeout the connection is
/// dropped, and the server drops the slot with the session.
pub(super) async fn run_probe(info: &ConnInfo) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_slot(info)).await {
        Ok(Ok(probe)) => probe,
        Ok(Err(error)) => Probe::Failed(error),
        Err(_) => Probe::TimedOut,
    }
}

pub(super) async fn probe_slot(info: &ConnInfo) -> Result<Probe> {
    let mut client = ReplicationClient::connect(info).await?;
    let system = client.identify_system().await?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let slot = SlotName::new(format!("{PROBE_SLOT_PREFIX}{}_{nanos}", std::process::id()))
        .expect("a prefix, a process id and a number make a valid slot name");
    client
        .create_slot(&slot, true, SnapshotAction::NoExport)
        .await?;
    let dropped = client.drop_slot(&slot, false).await;
    client.close().await;
    let numeric_as_string = replication::probe_numeric_as_string(info).await;
    Ok(Probe::Ran {
        system_id: system.system_id,
        slot,
        dropped,
        numeric_as_string,
    })
}

/// One row of a simple query's result, as text.
pub(super) struct Row(Vec<Option<String>>);

impl Row {
    pub(super) fn text(&self, i: usize) -> Result<&str, String> {
        self.0
            .get(i)
            .and_then(Option::as_deref)
            .ok_or_else(|| format!("column {} is missing or NULL", i + 1))
    }

    pub(super) fn optional(&self, i: usize) -> Option<String> {
        self.0.get(i).cloned().flatten()
    }

    pub(super) fn flag(&self, i: usize) -> Result<bool, String> {
        match self.text(i)? {
            "t" => Ok(true),
            "f" => Ok(false),
            other => Err(format!("{other:?} is not a boolean")),
        }
    }

    pub(super) fn number<T: FromStr>(&self, i: usize) -> Result<T, String> {
        let text = self.text(i)?;
        text.parse()
            .map_err(|_| format!("{text:?} is not a number in range"))
    }
}

/// Runs `sql` and parses each row; a row that does not parse is a protocol error naming
/// `what`.
pub(super) async fn rows<T>(
    conn: &mut Connection,
    what: &str,
    sql: &str,
    parse: impl Fn(&Row) -> Result<T, String>,
) -> Result<Vec<T>> {
    let rows = conn.simple_query(sql).await?.rows;
    rows.into_iter()
        .map(|row| parse(&Row(row)))
        .collect::<Result<_, _>>()
        .map_err(|reason| conn.protocol(format!("reading {what}: {reason}")))
}

/// Like [`rows`], for a query that returns exactly one row.
pub(super) async fn one_row<T>(
    conn: &mut Connection,
    what: &str,
    sql: &str,
    parse: impl Fn(&Row) -> Result<T, String>,
) -> Result<T> {
    let mut rows = rows(conn, what, sql, parse).await?;
    match (rows.pop(), rows.is_empty()) {
        (Some(row), true) => Ok(row),
        _ => Err(conn.protocol(format!("reading {what}: expected exactly one row"))),
    }
}

pub(super) async fn read_prepared(conn: &mut Connection) -> Result<Vec<PreparedXact>> {
    rows(
        conn,
        "the prepared transactions",
        prepared::PENDING_SQL,
        |row| {
            Ok(PreparedXact {
                gid: row.text(0)?.to_owned(),
                owner: row.text(1)?.to_owned(),
                database: row.text(2)?.to_owned(),
                prepared: row.text(3)?.to_owned(),
            })
        },
    )
    .await
}

pub(super) fn text_array(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| quote_literal(s)).collect();
    format!("ARRAY[{}]::text[]", items.join(", "))
}

/// Reads everything the checks judge, or only the version (`Err`) of a server too old.
pub(super) async fn read_server(
    conn: &mut Connection,
    schemas: &[String],
) -> Result<Result<Box<Server>, Version>> {
    let version = one_row(
        conn,
        "the server version",
        "SELECT pg_catalog.current_setting('server_version_num'),
                pg_catalog.current_setting('server_version')",
        |row| {
            Ok(Version {
                num: row.number(0)?,
                text: row.text(1)?.to_owned(),
            })
        },
    )
    .await?;
    if version.num < MIN_SERVER_VERSION {
        return Ok(Err(version));
    }

    let settings = read_settings(conn).await?;

    let (triggers, has_version, key_readable) = one_row(
        conn,
        "the schema change capture objects",
        capture::INSPECT_SQL,
        |row| Ok((row.number::<i32>(0)?, row.flag(1)?, row.flag(3)?)),
    )
    .await?;
    let capture_version = if has_version {
        Some(
            one_row(conn, "the capture version", capture::VERSION_SQL, |row| {
                row.number(0)
            })
            .await?,
        )
    } else {
        None
    };

    let catalog = read_catalog(conn, schemas).await?;
    let prepared = read_prepared(conn).await?;
    let failover = failover::read_primary(conn, version.num / 10_000).await?;
    let plugins = plugins::read(conn).await?;

    Ok(Ok(Box::new(Server {
        version,
        in_recovery: settings.in_recovery,
        wal_level: settings.wal_level,
        max_slots: settings.max_slots,
        slots: catalog.slots,
        max_senders: settings.max_senders,
        active_senders: settings.active_senders,
        role: settings.role,
        database: settings.database,
        can_create: settings.can_create,
        capture: capture::status(triggers, capture_version),
        capture_key_readable: key_readable,
        slot_wal_keep_mb: settings.slot_wal_keep_mb,
        max_wal_size_mb: settings.max_wal_size_mb,
        wal_sender_timeout: settings.wal_sender_timeout,
        large_objects: settings.large_objects,
        schemas: catalog.schemas,
        relations: catalog.relations,
        tables: catalog.tables,
        numeric_columns: catalog.numeric_columns,
        foreign_keys: catalog.foreign_keys,
        prepared,
        plugins,
        failover,
    })))
}

/// The server settings and the role, read in one query.
struct Settings {
    in_recovery: bool,
    wal_level: String,
    max_slots: usize,
    max_senders: usize,
    active_senders: usize,
    role: Role,
    database: String,
    can_create: bool,
    slot_wal_keep_mb: i64,
    max_wal_size_mb: i64,
    wal_sender_timeout: String,
    large_objects: i64,
}

async fn read_settings(conn: &mut Connection) -> Result<Settings> {
    // pg_settings gives both sizes in MB whatever unit they were set in. Roles without
    // pg_read_all_stats still see one pg_stat_replication row per WAL sender.
    one_row(
        conn,
        "the server settings",
        "SELECT pg_catalog.pg_is_in_recovery(),
                pg_catalog.current_setting('wal_level'),
                pg_catalog.current_setting('max_replication_slots'),
                pg_catalog.current_setting('max_wal_senders'),
                (SELECT count(*) FROM pg_catalog.pg_stat_replication),
                r.rolname, r.rolsuper, r.rolreplication,
                EXISTS (SELECT FROM pg_catalog.pg_roles g WHERE g.rolname = 'rds_replication'),
                EXISTS (SELECT FROM pg_catalog.pg_roles g WHERE g.rolname = 'rds_replication'
                          AND pg_catalog.pg_has_role(r.oid, g.oid, 'MEMBER')),
                pg_catalog.current_database(),
                pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'),
                (SELECT setting FROM pg_catalog.pg_settings WHERE name = 'max_slot_wal_keep_size'),
                (SELECT setting FROM pg_catalog.pg_settings WHERE name = 'max_wal_size'),
                pg_catalog.current_setting('wal_sender_timeout'),
                (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)
           FROM pg_catalog.pg_roles r
          WHERE r.rolname = current_user",
        |row| {
            Ok(Settings {
                in_recovery: row.flag(0)?,
                wal_level: row.text(1)?.to_owned(),
                max_slots: row.number(2)?,
                max_senders: row.number(3)?,
                active_senders: row.number(4)?,
                role: Role {
                    name: row.text(5)?.to_owned(),
                    superuser: row.flag(6)?,
                    replication: row.flag(7)?,
                    on_rds: row.flag(8)?,
                    rds_replication: row.flag(9)?,
                },
                database: row.text(10)?.to_owned(),
                can_create: row.flag(11)?,
                slot_wal_keep_mb: row.number(12)?,
                max_wal_size_mb: row.number(13)?,
                wal_sender_timeout: row.text(14)?.to_owned(),
                large_objects: row.number(15)?,
            })
        },
    )
    .await
}

/// The slots and the selected schemas' catalog: schemas, relations, replica identities,
/// numeric columns and foreign keys.
struct Catalog {
    slots: Vec<Slot>,
    schemas: Vec<Schema>,
    relations: Vec<Relation>,
    tables: Vec<Table>,
    numeric_columns: Vec<String>,
    foreign_keys: Vec<ForeignKey>,
}

async fn read_catalog(conn: &mut Connection, schemas: &[String]) -> Result<Catalog> {
    let slots = rows(
        conn,
        "the replication slots",
        "SELECT slot_name, active, temporary, database IS NOT DISTINCT FROM current_database()
           FROM pg_catalog.pg_replication_slots
          ORDER BY slot_name",
        |row| {
            Ok(Slot {
                name: row.text(0)?.to_owned(),
                active: row.flag(1)?,
                temporary: row.flag(2)?,
                here: row.flag(3)?,
            })
        },
    )
    .await?;

    let selected = text_array(schemas);
    let schemas = rows(
        conn,
        "the schemas",
        &format!(
            "SELECT s.name, n.oid IS NOT NULL,
                    COALESCE(pg_catalog.has_schema_privilege(n.oid, 'USAGE'), false)
               FROM unnest({selected}) WITH ORDINALITY AS s (name, position)
               LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = s.name
              ORDER BY s.position"
        ),
        |row| {
            Ok(Schema {
                name: row.text(0)?.to_owned(),
                exists: row.flag(1)?,
                usage: row.flag(2)?,
            })
        },
    )
    .await?;

    let relations = rows(
        conn,
        "the tables and sequences",
        &format!(
            "SELECT n.nspname, c.relname, c.relkind, pg_catalog.pg_get_userbyid(c.relowner),
                    pg_catalog.has_table_privilege(c.oid, 'SELECT'),
                    c.relkind = 'r' AND c.relpersistence = 'u'
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = ANY ({selected}) AND c.relkind IN ('r', 'p', 'S')
              ORDER BY 1, 2"
        ),
        |row| {
            Ok(Relation {
                name: table_name(row)?,
                kind: match row.text(2)? {
                    "S" => RelationKind::Sequence,
                    _ => RelationKind::Table,
                },
                owner: row.text(3)?.to_owned(),
                can_select: row.flag(4)?,
                unlogged: row.flag(5)?,
            })
        },
    )
    .await?;

    // The usable index follows the rules of ALTER TABLE … REPLICA IDENTITY USING INDEX;
    // only key columns must be NOT NULL (INCLUDE columns may be nullable).
    let tables = rows(
        conn,
        "the replica identities",
        &format!(
            "SELECT n.nspname, c.relname, {},
                    (SELECT ic.relname FROM pg_catalog.pg_index i
                       JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                      WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                        AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL
                        AND NOT EXISTS (
                            SELECT FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) AS k
                              JOIN pg_catalog.pg_attribute a
                                ON a.attrelid = c.oid AND a.attnum = i.indkey[k]
                             WHERE NOT a.attnotnull)
                      ORDER BY i.indnkeyatts, ic.relname
                      LIMIT 1)
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname = ANY ({selected})
              ORDER BY 1, 2",
            identity::FACTS_SQL
        ),
        |row| {
            let identity =
                identity::classify(row.text(2)?, row.flag(3)?, row.flag(4)?, row.optional(5));
            Ok(Table {
                name: table_name(row)?,
                identity,
                usable_index: row.optional(6),
            })
        },
    )
    .await?;

    // Domains and arrays over these types arrive as strings already: not affected.
    let numeric_columns = rows(
        conn,
        "the numeric columns",
        &format!(
            "SELECT format('%s.%s.%s (%s)', n.nspname, c.relname, a.attname,
                           pg_catalog.format_type(a.atttypid, a.atttypmod))
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r' AND c.relpersistence = 'p'
                AND n.nspname = ANY ({selected})
                AND a.attnum > 0 AND NOT a.attisdropped
                AND a.atttypid IN ('pg_catalog.numeric'::pg_catalog.regtype,
                                   'pg_catalog.float4'::pg_catalog.regtype,
                                   'pg_catalog.float8'::pg_catalog.regtype)
              ORDER BY n.nspname, c.relname, a.attnum"
        ),
        |row| Ok(row.text(0)?.to_owned()),
    )
    .await?;

    let foreign_keys = rows(
        conn,
        "the foreign keys",
        &catalog::foreign_keys_query(&selected),
        |row| {
            let name = |i: usize| -> Result<TableName, String> {
                Ok(TableName {
                    schema: row.text(i)?.to_owned(),
                    name: row.text(i + 1)?.to_owned(),
                })
            };
            Ok(ForeignKey {
                oid: row
                    .text(0)?
                    .parse()
                    .map_err(|e| format!("constraint oid: {e}"))?,
                name: row.text(1)?.to_owned(),
                table: name(2)?,
                references: name(4)?,
            })
        },
    )
    .await?;
    Ok(Catalog {
        slots,
        schemas,
        relations,
        tables,
        numeric_columns,
        foreign_keys,
    })
}

pub(super) fn table_name(row: &Row) -> Result<TableName, String> {
    Ok(TableName {
        schema: row.text(0)?.to_owned(),
        name: row.text(1)?.to_owned(),
    })
}

/// `schema.table`, for reading.
pub(super) fn display(table: &TableName) -> String {
    format!("{}.{}", table.schema, table.name)
}

pub(super) fn schema_check(schema: &str) -> String {
    format!("{SCHEMAS} {schema}")
}

pub(super) fn free_slots(server: &Server) -> usize {
    server.max_slots.saturating_sub(server.slots.len())
}

pub(super) fn free_senders(server: &Server) -> usize {
    server.max_senders.saturating_sub(server.active_senders)
}

/// Why the probe slot cannot be created, when a check it depends on failed.
pub(super) fn probe_blocker(server: &Server) -> Option<&'static str> {
    if server.in_recovery {
        Some("the server is a standby")
    } else if server.wal_level != "logical" {
        Some("needs wal_level = logical")
    } else if !server.role.may_replicate() {
        Some("needs the REPLICATION privilege")
    } else if free_slots(server) == 0 {
        Some("no replication slot is free")
    } else if free_senders(server) == 0 {
        Some("no WAL sender is free")
    } else {
        None
    }
}
