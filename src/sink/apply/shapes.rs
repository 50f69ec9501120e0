//! Shapes: what decides a change's statement (its kind and column set), and the statements
//! of each, prepared once per table and shape.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio_postgres::types::Type;
use tokio_postgres::Statement;

use super::tables::TableEntry;
use super::ReplicaSink;
use crate::change::{Change, ChangeKind, Value};
use crate::sink::error::{DetailForDebug, SinkError};
use crate::sink::table::{PlanError, Planned, Source, TableMeta};

/// What decides a statement: the kind of change and which columns it carries, as the
/// replica's column indexes in the change's order (new row, then identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct ShapeKey {
    pub(super) kind: ChangeKind,
    pub(super) new: Box<[u16]>,
    pub(super) old: Box<[u16]>,
}

/// The prepared statements of one shape, and where their parameters come from.
pub(super) struct Shape {
    pub(super) key: ShapeKey,
    pub(super) statement: Statement,
    pub(super) params: Vec<Source>,
    pub(super) batch: Option<Statement>,
    pub(super) key_pairs: Vec<(usize, usize)>,
    pub(super) key_params: Vec<usize>,
}

impl Shape {
    pub(super) fn value<'c>(&self, change: &'c Change, param: usize) -> &'c Value {
        match self.params[param] {
            Source::New(i) => &change.columns[i].value,
            Source::Old(i) => &change.identity[i].value,
        }
    }

    /// Moves the parameter's value out of `change` as text (each parameter has its own
    /// source, see `TableMeta::plan`), saving a copy of every value on the hot path.
    pub(super) fn take(&self, change: &mut Change, param: usize) -> Option<String> {
        let value = match self.params[param] {
            Source::New(i) => &mut change.columns[i].value,
            Source::Old(i) => &mut change.identity[i].value,
        };
        std::mem::replace(value, Value::Null).into_text()
    }

    /// Whether `change` keeps its key (an UPDATE that changes it moves the row). Compared
    /// as text, like [`Shape::key_hash`]: the JSON type a value came as is no type (with
    /// `numeric-data-types-as-string` a number is a string).
    pub(super) fn keeps_key(&self, change: &Change) -> bool {
        self.key_pairs.iter().all(|&(new, old)| {
            change.columns[new].value.as_text() == change.identity[old].value.as_text()
        })
    }

    /// A hash of the change's key. Equal keys have equal hashes; a collision only ends a
    /// batch early.
    pub(super) fn key_hash(&self, change: &Change) -> u64 {
        let mut hasher = DefaultHasher::new();
        for &param in &self.key_params {
            self.value(change, param).as_text().hash(&mut hasher);
        }
        hasher.finish()
    }
}

/// Where a change's shape was found.
enum Lookup {
    Known(Arc<Shape>),
    /// The change does not fit the table.
    Misfit,
    /// Not seen yet: its statements are to be prepared.
    New(ShapeKey),
}

impl TableEntry {
    /// The shape of `change`, whose columns are the table's `new` and `old`, among those
    /// known; a new INSERT shape without one of the table's stored columns is a misfit.
    fn lookup(&mut self, change: &Change, new: &[u16], old: &[u16]) -> Lookup {
        if let Some(shape) = &self.last_shape {
            if shape.key.kind == change.kind && *shape.key.new == *new && *shape.key.old == *old {
                return Lookup::Known(Arc::clone(shape));
            }
        }
        let key = ShapeKey {
            kind: change.kind,
            new: new.into(),
            old: old.into(),
        };
        match self.shapes.get(&key) {
            Some(shape) => {
                self.last_shape = Some(Arc::clone(shape));
                Lookup::Known(Arc::clone(shape))
            }
            None if change.kind == ChangeKind::Insert && !self.meta.absent_from(new).is_empty() => {
                Lookup::Misfit
            }
            None => Lookup::New(key),
        }
    }
}

impl ReplicaSink {
    /// The statements for the change's shape, prepared on first use; `None` when the change
    /// does not fit the table: it names a column the table lacks, or it is an INSERT without
    /// one of the table's stored columns (checked once per shape).
    pub(super) async fn shape(
        &mut self,
        table: usize,
        change: &Change,
    ) -> Result<Option<Arc<Shape>>, SinkError> {
        let mut new = std::mem::take(&mut self.scratch_new);
        let mut old = std::mem::take(&mut self.scratch_old);
        let entry = &mut self.tables[table];
        let found = entry
            .meta
            .resolve_into(change.columns.iter().map(|c| c.name.as_str()), &mut new)
            .and_then(|()| {
                entry
                    .meta
                    .resolve_into(change.identity.iter().map(|c| c.name.as_str()), &mut old)
            })
            .map(|()| entry.lookup(change, &new, &old));
        self.scratch_new = new;
        self.scratch_old = old;
        match found {
            Ok(Lookup::Known(shape)) => Ok(Some(shape)),
            Ok(Lookup::Misfit) | Err(PlanError::MissingColumn(_)) => Ok(None),
            Ok(Lookup::New(key)) => self.prepare_shape(table, change, key).await.map(Some),
            Err(error) => Err(plan_error(&self.tables[table].meta, change, error)),
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
        entry.shapes.insert(shape.key.clone(), Arc::clone(&shape));
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
                    lsn: Some(change.lsn),
                    source,
                };
                Err(self.earlier_error_or(error).await)
            }
        }
    }
}

fn plan_error(meta: &TableMeta, change: &Change, error: PlanError) -> SinkError {
    match error {
        PlanError::MissingColumn(column) => SinkError::MissingColumn {
            table: meta.display.to_string(),
            column,
            lsn: Some(change.lsn),
        },
        PlanError::NoRowIdentity(reason) => SinkError::NoRowIdentity {
            table: meta.display.to_string(),
            kind: change.kind,
            lsn: Some(change.lsn),
            reason,
        },
    }
}
