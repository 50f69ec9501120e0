//! tributary's own representation of decoded changes.
//!
//! Everything after the decoder works with these types; none of them knows wal2json or
//! JSON: positions are always there (`Lsn`, never optional) and commit times are times,
//! whatever options the format has. They are deliberately not `Serialize`: a serialized
//! type is a contract.

// In `types`, so that `pg`'s SQL helpers need not know the change model.
use crate::types::Lsn;
pub use crate::types::TableName;

/// One decoded message of the logical replication stream, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin(Begin),
    Change(Change),
    Commit(Commit),
    /// A logical message (`pg_logical_emit_message`), transactional or not.
    Logical(LogicalMessage),
}

/// When a source transaction committed, as the source's clock said.
pub type CommitTime = chrono::DateTime<chrono::Utc>;

#[derive(Debug, Clone, PartialEq)]
pub struct Begin {
    pub xid: u32,
    /// LSN of the transaction's commit record: transactions are decoded at commit, so BEGIN
    /// already knows where the transaction ends.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record, as on [`Commit::end_lsn`]. A sink whose applied
    /// position is at or past it has this transaction already.
    pub end_lsn: Lsn,
    pub commit_time: CommitTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub xid: u32,
    /// LSN of the commit record.
    pub lsn: Lsn,
    /// LSN just past the commit record: the position to acknowledge once the transaction is
    /// durable on the branch store, and the position a restart resumes after.
    pub end_lsn: Lsn,
    pub commit_time: CommitTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
    Truncate,
}

/// A row change (or a TRUNCATE) on one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    /// Where the change's WAL record starts.
    pub lsn: Lsn,
    pub table: TableName,
    /// New row values (INSERT, UPDATE). An UPDATE omits unchanged TOASTed columns: a column
    /// that is absent here is "not present" and must be left as it is, which is different
    /// from a column present with [`Value::Null`].
    pub columns: Vec<Column>,
    /// The old key (UPDATE, DELETE): primary key or replica identity columns, or the whole
    /// old row under `REPLICA IDENTITY FULL`. Empty for INSERT and TRUNCATE.
    pub identity: Vec<Column>,
}

impl Change {
    /// Roughly the memory the change holds, for budgets (exact to within a few words per
    /// column).
    pub fn approx_bytes(&self) -> usize {
        const PER_COLUMN: usize = std::mem::size_of::<Column>();
        let columns = self.columns.iter().chain(&self.identity);
        std::mem::size_of::<Change>()
            + self.table.schema.len()
            + self.table.name.len()
            + columns
                .map(|c| PER_COLUMN + c.name.len() + c.value.as_text().map_or(0, str::len))
                .sum::<usize>()
    }

    /// The new value of `column`: `None` when the column is not present in the change.
    pub fn new_value(&self, column: &str) -> Option<&Value> {
        self.columns
            .iter()
            .find(|c| c.name == column)
            .map(|c| &c.value)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub value: Value,
}

/// A column value, kept as exact text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A number exactly as the source wrote it; never converted through a float.
    Number(String),
    /// Any other value in the type's text output form (bytea as hex without `\x`).
    Text(String),
}

impl Value {
    /// The value in PostgreSQL text input form, `None` for NULL.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Null => None,
            Value::Bool(true) => Some("t"),
            Value::Bool(false) => Some("f"),
            Value::Number(text) | Value::Text(text) => Some(text),
        }
    }

    /// [`Value::as_text`], owned: moves the text out rather than copying it.
    pub fn into_text(self) -> Option<String> {
        match self {
            Value::Number(text) | Value::Text(text) => Some(text),
            other => other.as_text().map(str::to_owned),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogicalMessage {
    pub transactional: bool,
    /// Where the message's WAL record ends (what `pg_logical_emit_message` returned).
    pub lsn: Lsn,
    pub prefix: String,
    pub content: String,
}

/// How NaN, Infinity and -Infinity in `numeric`, `real` and `double precision` columns reach
/// the sink. wal2json before 2.6 writes them as JSON `null`, indistinguishable from SQL
/// NULL; 2.6 can send them as strings (`numeric-data-types-as-string`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NanPolicy {
    /// The source sends them exactly.
    Exact,
    /// They arrive as NULL, and the operator accepted that for the connector.
    AsNull,
    /// They would arrive as NULL and nobody accepted it: tables with such columns are
    /// refused.
    Refuse,
}

impl NanPolicy {
    /// The policy for a source that can (`numeric_as_string`) or cannot send them, and
    /// the connector's decision.
    pub fn new(numeric_as_string: bool, accepted: bool) -> NanPolicy {
        match (numeric_as_string, accepted) {
            (true, _) => NanPolicy::Exact,
            (false, true) => NanPolicy::AsNull,
            (false, false) => NanPolicy::Refuse,
        }
    }

    /// Whether a column of this type can hold NaN or ±Infinity that wal2json before 2.6
    /// sends as null: `numeric`, `float4`, `float8` themselves (domains and arrays over
    /// them arrive as strings).
    pub fn affects(type_oid: u32) -> bool {
        matches!(type_oid, 700 | 701 | 1700)
    }
}

#[cfg(test)]
mod nan_tests {
    use super::NanPolicy;

    #[test]
    fn nan_policy_from_the_source_and_the_decision() {
        for (numeric_as_string, accepted, policy) in [
            (true, false, NanPolicy::Exact),
            (true, true, NanPolicy::Exact),
            (false, true, NanPolicy::AsNull),
            (false, false, NanPolicy::Refuse),
        ] {
            assert_eq!(NanPolicy::new(numeric_as_string, accepted), policy);
        }
        for (oid, affected) in [
            (700, true),
            (701, true),
            (1700, true),
            (20, false),
            (1231, false),
        ] {
            assert_eq!(NanPolicy::affects(oid), affected, "{oid}");
        }
    }
}
