//! Applying changes to the replica: target transactions, pipelining, and exactly-once.
//!
//! # Grouping and exactly-once
//!
//! The pipeline groups many source transactions into one *target transaction*, which always
//! ends at a source commit. [`ReplicaSink::commit`] writes that commit's end LSN into
//! `tributary.applied` inside the same transaction as the changes, then commits:
//!
//! ```text
//! BEGIN ─ SELECT progress FOR UPDATE ─ change ─ change ─ … ─┬─ (all results checked)
//!                                                           └─ UPDATE progress ─ COMMIT
//! ```
//!
//! So the replica's data and its applied LSN are one atomic fact: after a crash anywhere, the
//! replica equals the source at exactly the LSN it records, and the pipeline resumes there.
//! The position acknowledged to the source is only ever one `commit` returned for. The
//! progress row never moves backwards: a transaction whose end is not past the recorded
//! LSN would apply changes twice and is refused (an empty one is skipped).
//!
//! # Nothing is skipped
//!
//! Each INSERT, UPDATE and DELETE must change exactly one row (a batch of n changes,
//! n rows). A statement that errors, or a change that finds no row (which is no SQL error:
//! the server would happily commit without it), fails the target transaction.
//! COMMIT is only sent after every result of the transaction was received and checked, so
//! a transaction with a missing change is never committed. A failed transaction stays
//! failed ([`ReplicaSink::in_transaction`] is still true) until it is rolled back.
//!
//! # Batching
//!
//! A statement per change costs the server a Bind, an Execute and a Sync (with a network
//! flush) each, which dominates for small rows. So changes to one table that have the same
//! shape (kind and column set) are collected into a *batch* and sent as one statement whose
//! rows come from one `text[]` parameter per column (`ROWS FROM (unnest($1), …)`, see
//! `table.rs`). Every table has at most one open batch; it is sent when a change of another
//! shape arrives for the table, when it is full ([`MAX_BATCH_ROWS`]), when the batches hold
//! too much ([`MAX_BUFFERED_BYTES`]), before a TRUNCATE, and at commit.
//!
//! That reorders changes *across* tables inside a target transaction, never within a table.
//! It is safe because the apply session runs with `session_replication_role = replica`:
//! foreign-key checks and cascades, rules and ordinary triggers do not fire, so a statement
//! on one table cannot observe or affect another, and the transaction is atomic, so nobody
//! sees the order. (Triggers enabled `ALWAYS` or `REPLICA` on replica tables do fire and
//! must not depend on other tables.)
//!
//! An UPDATE or DELETE joins to its batch by key, so a batch never holds a key twice and
//! `RETURNING` the row's ordinality shows which change, if any, found no row. An UPDATE of a
//! key the open batch already updates, with the same columns, *replaces* that row's values:
//! both statements would have found the same row, and the later one overwrites every column
//! the earlier one set, so the row ends the same and the server does the work once. This is
//! what keeps hot rows (a counter, pgbench's branches) from cutting batches short. Any other
//! repeat (a DELETE, a different column set) sends the batch first. UPDATEs that change the key, and everything that finds its row by
//! scan, are sent as single statements after the table's open batch. A batch of one row is
//! sent as the single statement too.
//!
//! # Pipelining
//!
//! Waiting for each statement's result would cost a network round trip per statement.
//! Instead, statements are sent as soon as they are formed and their results collected
//! later, up to [`MAX_IN_FLIGHT`] statements or [`MAX_IN_FLIGHT_BYTES`] of parameters:
//!
//! ```text
//!   apply() ─► table batch ─► statement (prepared once per table and shape) ─► server
//!                       in-flight queue (FIFO) ◄── results, in order ◄─────────────┘
//! ```
//!
//! tokio-postgres pipelines requests on one connection in the order their futures are
//! first polled: its request futures encode and queue their messages before their first
//! await. The sink polls each request once as it is created, so requests leave in the order
//! they were formed; it keeps the futures in a FIFO queue and checks each reply (error,
//! row count) in that order, opportunistically on every `apply()` and fully before COMMIT.
//! A failure therefore surfaces on a later `apply()` or on `commit()`, naming the change it
//! belongs to (table, LSN, statement kind, the server's SQLSTATE and message). A batch that
//! fails with an SQL error is named by its LSN range, unless the error quotes a key
//! (duplicate key) that identifies the row.
//!
//! The queue is always polled from its front. That matters: tokio-postgres hands each
//! reply to its request's future through a small channel and stops reading the socket
//! while that channel is full, so the future the sink waits on must be the oldest one.
//!
//! Session settings are described in `replica.rs`, statement shapes in `table.rs`.

mod views;

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Statement;

use crate::change::{Change, ChangeKind, NanPolicy, TableName, Value};
use crate::pg::{quote_ident, quote_literal, ConnInfo, PgClient};
use crate::types::{FencingToken, Lsn};

use super::error::{DetailForDebug, SinkError};
use super::replica::{
    claim, open_session, read_applied_lsn, setup, READ_PROGRESS_SQL, RECORD_PROGRESS_SQL,
};
use super::table::{display_name, LoadError, PlanError, Planned, Source, TableMeta};

/// Statements sent but not yet checked, at most.
pub const MAX_IN_FLIGHT: usize = 512;
/// Parameter bytes of the statements in flight, at most.
pub const MAX_IN_FLIGHT_BYTES: usize = 16 << 20;
/// Rows in one batch, at most.
pub const MAX_BATCH_ROWS: usize = 1000;
/// Parameter bytes held in open batches (all tables), at most.
pub const MAX_BUFFERED_BYTES: usize = 16 << 20;

/// Per-row and per-statement overhead counted against the byte limits.
const ROW_BYTES: usize = 64;

/// A replica table's column, as [`ReplicaSink::describe`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaColumn {
    pub name: String,
    /// `format_type` with the modifier (`character varying(20)`), qualified unless in
    /// `pg_catalog`.
    pub type_sql: String,
    pub generated: bool,
}

/// What a change's relation is on the replica.
enum Relation {
    Table(usize),
    /// Its rows are the replica's to compute.
    MaterializedView,
    /// Not (yet) there: `CREATE MATERIALIZED VIEW` writes its rows before the command's
    /// capture message creates it on the replica.
    Missing,
}

/// A change whose columns do not match its replica table (a schema change on the source
/// that was not replayed): it names a column the table lacks, or it is an INSERT without
/// one of the table's stored columns. Nothing of it was applied.
pub struct Misfit {
    pub change: Change,
}

/// Applies changes to one replica database; see the module docs.
///
/// The methods are not cancel-safe: when a call is dropped before it completes (a
/// `select!` branch, a task abort), whether its statements ran is unknown, so drop the sink
/// too; a new one resumes from [`ReplicaSink::applied_lsn`]. After an error from `apply`,
/// call [`ReplicaSink::rollback`]; `commit` and `mark_applied` roll back by themselves.
pub struct ReplicaSink {
    /// Shared with the requests in flight, which outlive the call that sent them.
    client: Arc<PgClient>,
    database: String,
    /// The fencing token this session claimed the replica with.
    token: FencingToken,
    tables: Vec<TableEntry>,
    table_index: HashMap<TableName, usize>,
    /// The table of the previous change: consecutive changes mostly share one.
    last_table: Option<usize>,
    /// Tables with an open batch.
    open_batches: Vec<usize>,
    buffered_bytes: usize,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    /// Consecutive TRUNCATE records of one source TRUNCATE, sent as one statement.
    truncate: Option<TruncateGroup>,
    /// Relations of the replica known to be materialized views.
    materialized_views: HashSet<TableName>,
    /// Relations known to be missing from the replica (until the next schema change).
    missing: HashSet<TableName>,
    /// The materialized view refreshed for the run of changes being applied.
    refreshed: Option<TableName>,
    /// Relations missing on the replica that changes of the open target transaction were
    /// for, with the first change's LSN: placed when a replayed command creates them as a
    /// materialized view (which computes those rows), else the transaction fails.
    unplaced: Vec<(TableName, Option<Lsn>)>,
    nan: NanPolicy,
    state: TxState,
    /// What the progress row held when this transaction locked it; set once that reply is
    /// checked (always before anything else of the transaction).
    locked_progress: Option<Option<Lsn>>,
    progress: Option<ProgressStatements>,
    /// Reused buffers for a change's column indexes.
    scratch_new: Vec<u16>,
    scratch_old: Vec<u16>,
}

enum TxState {
    Idle,
    Open {
        /// Changes applied in this target transaction.
        changes: u64,
    },
    /// The open transaction failed; only [`ReplicaSink::rollback`] gets out.
    Failed {
        first: String,
        transient: bool,
    },
}

struct ProgressStatements {
    read: Statement,
    record: Statement,
}

struct TableEntry {
    name: TableName,
    meta: Arc<TableMeta>,
    shapes: HashMap<ShapeKey, Arc<Shape>>,
    /// The shape of the previous change to this table.
    last_shape: Option<Arc<Shape>>,
    open: Option<Batch>,
}

/// What decides a statement: the kind of change and which columns it carries, as the
/// replica's column indexes in the change's order (new row, then identity).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ShapeKey {
    kind: ChangeKind,
    new: Box<[u16]>,
    old: Box<[u16]>,
}

/// The prepared statements of one shape, and where their parameters come from.
struct Shape {
    key: ShapeKey,
    statement: Statement,
    params: Vec<Source>,
    batch: Option<Statement>,
    key_pairs: Vec<(usize, usize)>,
    key_params: Vec<usize>,
}

impl Shape {
    fn value<'c>(&self, change: &'c Change, param: usize) -> &'c Value {
        match self.params[param] {
            Source::New(i) => &change.columns[i].value,
            Source::Old(i) => &change.identity[i].value,
        }
    }

    /// Moves the parameter's value out of `change` as text (each parameter has its own
    /// source, see `TableMeta::plan`), saving a copy of every value on the hot path.
    fn take(&self, change: &mut Change, param: usize) -> Option<String> {
        let value = match self.params[param] {
            Source::New(i) => &mut change.columns[i].value,
            Source::Old(i) => &mut change.identity[i].value,
        };
        std::mem::replace(value, Value::Null).into_text()
    }

    /// Whether `change` keeps its key (an UPDATE that changes it moves the row). Compared
    /// as text, like [`Shape::key_hash`]: the JSON type a value came as is no type (with
    /// `numeric-data-types-as-string` a number is a string).
    fn keeps_key(&self, change: &Change) -> bool {
        self.key_pairs.iter().all(|&(new, old)| {
            change.columns[new].value.as_text() == change.identity[old].value.as_text()
        })
    }

    /// A hash of the change's key. Equal keys have equal hashes; a collision only ends a
    /// batch early.
    fn key_hash(&self, change: &Change) -> u64 {
        let mut hasher = DefaultHasher::new();
        for &param in &self.key_params {
            self.value(change, param).as_text().hash(&mut hasher);
        }
        hasher.finish()
    }
}

/// Changes of one shape to one table, waiting to be sent as one statement.
struct Batch {
    shape: Arc<Shape>,
    /// One array per statement parameter, one element per row.
    columns: Vec<Vec<Option<String>>>,
    lsns: Vec<Option<Lsn>>,
    /// Key hashes of the rows (UPDATE, DELETE) and the row each belongs to.
    keys: HashMap<u64, usize, BuildHasherDefault<KeyHashHasher>>,
    bytes: usize,
}

impl Batch {
    fn new(shape: Arc<Shape>) -> Batch {
        Batch {
            columns: vec![Vec::new(); shape.params.len()],
            shape,
            lsns: Vec::new(),
            keys: HashMap::default(),
            bytes: 0,
        }
    }

    /// Adds the change's row, taking its values; returns the bytes it holds.
    fn push(&mut self, change: &mut Change, key: Option<u64>) -> usize {
        let mut bytes = ROW_BYTES;
        for (param, column) in self.columns.iter_mut().enumerate() {
            let text = self.shape.take(change, param);
            bytes += text.as_ref().map_or(0, String::len);
            column.push(text);
        }
        if let Some(key) = key {
            self.keys.insert(key, self.lsns.len());
        }
        self.lsns.push(change.lsn);
        self.bytes += bytes;
        bytes
    }

    /// The row holding the same key as `change` (whose key hashes to `key`), if any.
    fn row_with_key(&self, change: &Change, key: u64) -> Option<usize> {
        let row = *self.keys.get(&key)?;
        let same = self.shape.key_params.iter().all(|&param| {
            self.columns[param][row].as_deref() == self.shape.value(change, param).as_text()
        });
        same.then_some(row)
    }

    /// Overwrites `row` with the values of `change`, an UPDATE of the same shape and key
    /// (see the module docs); the row keeps the LSN of its first change, the one a missing
    /// row would fail. Returns the bytes the batch holds now minus before.
    fn replace(&mut self, row: usize, change: &mut Change) -> isize {
        let mut delta = 0isize;
        for (param, column) in self.columns.iter_mut().enumerate() {
            let value = self.shape.take(change, param);
            let slot = &mut column[row];
            delta -= slot.as_ref().map_or(0, String::len) as isize;
            delta += value.as_ref().map_or(0, String::len) as isize;
            *slot = value;
        }
        self.bytes = self.bytes.saturating_add_signed(delta);
        delta
    }
}

/// Key hashes are hashes already.
#[derive(Default)]
struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct TruncateGroup {
    lsn: Option<Lsn>,
    tables: Vec<Arc<TableMeta>>,
}

type Reply = Result<Outcome, tokio_postgres::Error>;
type Request = Pin<Box<dyn Future<Output = Reply> + Send>>;

enum Outcome {
    Rows(u64),
    /// `RETURNING u.ord` of a batch: the rows that found their target.
    Ords(Vec<i64>),
    /// The lease row's token and the progress row's LSN as text, if there is a row; `None`
    /// without a lease row.
    Progress(Option<(i64, Option<String>)>),
}

/// A request sent to the server, and what its reply must be checked against.
struct InFlight {
    /// `None` once replied. Only ever reached through `Mutex::get_mut`, which does not
    /// lock: the mutex is there to make the sink `Sync` (request futures are not).
    request: Option<Mutex<Request>>,
    reply: Option<Reply>,
    op: Op,
    bytes: usize,
}

impl InFlight {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.reply.is_some() {
            return Poll::Ready(());
        }
        let request = self
            .request
            .as_mut()
            .expect("a request without a reply is still pending")
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        match request.as_mut().poll(cx) {
            Poll::Ready(reply) => {
                self.reply = Some(reply);
                self.request = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

enum Op {
    Begin,
    ReadProgress,
    /// One change, one row.
    Change {
        table: Arc<str>,
        kind: ChangeKind,
        lsn: Option<Lsn>,
        identity_always: bool,
    },
    /// A batch: one row per entry of `lsns`.
    Batch {
        table: Arc<str>,
        kind: ChangeKind,
        lsns: Vec<Option<Lsn>>,
        /// INSERT: the rows' keys as text, to trace a duplicate-key error to its row.
        keys: Vec<String>,
    },
    Truncate {
        tables: String,
        lsn: Option<Lsn>,
    },
    Refresh {
        view: String,
        lsn: Option<Lsn>,
    },
    RecordProgress {
        lsn: Lsn,
    },
}

impl ReplicaSink {
    /// Connects to the replica database; the session runs with
    /// `session_replication_role = replica` (no triggers or foreign-key checks fire on
    /// apply, as with native logical replication).
    ///
    /// It claims the replica for `token` first (see `replica.rs`): [`SinkError::Fenced`]
    /// when a newer owner did, and then for every transaction after a newer owner's claim.
    pub async fn connect(
        store: &ConnInfo,
        database: &str,
        token: FencingToken,
    ) -> Result<ReplicaSink, SinkError> {
        let client = open_session(store, database).await?;
        claim(&client, database, token).await?;
        Ok(ReplicaSink {
            client: Arc::new(client),
            database: database.to_owned(),
            token,
            tables: Vec::new(),
            table_index: HashMap::new(),
            last_table: None,
            open_batches: Vec::new(),
            buffered_bytes: 0,
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT + 1),
            in_flight_bytes: 0,
            truncate: None,
            materialized_views: HashSet::new(),
            missing: HashSet::new(),
            refreshed: None,
            unplaced: Vec::new(),
            nan: NanPolicy::Exact,
            state: TxState::Idle,
            locked_progress: None,
            progress: None,
            scratch_new: Vec::new(),
            scratch_old: Vec::new(),
        })
    }

    /// The replica database this session applies to.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The applied LSN recorded in the replica; `None` when none was recorded yet (the
    /// snapshot has not finished, or the replica was never prepared). Inside an open
    /// target transaction it is still the committed value: the transaction writes the row
    /// only in [`ReplicaSink::commit`].
    pub async fn applied_lsn(&mut self) -> Result<Option<Lsn>, SinkError> {
        self.usable()?;
        match read_applied_lsn(&self.client, &self.database).await {
            Ok(lsn) => Ok(lsn),
            Err(error) => Err(self.earlier_error_or(error).await),
        }
    }

    /// The fencing token this session claimed the replica with.
    /// How NaN and ±Infinity arrive from this source ([`NanPolicy::Exact`] unless set):
    /// under [`NanPolicy::Refuse`], a change to a table with a column that may hold them
    /// fails ([`SinkError::NanAsNull`]).
    pub fn with_nan_policy(self, nan: NanPolicy) -> ReplicaSink {
        ReplicaSink { nan, ..self }
    }

    pub fn nan_policy(&self) -> NanPolicy {
        self.nan
    }

    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Records `lsn` as applied in a transaction of its own: the consistent point when a
    /// snapshot completes, or an idle position. Refuses to move the progress backwards.
    pub async fn mark_applied(&mut self, lsn: Lsn) -> Result<(), SinkError> {
        if !matches!(self.state, TxState::Idle) {
            return Err(SinkError::Misuse(
                "mark_applied() was called while a target transaction is open",
            ));
        }
        let result = self.commit_at(lsn, true).await;
        if result.is_err() {
            self.abandon().await;
        }
        result
    }

    /// Applies one change inside the open target transaction (BEGIN on first use).
    ///
    /// Changes are batched and pipelined (see the module docs): an error may therefore
    /// surface on a later `apply()` or on `commit()`, naming the change that failed. After
    /// an error the transaction is failed and must be rolled back. A change that does not
    /// fit its table is given back untouched ([`Misfit`]); the transaction goes on.
    pub async fn apply(&mut self, change: Change) -> Result<Option<Misfit>, SinkError> {
        self.usable()?;
        let result = self.apply_change(change).await;
        self.note(result)
    }

    /// Sends what is buffered, records `end_lsn` as applied in the same transaction, and
    /// commits. After it returns `Ok`, everything up to `end_lsn` is durable. Without an
    /// open transaction it records the position alone.
    ///
    /// A transaction that applied changes must end past the recorded LSN (else it applies
    /// them twice: [`SinkError::ProgressBackwards`]); an empty one at or below it is
    /// skipped. On error the transaction is rolled back.
    pub async fn commit(&mut self, end_lsn: Lsn) -> Result<(), SinkError> {
        if let TxState::Failed { first, transient } = &self.state {
            let error = SinkError::Aborted {
                first: first.clone(),
                transient: *transient,
            };
            self.abandon().await;
            return Err(error);
        }
        let result = self.commit_at(end_lsn, false).await;
        if result.is_err() {
            self.abandon().await;
        }
        result
    }

    /// Runs a schema change captured on the source inside the open target transaction
    /// (BEGIN on first use), after everything applied before it, resolving names in
    /// `search_path` as the source session did. What the sink knew about tables is
    /// forgotten: their definitions may have changed.
    pub async fn execute_ddl(
        &mut self,
        statement: &str,
        search_path: &[String],
        settings: &[(String, String)],
        tag: &str,
        lsn: Option<Lsn>,
    ) -> Result<(), SinkError> {
        self.usable()?;
        let result = self
            .run_ddl(statement, search_path, settings, tag, lsn)
            .await;
        self.note(result)
    }

    async fn run_ddl(
        &mut self,
        statement: &str,
        search_path: &[String],
        settings: &[(String, String)],
        tag: &str,
        lsn: Option<Lsn>,
    ) -> Result<(), SinkError> {
        self.begin().await?;
        if let TxState::Open { changes } = &mut self.state {
            *changes += 1;
        }
        self.flush_truncate().await?;
        self.flush_batches().await?;
        self.drain().await?;
        let path = if search_path.is_empty() {
            "''".to_owned()
        } else {
            search_path
                .iter()
                .map(|s| quote_ident(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Function bodies were checked on the source; here they may name objects outside
        // the replicated schemas (pg_restore turns the check off for the same reason).
        // Literals in the command are read with the source session's settings; the apply
        // session's own come back afterwards (SET LOCAL would keep them to the commit).
        let mut set =
            format!("SET LOCAL search_path TO {path}; SET LOCAL check_function_bodies = off");
        let mut restore = "SET LOCAL search_path TO ''".to_owned();
        for (name, value) in settings {
            let name = quote_ident(name);
            let current: String = self
                .client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .map_err(setup(&self.database, "reading a setting"))?
                .get(0);
            set.push_str(&format!("; SET LOCAL {name} TO {}", quote_literal(value)));
            restore.push_str(&format!(
                "; SET LOCAL {name} TO {}",
                quote_literal(&current)
            ));
        }
        // The statement meets the source's trigger states, and the triggers it leaves
        // firing under apply are held again after it (see triggers.rs).
        super::triggers::unhold(&self.client)
            .await
            .map_err(setup(&self.database, "enabling held triggers"))?;
        let preparing = setup(&self.database, "setting up a schema change");
        self.client.batch_execute(&set).await.map_err(preparing)?;
        let ran = self.client.batch_execute(statement).await;
        self.forget_tables();
        ran.map_err(|source| SinkError::Ddl {
            tag: tag.to_owned(),
            statement: statement.to_owned(),
            lsn,
            source,
        })?;
        if tag == "CREATE MATERIALIZED VIEW" {
            self.place_unplaced().await?;
        }
        self.client
            .batch_execute(&restore)
            .await
            .map_err(setup(&self.database, "restoring the session's settings"))?;
        super::triggers::hold(&self.client, true)
            .await
            .map_err(setup(&self.database, "holding ALWAYS and REPLICA triggers"))
    }

    /// Of `tables`, those the replica has (in the open transaction) without a primary key
    /// or replica identity: wal2json drops UPDATEs and DELETEs of such tables on the source.
    pub async fn tables_without_identity(
        &mut self,
        tables: &[TableName],
    ) -> Result<Vec<TableName>, SinkError> {
        self.usable()?;
        self.drain().await?;
        let mut missing = Vec::new();
        for table in tables {
            match TableMeta::load(&self.client, table).await {
                Ok(meta) if !meta.has_usable_identity() => missing.push(table.clone()),
                Ok(_)
                | Err(LoadError::Missing | LoadError::MaterializedView | LoadError::NotATable(_)) =>
                    {}
                Err(LoadError::Sql(e)) => {
                    let error = setup(&self.database, "reading the replica's catalog")(e);
                    return Err(self.earlier_error_or(error).await);
                }
            }
        }
        Ok(missing)
    }

    /// The columns of `table` in the replica (in the open transaction), with their types'
    /// modifiers; `None` when there is no such table.
    pub async fn describe(
        &mut self,
        table: &TableName,
    ) -> Result<Option<Vec<ReplicaColumn>>, SinkError> {
        const SQL: &str = "\
            SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                   a.attgenerated <> '' \
              FROM pg_catalog.pg_class c \
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              LEFT JOIN pg_catalog.pg_attribute a \
                     ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE n.nspname = $1 AND c.relname = $2 \
             ORDER BY a.attnum";
        self.usable()?;
        self.drain().await?;
        let rows = match self.client.query(SQL, &[&table.schema, &table.name]).await {
            Ok(rows) => rows,
            Err(e) => {
                let error = setup(&self.database, "reading the replica's catalog")(e);
                return Err(self.earlier_error_or(error).await);
            }
        };
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            rows.iter()
                .filter_map(|row| {
                    Some(ReplicaColumn {
                        name: row.get::<_, Option<String>>(0)?,
                        type_sql: row.get(1),
                        generated: row.get(2),
                    })
                })
                .collect(),
        ))
    }

    /// Records which source table (by OID) each replica table is, in the open transaction
    /// if there is one: `tables` created, renamed or altered, `dropped` gone.
    pub async fn record_source_tables(
        &mut self,
        tables: &[(TableName, u32)],
        dropped: &[u32],
    ) -> Result<(), SinkError> {
        self.usable()?;
        let result = self.write_source_tables(tables, dropped).await;
        self.note(result)
    }

    async fn write_source_tables(
        &mut self,
        tables: &[(TableName, u32)],
        dropped: &[u32],
    ) -> Result<(), SinkError> {
        self.drain().await?;
        let recording = || setup(&self.database, "recording the source's table OIDs");
        for oid in dropped.iter().chain(tables.iter().map(|(_, oid)| oid)) {
            self.client
                .execute(
                    "DELETE FROM tributary.source_tables WHERE source_oid = $1",
                    &[oid],
                )
                .await
                .map_err(recording())?;
        }
        for (table, oid) in tables {
            self.client
                .execute(
                    "INSERT INTO tributary.source_tables AS t VALUES ($1, $2, $3) \
                     ON CONFLICT (schema_name, table_name) DO UPDATE SET source_oid = $3",
                    &[&table.schema, &table.name, oid],
                )
                .await
                .map_err(recording())?;
        }
        Ok(())
    }

    /// Forgets every table's definition and statements (after a schema change).
    fn forget_tables(&mut self) {
        debug_assert!(self.open_batches.is_empty() && self.in_flight.is_empty());
        self.tables.clear();
        self.table_index.clear();
        self.materialized_views.clear();
        self.missing.clear();
        self.refreshed = None;
        self.last_table = None;
    }

    /// Abandons the open target transaction, including whatever is buffered or in flight.
    pub async fn rollback(&mut self) -> Result<(), SinkError> {
        self.forget_transaction();
        if matches!(
            std::mem::replace(&mut self.state, TxState::Idle),
            TxState::Idle
        ) {
            return Ok(());
        }
        self.client
            .batch_execute("ROLLBACK")
            .await
            .map_err(setup(&self.database, "rolling back the target transaction"))
    }

    /// Whether a target transaction is open (also a failed one, until rolled back).
    pub fn in_transaction(&self) -> bool {
        !matches!(self.state, TxState::Idle)
    }

    fn usable(&self) -> Result<(), SinkError> {
        match &self.state {
            TxState::Failed { first, transient } => Err(SinkError::Aborted {
                first: first.clone(),
                transient: *transient,
            }),
            _ => Ok(()),
        }
    }

    /// Marks the open transaction failed when `result` is an error.
    fn note<T>(&mut self, result: Result<T, SinkError>) -> Result<T, SinkError> {
        if let Err(error) = &result {
            if !matches!(self.state, TxState::Idle) {
                self.state = TxState::Failed {
                    first: error.to_string(),
                    transient: error.is_transient(),
                };
            }
        }
        result
    }

    fn forget_transaction(&mut self) {
        // Dropping a request whose reply is outstanding is fine: the connection discards
        // replies nobody waits for.
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        for table in self.open_batches.drain(..) {
            self.tables[table].open = None;
        }
        self.buffered_bytes = 0;
        self.truncate = None;
        self.refreshed = None;
        self.unplaced.clear();
        self.locked_progress = None;
    }

    /// After an error in commit: make sure no transaction stays open, best effort (a lost
    /// connection ends it anyway).
    async fn abandon(&mut self) {
        if let Err(e) = self.rollback().await {
            tracing::debug!("rolling back after a failed commit: {e}");
        }
    }

    async fn apply_change(&mut self, mut change: Change) -> Result<Option<Misfit>, SinkError> {
        self.begin().await?;
        if let TxState::Open { changes } = &mut self.state {
            *changes += 1;
        }
        if change.kind == ChangeKind::Truncate {
            self.refreshed = None;
            return self.truncate(&change).await.map(|()| None);
        }
        self.flush_truncate().await?;

        let table = match self.relation(&change.table, change.lsn).await? {
            Relation::Table(table) => table,
            Relation::MaterializedView => {
                return self.refresh(&change.table, change.lsn).await.map(|()| None);
            }
            Relation::Missing => {
                if !self.unplaced.iter().any(|(t, _)| *t == change.table) {
                    self.unplaced.push((change.table, change.lsn));
                }
                return Ok(None);
            }
        };
        self.refreshed = None;
        let Some(shape) = self.shape(table, &change).await? else {
            return Ok(Some(Misfit { change }));
        };
        if shape.batch.is_none() || !shape.keeps_key(&change) {
            self.flush_batch(table).await?;
            let params = (0..shape.params.len())
                .map(|param| shape.take(&mut change, param))
                .collect();
            return self
                .send_single(table, &shape, change.lsn, params)
                .await
                .map(|()| None);
        }

        let key = (change.kind != ChangeKind::Insert).then(|| shape.key_hash(&change));
        if let (Some(key), Some(batch)) = (key, &mut self.tables[table].open) {
            if change.kind == ChangeKind::Update && Arc::ptr_eq(&batch.shape, &shape) {
                if let Some(row) = batch.row_with_key(&change, key) {
                    let delta = batch.replace(row, &mut change);
                    self.buffered_bytes = self.buffered_bytes.saturating_add_signed(delta);
                    return Ok(None);
                }
            }
        }
        let fits = self.tables[table].open.as_ref().is_none_or(|batch| {
            Arc::ptr_eq(&batch.shape, &shape)
                && key.is_none_or(|key| !batch.keys.contains_key(&key))
        });
        if !fits {
            self.flush_batch(table).await?;
        }
        let entry = &mut self.tables[table];
        let batch = match &mut entry.open {
            Some(batch) => batch,
            None => {
                self.open_batches.push(table);
                entry.open.insert(Batch::new(shape))
            }
        };
        self.buffered_bytes += batch.push(&mut change, key);
        if batch.lsns.len() >= MAX_BATCH_ROWS {
            self.flush_batch(table).await?;
        }
        if self.buffered_bytes > MAX_BUFFERED_BYTES {
            self.flush_batches().await?;
        }
        Ok(None)
    }

    /// Opens the target transaction unless one is open: BEGIN, and the progress row read
    /// and locked, both pipelined with the first change.
    async fn begin(&mut self) -> Result<(), SinkError> {
        if !matches!(self.state, TxState::Idle) {
            return Ok(());
        }
        let read = self.progress_statements().await?.read.clone();
        self.state = TxState::Open { changes: 0 };
        self.locked_progress = None;
        let client = Arc::clone(&self.client);
        let begin: Request = Box::pin(async move {
            client
                .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await
                .map(|()| Outcome::Rows(0))
        });
        self.push(begin, Op::Begin, ROW_BYTES).await?;
        let client = Arc::clone(&self.client);
        let read: Request = Box::pin(async move {
            let rows = client.query(&read, &[]).await?;
            Ok(Outcome::Progress(
                rows.first().map(|row| (row.get(0), row.get(1))),
            ))
        });
        self.push(read, Op::ReadProgress, ROW_BYTES).await
    }

    /// The progress statements, prepared on first use (outside any transaction), so that
    /// connecting works on a replica whose progress table does not exist yet.
    async fn progress_statements(&mut self) -> Result<&ProgressStatements, SinkError> {
        if self.progress.is_none() {
            self.drain().await?;
            let preparing = || setup(&self.database, "preparing the progress statements");
            let read = self
                .client
                .prepare(READ_PROGRESS_SQL)
                .await
                .map_err(preparing())?;
            let record = self
                .client
                .prepare_typed(RECORD_PROGRESS_SQL, &[Type::TEXT])
                .await
                .map_err(preparing())?;
            self.progress = Some(ProgressStatements { read, record });
        }
        Ok(self.progress.as_ref().expect("prepared above"))
    }

    /// Sends whatever is buffered, checks every reply, records `end_lsn` and commits.
    /// `strict`: refuse (rather than skip) an empty transaction that does not advance.
    async fn commit_at(&mut self, end_lsn: Lsn, strict: bool) -> Result<(), SinkError> {
        self.check_placed().await?;
        self.begin().await?;
        self.flush_truncate().await?;
        self.flush_batches().await?;
        // Every change must have succeeded, row count included, before COMMIT is sent.
        self.drain().await?;
        let changes = match self.state {
            TxState::Open { changes } => changes,
            _ => unreachable!("begin() opened the transaction and drain() succeeded"),
        };
        let recorded = self
            .locked_progress
            .take()
            .expect("the progress row is read right after BEGIN and checked by drain()");
        if let Some(applied) = recorded {
            if end_lsn < applied || (end_lsn == applied && changes > 0) {
                if changes == 0 && !strict {
                    tracing::debug!(%end_lsn, %applied, "nothing to record: already applied");
                    return self.rollback().await;
                }
                return Err(SinkError::ProgressBackwards {
                    database: self.database.clone(),
                    applied,
                    requested: end_lsn,
                });
            }
        }
        let record = self.progress_statements().await?.record.clone();
        let client = Arc::clone(&self.client);
        let lsn_text = end_lsn.to_string();
        let request: Request = Box::pin(async move {
            client
                .execute(&record, &[&lsn_text])
                .await
                .map(Outcome::Rows)
        });
        self.push(request, Op::RecordProgress { lsn: end_lsn }, ROW_BYTES)
            .await?;
        self.drain().await?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|source| SinkError::Commit {
                database: self.database.clone(),
                lsn: end_lsn,
                source,
            })?;
        self.state = TxState::Idle;
        tracing::debug!(%end_lsn, changes, "target transaction committed");
        Ok(())
    }

    /// Adds a TRUNCATE record to the group of its source TRUNCATE (same LSN, consecutive),
    /// sending the previous group if this one starts a new one. Tables truncated together
    /// on the source must be truncated together here: foreign keys between them forbid
    /// anything else.
    async fn truncate(&mut self, change: &Change) -> Result<(), SinkError> {
        let table = self.table(&change.table, change.lsn).await?;
        let meta = Arc::clone(&self.tables[table].meta);
        if let Some(group) = &mut self.truncate {
            if group.lsn == change.lsn {
                if !group.tables.iter().any(|t| Arc::ptr_eq(t, &meta)) {
                    group.tables.push(meta);
                }
                return Ok(());
            }
        }
        self.flush_truncate().await?;
        // Everything before the TRUNCATE goes first.
        self.flush_batches().await?;
        self.truncate = Some(TruncateGroup {
            lsn: change.lsn,
            tables: vec![meta],
        });
        Ok(())
    }

    async fn flush_truncate(&mut self) -> Result<(), SinkError> {
        let Some(group) = self.truncate.take() else {
            return Ok(());
        };
        let targets: Vec<String> = group.tables.iter().map(|t| t.truncate_target()).collect();
        let names: Vec<&str> = group.tables.iter().map(|t| &*t.display).collect();
        let sql = format!("TRUNCATE {}", targets.join(", "));
        let client = Arc::clone(&self.client);
        let bytes = ROW_BYTES + sql.len();
        let request: Request =
            Box::pin(async move { client.batch_execute(&sql).await.map(|()| Outcome::Rows(0)) });
        let op = Op::Truncate {
            tables: names.join(", "),
            lsn: group.lsn,
        };
        self.push(request, op, bytes).await
    }

    /// The index of the table in `self.tables`, loading its metadata on first use.
    async fn table(&mut self, name: &TableName, lsn: Option<Lsn>) -> Result<usize, SinkError> {
        match self.relation(name, lsn).await? {
            Relation::Table(index) => Ok(index),
            Relation::MaterializedView => Err(SinkError::NotATable {
                table: display_name(name),
                what: "materialized view",
                lsn,
                database: self.database.clone(),
            }),
            Relation::Missing => Err(self.missing(name, lsn)),
        }
    }

    fn missing(&self, name: &TableName, lsn: Option<Lsn>) -> SinkError {
        SinkError::MissingTable {
            table: display_name(name),
            lsn,
            database: self.database.clone(),
        }
    }

    /// What the change's relation is, loading a table's metadata on first use.
    async fn relation(
        &mut self,
        name: &TableName,
        lsn: Option<Lsn>,
    ) -> Result<Relation, SinkError> {
        if let Some(index) = self.last_table {
            if self.tables[index].name == *name {
                return Ok(Relation::Table(index));
            }
        }
        if let Some(&index) = self.table_index.get(name) {
            self.last_table = Some(index);
            return Ok(Relation::Table(index));
        }
        if self.materialized_views.contains(name) {
            return Ok(Relation::MaterializedView);
        }
        if self.missing.contains(name) {
            return Ok(Relation::Missing);
        }
        // tokio-postgres stops reading the socket while an earlier reply waits unread, so a
        // new request must not be awaited with replies in flight.
        self.drain().await?;
        let meta = match TableMeta::load(&self.client, name).await {
            Ok(meta) if self.nan == NanPolicy::Refuse && !meta.nan_columns().is_empty() => {
                return Err(SinkError::NanAsNull {
                    table: display_name(name),
                    columns: meta.nan_columns().join(", "),
                    lsn,
                });
            }
            Ok(meta) => meta,
            Err(LoadError::MaterializedView) => {
                self.materialized_views.insert(name.clone());
                return Ok(Relation::MaterializedView);
            }
            Err(LoadError::Missing) => {
                self.missing.insert(name.clone());
                return Ok(Relation::Missing);
            }
            Err(LoadError::NotATable(what)) => {
                return Err(SinkError::NotATable {
                    table: display_name(name),
                    what,
                    lsn,
                    database: self.database.clone(),
                })
            }
            Err(LoadError::Sql(e)) => {
                let error = setup(&self.database, "reading the replica's catalog")(e);
                return Err(self.earlier_error_or(error).await);
            }
        };
        let index = self.tables.len();
        self.tables.push(TableEntry {
            name: name.clone(),
            meta: Arc::new(meta),
            shapes: HashMap::new(),
            last_shape: None,
            open: None,
        });
        self.table_index.insert(name.clone(), index);
        self.last_table = Some(index);
        Ok(Relation::Table(index))
    }

    /// The statements for the change's shape, prepared on first use; `None` when the change
    /// does not fit the table: it names a column the table lacks, or it is an INSERT without
    /// one of the table's stored columns (checked once per shape).
    async fn shape(
        &mut self,
        table: usize,
        change: &Change,
    ) -> Result<Option<Arc<Shape>>, SinkError> {
        let mut new = std::mem::take(&mut self.scratch_new);
        let mut old = std::mem::take(&mut self.scratch_old);
        let entry = &mut self.tables[table];
        let resolved = entry
            .meta
            .resolve_into(change.columns.iter().map(|c| c.name.as_str()), &mut new)
            .and_then(|()| {
                entry
                    .meta
                    .resolve_into(change.identity.iter().map(|c| c.name.as_str()), &mut old)
            });
        let found = match resolved {
            Err(PlanError::MissingColumn(_)) => Ok(Ok(None)),
            Err(error) => Err(plan_error(&entry.meta, change, error)),
            Ok(()) => {
                let same = |shape: &Shape| {
                    shape.key.kind == change.kind
                        && *shape.key.new == new[..]
                        && *shape.key.old == old[..]
                };
                match &entry.last_shape {
                    Some(shape) if same(shape) => Ok(Ok(Some(Arc::clone(shape)))),
                    _ => {
                        let key = ShapeKey {
                            kind: change.kind,
                            new: new.as_slice().into(),
                            old: old.as_slice().into(),
                        };
                        match entry.shapes.get(&key) {
                            Some(shape) => {
                                entry.last_shape = Some(Arc::clone(shape));
                                Ok(Ok(Some(Arc::clone(shape))))
                            }
                            None if change.kind == ChangeKind::Insert
                                && !entry.meta.absent_from(&new).is_empty() =>
                            {
                                Ok(Ok(None))
                            }
                            None => Ok(Err(key)),
                        }
                    }
                }
            }
        };
        self.scratch_new = new;
        self.scratch_old = old;
        match found? {
            Ok(shape) => Ok(shape),
            Err(key) => self.prepare_shape(table, change, key).await.map(Some),
        }
    }

    async fn prepare_shape(
        &mut self,
        table: usize,
        change: &Change,
        key: ShapeKey,
    ) -> Result<Arc<Shape>, SinkError> {
        // As in `table`: no new request awaited while replies are in flight.
        self.drain().await?;
        let meta = Arc::clone(&self.tables[table].meta);
        let Planned {
            sql,
            params,
            batch_sql,
            key_pairs,
            key_params,
        } = meta
            .plan(key.kind, &key.new, &key.old)
            .map_err(|error| plan_error(&meta, change, error))?;
        let statement = self
            .prepare(&meta, change, &sql, Type::TEXT, params.len())
            .await?;
        let batch = match batch_sql {
            Some(sql) => Some(
                self.prepare(&meta, change, &sql, Type::TEXT_ARRAY, params.len())
                    .await?,
            ),
            None => None,
        };
        let shape = Arc::new(Shape {
            key,
            statement,
            params,
            batch,
            key_pairs,
            key_params,
        });
        let entry = &mut self.tables[table];
        entry.last_shape = Some(Arc::clone(&shape));
        let key = ShapeKey {
            kind: shape.key.kind,
            new: shape.key.new.clone(),
            old: shape.key.old.clone(),
        };
        entry.shapes.insert(key, Arc::clone(&shape));
        Ok(shape)
    }

    async fn prepare(
        &mut self,
        meta: &TableMeta,
        change: &Change,
        sql: &str,
        param_type: Type,
        params: usize,
    ) -> Result<Statement, SinkError> {
        tracing::debug!(table = %meta.display, sql, "preparing a statement");
        match self
            .client
            .prepare_typed(sql, &vec![param_type; params])
            .await
        {
            Ok(statement) => Ok(statement),
            Err(source) => {
                tracing::debug!(sql, "preparing failed: {}", DetailForDebug(&source));
                let error = SinkError::Statement {
                    table: meta.display.to_string(),
                    kind: change.kind,
                    lsn: change.lsn,
                    source,
                };
                Err(self.earlier_error_or(error).await)
            }
        }
    }

    /// Sends one change as its single-row statement.
    async fn send_single(
        &mut self,
        table: usize,
        shape: &Shape,
        lsn: Option<Lsn>,
        params: Vec<Option<String>>,
    ) -> Result<(), SinkError> {
        let meta = &self.tables[table].meta;
        let op = Op::Change {
            table: Arc::clone(&meta.display),
            kind: shape.key.kind,
            lsn,
            identity_always: meta.has_identity_always,
        };
        let bytes = ROW_BYTES + params.iter().flatten().map(String::len).sum::<usize>();
        let client = Arc::clone(&self.client);
        let statement = shape.statement.clone();
        let request: Request = Box::pin(async move {
            client
                .execute_raw(&statement, params)
                .await
                .map(Outcome::Rows)
        });
        self.push(request, op, bytes).await
    }

    /// Sends the table's open batch, if any.
    async fn flush_batch(&mut self, table: usize) -> Result<(), SinkError> {
        let Some(batch) = self.tables[table].open.take() else {
            return Ok(());
        };
        if let Some(position) = self.open_batches.iter().position(|&t| t == table) {
            self.open_batches.swap_remove(position);
        }
        self.buffered_bytes -= batch.bytes;
        let Batch {
            shape,
            columns,
            lsns,
            bytes,
            ..
        } = batch;
        if lsns.len() == 1 {
            let params = columns
                .into_iter()
                .map(|mut column| column.pop().expect("a batch of one row"))
                .collect();
            return self.send_single(table, &shape, lsns[0], params).await;
        }
        let kind = shape.key.kind;
        let keys = if kind == ChangeKind::Insert && !shape.key_params.is_empty() {
            row_keys(&columns, &shape.key_params, lsns.len())
        } else {
            Vec::new()
        };
        let op = Op::Batch {
            table: Arc::clone(&self.tables[table].meta.display),
            kind,
            lsns,
            keys,
        };
        let client = Arc::clone(&self.client);
        let statement = shape
            .batch
            .clone()
            .expect("only shapes with a batch statement open batches");
        let request: Request = if kind == ChangeKind::Insert {
            Box::pin(async move {
                client
                    .execute_raw(&statement, columns)
                    .await
                    .map(Outcome::Rows)
            })
        } else {
            Box::pin(async move {
                let params: Vec<&(dyn ToSql + Sync)> = columns
                    .iter()
                    .map(|column| column as &(dyn ToSql + Sync))
                    .collect();
                let rows = client.query(&statement, &params).await?;
                Ok(Outcome::Ords(rows.iter().map(|row| row.get(0)).collect()))
            })
        };
        self.push(request, op, bytes + ROW_BYTES).await
    }

    /// Sends every open batch.
    async fn flush_batches(&mut self) -> Result<(), SinkError> {
        while let Some(&table) = self.open_batches.last() {
            self.flush_batch(table).await?;
        }
        Ok(())
    }

    /// Sends `request` now (its first poll queues it on the connection, so requests leave
    /// in call order), then checks the replies that have arrived, and waits for the oldest
    /// while too much is in flight.
    async fn push(&mut self, request: Request, op: Op, bytes: usize) -> Result<(), SinkError> {
        let mut entry = InFlight {
            request: Some(Mutex::new(request)),
            reply: None,
            op,
            bytes,
        };
        poll_fn(|cx| {
            let _ = entry.poll(cx);
            Poll::Ready(())
        })
        .await;
        self.in_flight_bytes += bytes;
        self.in_flight.push_back(entry);
        while let Some(done) = self.next_reply(false).await {
            self.check(done)?;
        }
        while self.in_flight.len() > MAX_IN_FLIGHT || self.in_flight_bytes > MAX_IN_FLIGHT_BYTES {
            let done = self.next_reply(true).await.expect("the queue is not empty");
            self.check(done)?;
        }
        Ok(())
    }

    /// Waits for and checks every reply in flight.
    async fn drain(&mut self) -> Result<(), SinkError> {
        while let Some(done) = self.next_reply(true).await {
            self.check(done)?;
        }
        Ok(())
    }

    /// When a statement of the sink's own fails inside the transaction, the cause is often
    /// an earlier change (the transaction is aborted then, 25P02): report that one.
    async fn earlier_error_or(&mut self, error: SinkError) -> SinkError {
        match self.drain().await {
            Err(earlier) => earlier,
            Ok(()) => error,
        }
    }

    /// The oldest request once it has its reply; `None` when the queue is empty, or when
    /// the reply has not arrived and `wait` is false.
    async fn next_reply(&mut self, wait: bool) -> Option<InFlight> {
        let queue = &mut self.in_flight;
        poll_fn(|cx| {
            let Some(front) = queue.front_mut() else {
                return Poll::Ready(None);
            };
            match front.poll(cx) {
                Poll::Ready(()) => Poll::Ready(queue.pop_front()),
                Poll::Pending if wait => Poll::Pending,
                Poll::Pending => Poll::Ready(None),
            }
        })
        .await
    }

    /// Checks a reply against what its request expected.
    fn check(&mut self, done: InFlight) -> Result<(), SinkError> {
        self.check_reply(done).map_err(|error| self.diagnose(error))
    }

    /// `error` with its likely cause when the connector accepted NaN arriving as NULL: a
    /// NULL that was NaN on the source breaks a NOT NULL column, and cannot find its row
    /// under `REPLICA IDENTITY FULL`.
    fn diagnose(&self, error: SinkError) -> SinkError {
        if self.nan != NanPolicy::AsNull {
            return error;
        }
        let meta = |name: &str| self.tables.iter().find(|t| &*t.meta.display == name);
        let columns = match &error {
            SinkError::RowNotFound { table, .. } => meta(table)
                .filter(|t| t.meta.replica_identity == 'f')
                .map(|t| t.meta.nan_columns()),
            SinkError::Statement { table, source, .. }
            | SinkError::BatchStatement { table, source, .. } => source
                .as_db_error()
                .filter(|db| db.code().code() == "23502")
                .and_then(|db| {
                    let column = db.column()?;
                    meta(table).map(|t| {
                        let mut columns = t.meta.nan_columns();
                        columns.retain(|c| *c == column);
                        columns
                    })
                }),
            _ => None,
        };
        match columns {
            Some(columns) if !columns.is_empty() => SinkError::NanArrivedAsNull {
                columns: columns.join(", "),
                error: Box::new(error),
            },
            _ => error,
        }
    }

    fn check_reply(&mut self, done: InFlight) -> Result<(), SinkError> {
        self.in_flight_bytes -= done.bytes;
        let reply = done.reply.expect("only replied requests are checked");
        match done.op {
            Op::Begin => reply
                .map(drop)
                .map_err(setup(&self.database, "starting the target transaction")),
            Op::ReadProgress => match reply {
                Ok(Outcome::Progress(Some((token, text)))) if token == self.token.0 => {
                    self.locked_progress = Some(text.as_deref().map(parse_lsn));
                    Ok(())
                }
                Ok(Outcome::Progress(found)) => Err(SinkError::Fenced {
                    database: self.database.clone(),
                    token: self.token,
                    current: FencingToken(found.map_or(0, |(token, _)| token)),
                }),
                Ok(_) => unreachable!("the progress read returns its row"),
                Err(e) => Err(setup(&self.database, "reading the applied LSN")(e)),
            },
            Op::Change {
                table,
                kind,
                lsn,
                identity_always,
            } => match reply {
                Ok(Outcome::Rows(1)) => Ok(()),
                Ok(Outcome::Rows(0)) if kind != ChangeKind::Insert => Err(SinkError::RowNotFound {
                    table: table.to_string(),
                    kind,
                    lsn,
                    identity_always,
                }),
                Ok(Outcome::Rows(affected)) => Err(SinkError::RowCount {
                    table: table.to_string(),
                    kind,
                    lsn,
                    affected,
                    expected: 1,
                }),
                Ok(_) => unreachable!("a single change reports rows"),
                Err(source) => {
                    tracing::debug!(%table, ?lsn, "applying failed: {}", DetailForDebug(&source));
                    Err(SinkError::Statement {
                        table: table.to_string(),
                        kind,
                        lsn,
                        source,
                    })
                }
            },
            Op::Batch {
                table,
                kind,
                lsns,
                keys,
            } => check_batch(table, kind, &lsns, &keys, reply),
            Op::Truncate { tables, lsn } => reply.map(drop).map_err(|source| {
                tracing::debug!(%tables, ?lsn, "truncating failed: {}", DetailForDebug(&source));
                SinkError::Statement {
                    table: tables,
                    kind: ChangeKind::Truncate,
                    lsn,
                    source,
                }
            }),
            Op::Refresh { view, lsn } => reply.map(drop).map_err(|source| {
                tracing::debug!(%view, ?lsn, "refreshing failed: {}", DetailForDebug(&source));
                SinkError::Refresh { view, lsn, source }
            }),
            Op::RecordProgress { lsn } => match reply {
                Ok(Outcome::Rows(1)) => Ok(()),
                Ok(_) => Err(SinkError::Progress {
                    database: self.database.clone(),
                    lsn,
                    source: None,
                }),
                Err(source) => Err(SinkError::Progress {
                    database: self.database.clone(),
                    lsn,
                    source: Some(source),
                }),
            },
        }
    }
}

fn check_batch(
    table: Arc<str>,
    kind: ChangeKind,
    lsns: &[Option<Lsn>],
    keys: &[String],
    reply: Reply,
) -> Result<(), SinkError> {
    let expected = lsns.len() as u64;
    match reply {
        Ok(Outcome::Rows(affected)) if affected == expected => Ok(()),
        Ok(Outcome::Ords(ords)) if ords.len() as u64 == expected => Ok(()),
        Ok(Outcome::Ords(ords)) if (ords.len() as u64) < expected => {
            let mut found = vec![false; lsns.len()];
            for ord in ords {
                if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| found.get_mut(i)) {
                    *slot = true;
                }
            }
            let missing = found
                .iter()
                .position(|&f| !f)
                .expect("fewer rows than changes");
            Err(SinkError::RowNotFound {
                table: table.to_string(),
                kind,
                lsn: lsns[missing],
                identity_always: false,
            })
        }
        Ok(Outcome::Rows(affected)) => Err(SinkError::RowCount {
            table: table.to_string(),
            kind,
            lsn: lsns[0],
            affected,
            expected,
        }),
        Ok(Outcome::Ords(ords)) => Err(SinkError::RowCount {
            table: table.to_string(),
            kind,
            lsn: lsns[0],
            affected: ords.len() as u64,
            expected,
        }),
        Ok(Outcome::Progress(_)) => unreachable!("a batch reports rows"),
        Err(source) => {
            tracing::debug!(%table, first = ?lsns[0], "a batch failed: {}", DetailForDebug(&source));
            match duplicate_key_row(&source, keys) {
                Some(row) => Err(SinkError::Statement {
                    table: table.to_string(),
                    kind,
                    lsn: lsns[row],
                    source,
                }),
                None => Err(SinkError::BatchStatement {
                    table: table.to_string(),
                    kind,
                    rows: lsns.len(),
                    first_lsn: lsns[0],
                    last_lsn: lsns[lsns.len() - 1],
                    source,
                }),
            }
        }
    }
}

/// Each row's key as the server quotes it in a duplicate-key error: the values' text
/// joined by `", "`.
fn row_keys(columns: &[Vec<Option<String>>], key_params: &[usize], rows: usize) -> Vec<String> {
    (0..rows)
        .map(|row| {
            key_params
                .iter()
                .map(|&param| columns[param][row].as_deref().unwrap_or("null"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

/// The row of a batched INSERT whose key a unique violation quotes
/// (`Key (id)=(5) already exists.`), when it is one of `keys`: the last one, since when
/// the batch holds the key twice, the later row is the duplicate.
fn duplicate_key_row(error: &tokio_postgres::Error, keys: &[String]) -> Option<usize> {
    let db = error.as_db_error()?;
    if db.code().code() != "23505" {
        return None;
    }
    let detail = db.detail()?;
    let values = detail
        .strip_prefix("Key (")?
        .split_once(")=(")?
        .1
        .strip_suffix(") already exists.")?;
    keys.iter().rposition(|key| key == values)
}

fn plan_error(meta: &TableMeta, change: &Change, error: PlanError) -> SinkError {
    match error {
        PlanError::MissingColumn(column) => SinkError::MissingColumn {
            table: meta.display.to_string(),
            column,
            lsn: change.lsn,
        },
        PlanError::NoRowIdentity(reason) => SinkError::NoRowIdentity {
            table: meta.display.to_string(),
            kind: change.kind,
            lsn: change.lsn,
            reason,
        },
    }
}

/// `pg_lsn` prints as `X/X`, which [`Lsn`] parses.
pub(crate) fn parse_lsn(text: &str) -> Lsn {
    text.parse()
        .unwrap_or_else(|e| panic!("the server printed a pg_lsn tributary cannot read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_and_its_errors_can_cross_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ReplicaSink>();
        send_sync::<SinkError>();
    }

    #[test]
    fn batch_rows_render_keys_as_the_server_quotes_them() {
        let columns = vec![
            vec![Some("1".to_owned()), Some("2".to_owned())],
            vec![Some("a b".to_owned()), Some("c".to_owned())],
        ];
        assert_eq!(row_keys(&columns, &[0], 2), ["1", "2"]);
        assert_eq!(row_keys(&columns, &[0, 1], 2), ["1, a b", "2, c"]);
    }
}
