//! Decoder for wal2json format version 2, and the plugin options tributary asks for.
//!
//! Pure: bytes in, a [`Message`] or a [`DecodeError`] out, no IO. Nothing outside this file
//! sees JSON: the serde structs below are private and turned into [`crate::change`] types.
//!
//! # The format
//!
//! With `format-version 2` every XLogData payload is one JSON object (no trailing newline;
//! `pg_recvlogical` adds one). With the options from [`PluginOptions::to_options`] the
//! records look like this (verified against PostgreSQL 15 with wal2json 2.5, and against
//! `wal2json.c` of 2.5 and 2.6, `pg_decode_*_v2`):
//!
//! ```text
//! {"action":"B","xid":731,"timestamp":"2024-11-21 20:12:39.02236+00","lsn":"0/1541608","nextlsn":"0/1541638"}
//! {"action":"I","xid":731,"timestamp":"…","lsn":"0/1541470","schema":"public","table":"t",
//!  "columns":[{"name":"id","value":1},{"name":"s","value":"x"}]}
//! {"action":"U", … ,"columns":[…new row…],"identity":[…old key…]}
//! {"action":"D", … ,"identity":[…old key…]}
//! {"action":"T", … ,"schema":"public","table":"t"}              one record per truncated table
//! {"action":"M","xid":731,"timestamp":"…","lsn":"0/15546F0","transactional":true,"prefix":"p","content":"text"}
//! {"action":"C","xid":731,"timestamp":"…","lsn":"0/1541608","nextlsn":"0/1541638"}
//! ```
//!
//! - `lsn` on **B and C is the same value: the start of the commit record** (wal2json prints
//!   `txn->final_lsn` on B and `commit_lsn` on C); `nextlsn` on both is the end of the commit
//!   record (`txn->end_lsn`), the position to acknowledge once the transaction is durable.
//!   The JSON never gives the transaction's first LSN; the walsender puts that in the
//!   XLogData header of the B message (and the commit's end in that of the C message), so
//!   [`Begin`] carries the commit LSN and its end. wal2json decodes a transaction at its commit,
//!   so transactions arrive whole, one after another, in commit order. `timestamp` on every
//!   record of a transaction is its commit time, always ISO but in the walsender session's
//!   `TimeZone`; B and C carry it as a [`CommitTime`].
//! - The decoded types have no optional fields for wal2json's options: the options
//!   tributary asks for always give B and C their positions, xid and time, and every change
//!   and message its `lsn`; a record without them is an error.
//! - `lsn` on I/U/D/T is the start of that change's WAL record; on M it is the *end* of the
//!   message record (what `pg_logical_emit_message` returned).
//! - A non-transactional M has `"xid":null` and `"timestamp":null`. M `content` is the
//!   payload as a C string: wal2json cuts it at the first NUL byte and copies other bytes
//!   unchanged, so binary payloads arrive as invalid UTF-8. Such an M record is decoded
//!   lossily (invalid bytes become U+FFFD) rather than stopping the pipeline for somebody
//!   else's message; any other record that is not UTF-8 is an error.
//! - `identity` holds the replica identity columns (the primary key by default, the whole
//!   old row under `REPLICA IDENTITY FULL`). On an UPDATE that keeps the key it is taken
//!   from the new row; on one that changes the key it carries the old key while `columns`
//!   carries the new one. wal2json drops an UPDATE/DELETE on a table without a replica
//!   identity with only a server-side WARNING: preflight has to catch those tables.
//!
//! # Values
//!
//! `int2/4/8`, `oid`, `float4/8` and `numeric` are bare JSON numbers, `bool` is
//! `true`/`false`, SQL NULL is `null`, everything else (including domains over numeric
//! types, arrays, json) is a JSON string holding the type's text output. bytea is hex
//! without the `\x` (so it needs `bytea_output=hex`).
//!
//! **Exact numbers.** A value is captured as raw JSON text and classified by its first
//! byte; a number becomes [`Value::Number`] with exactly the text wal2json wrote
//! (`12345678901234567890.123456789`, `-0.000000000000000000001`, `1e-07`, `1.5e+300`). It
//! never passes through `f64`.
//!
//! **NaN caveat.** wal2json 2.5 writes `NaN`, `Infinity` and `-Infinity` of those numeric
//! types as `null`, so they cannot be told from SQL NULL. 2.6's
//! `numeric-data-types-as-string` writes every value of those types as a JSON string
//! (`"1"`, `"1.5"`, `"NaN"`), in old keys and REPLICA IDENTITY FULL old rows too; `bool`
//! stays `true`/`false`. wal2json 2.7 (PostgreSQL 18's) writes the same: its changes are to
//! options tributary does not request (`include-types`, `include-default`), new options
//! (`partition-root`; `include-empty-transaction`, on by default as before) and
//! `output_plugin_libraries` support. Verified on 17 with 2.6 and on 18 with 2.7
//! (`tests/nan.rs`).
//!
//! This decoder turns a JSON string into [`Value::Text`] whatever the column type (it is
//! not told the type), and [`Value::as_text`] is the same either way: nothing after the
//! decoder may read a column's type from the variant. The sink applies every value as text
//! cast to its column's type; what shows values to people (`tributary tail`) asks the
//! catalog which columns have the types of [`sends_as_number`].
//!
//! **TOAST.** An UPDATE omits columns whose value is an unchanged TOASTed datum. Such a
//! column is simply absent from [`Change::columns`] (it must be left as it is), which is
//! different from a column present with [`Value::Null`].
//!
//! # wal2json quirks avoided
//!
//! Two options write text without JSON escaping, which is not valid JSON, so neither is
//! requested: `include-types` (a type from a schema that needs quoting comes out as
//! `"type":"Typ S"."Mood"`) and `include-default` (default expressions).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::change::{
    Begin, Change, ChangeKind, Column, Commit, CommitTime, LogicalMessage, Message, TableName,
    Value,
};
use crate::types::Lsn;

/// Longest input excerpt an error carries.
const EXCERPT_BYTES: usize = 200;

/// A record that is not valid wal2json format-version 2 output.
///
/// The message says what was wrong and quotes the start of the record (at most 200
/// bytes), so an operator can find it. Note that the excerpt may contain row data.
#[derive(Debug, thiserror::Error)]
#[error("invalid wal2json record: {reason}; the record starts: {excerpt}")]
pub struct DecodeError {
    reason: String,
    excerpt: String,
}

impl DecodeError {
    fn new(input: &[u8], reason: impl Into<String>) -> DecodeError {
        DecodeError {
            reason: reason.into(),
            excerpt: excerpt(input),
        }
    }
}

/// The first [`EXCERPT_BYTES`] of `input`, cut on a UTF-8 character boundary, with
/// control characters escaped so the excerpt stays on one log line.
fn excerpt(input: &[u8]) -> String {
    let mut end = input.len().min(EXCERPT_BYTES);
    // Step back over continuation bytes so a multi-byte character is not split.
    while end < input.len() && end > EXCERPT_BYTES - 3 && (input[end] & 0xc0) == 0x80 {
        end -= 1;
    }
    let mut text = String::with_capacity(end + 8);
    for c in String::from_utf8_lossy(&input[..end]).chars() {
        if c.is_control() {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    if end < input.len() {
        text.push('…');
    }
    text
}

/// Decodes one wal2json format-version 2 record.
pub fn decode(input: &[u8]) -> Result<Message, DecodeError> {
    // One UTF-8 check of the whole record (fast on mostly-ASCII text) lets serde_json skip
    // its per-string checks, which otherwise cost more than all the JSON parsing.
    match std::str::from_utf8(input) {
        Ok(text) => decode_text(text),
        Err(err) => decode_non_utf8(input, err),
    }
}

fn decode_text(text: &str) -> Result<Message, DecodeError> {
    let input = text.as_bytes();
    // serde would also accept a struct written as a JSON array; wal2json never writes one.
    match input.trim_ascii_start().first() {
        Some(b'{') => {}
        Some(_) => return Err(DecodeError::new(input, "not a JSON object")),
        None => return Err(DecodeError::new(input, "empty record")),
    }
    let record: Record<'_> = serde_json::from_str(text).map_err(|e| {
        let reason = match sniff_action(input) {
            Some(action) => format!("{action} record: {e}"),
            None => e.to_string(),
        };
        DecodeError::new(input, reason)
    })?;
    record.into_message(input)
}

/// A logical message's content may be any bytes (see the module doc): decode it lossily.
/// Anything else that is not UTF-8 is an error, since replacing bytes would change data.
fn decode_non_utf8(input: &[u8], err: std::str::Utf8Error) -> Result<Message, DecodeError> {
    let action = sniff_action(input);
    if action == Some("M") {
        // The sniffed action is the parsed one: serde rejects a second "action".
        return decode_text(&String::from_utf8_lossy(input));
    }
    let what = action.map_or("record".to_owned(), |a| format!("{a} record"));
    Err(DecodeError::new(
        input,
        format!(
            "{what} is not valid UTF-8 (byte {}); the source database must use the UTF8 encoding",
            err.valid_up_to()
        ),
    ))
}

/// The action letter, if the record starts the way wal2json writes it.
fn sniff_action(input: &[u8]) -> Option<&'static str> {
    const PREFIX: &[u8] = b"{\"action\":\"";
    let rest = input.strip_prefix(PREFIX)?;
    if rest.get(1) != Some(&b'"') {
        return None;
    }
    Some(match rest[0] {
        b'B' => "B",
        b'C' => "C",
        b'I' => "I",
        b'U' => "U",
        b'D' => "D",
        b'T' => "T",
        b'M' => "M",
        _ => return None,
    })
}

/// One record, any action. Fields wal2json adds under options tributary does not use
/// (`origin`, `pk`, `type`, `typeoid`, `optional`, `position`, `default`) are ignored.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    action: Option<Str<'a>>,
    xid: Option<u32>,
    #[serde(borrow)]
    timestamp: Option<Str<'a>>,
    #[serde(borrow)]
    lsn: Option<Str<'a>>,
    #[serde(borrow)]
    nextlsn: Option<Str<'a>>,
    #[serde(borrow)]
    schema: Option<Str<'a>>,
    #[serde(borrow)]
    table: Option<Str<'a>>,
    columns: Option<Columns>,
    identity: Option<Columns>,
    transactional: Option<bool>,
    #[serde(borrow)]
    prefix: Option<Str<'a>>,
    #[serde(borrow)]
    content: Option<Str<'a>>,
}

impl Record<'_> {
    fn into_message(self, input: &[u8]) -> Result<Message, DecodeError> {
        let Some(action) = self.action else {
            return Err(DecodeError::new(input, "no \"action\" field"));
        };
        let action = action.0;
        let missing = |field: &str| {
            DecodeError::new(input, format!("{action} record has no \"{field}\" field"))
        };
        // tributary always asks for include-lsn, -xids and -timestamp (`to_options`): a
        // record without them is not one it asked for, and the pipeline needs them all.
        let lsn = |field: &str, value: Option<Str<'_>>| -> Result<Lsn, DecodeError> {
            let text = value.ok_or_else(|| missing(field))?;
            text.0.parse().map_err(|_| {
                DecodeError::new(
                    input,
                    format!("{action} record: \"{field}\" is not an LSN: {:?}", text.0),
                )
            })
        };
        let time = |value: Option<Str<'_>>| -> Result<CommitTime, DecodeError> {
            let text = value.ok_or_else(|| missing("timestamp"))?;
            commit_time(&text.0).ok_or_else(|| {
                DecodeError::new(
                    input,
                    format!("{action} record: \"timestamp\" is not a time: {:?}", text.0),
                )
            })
        };
        let kind = match &*action {
            "B" => {
                return Ok(Message::Begin(Begin {
                    end_lsn: lsn("nextlsn", self.nextlsn)?,
                    commit_lsn: lsn("lsn", self.lsn)?,
                    xid: self.xid.ok_or_else(|| missing("xid"))?,
                    commit_time: time(self.timestamp)?,
                }))
            }
            "C" => {
                return Ok(Message::Commit(Commit {
                    end_lsn: lsn("nextlsn", self.nextlsn)?,
                    lsn: lsn("lsn", self.lsn)?,
                    xid: self.xid.ok_or_else(|| missing("xid"))?,
                    commit_time: time(self.timestamp)?,
                }))
            }
            "M" => {
                let transactional = self.transactional.ok_or_else(|| missing("transactional"))?;
                let prefix = self.prefix.ok_or_else(|| missing("prefix"))?;
                let content = self.content.ok_or_else(|| missing("content"))?;
                return Ok(Message::Logical(LogicalMessage {
                    transactional,
                    lsn: lsn("lsn", self.lsn)?,
                    prefix: prefix.into_string(),
                    content: content.into_string(),
                }));
            }
            "I" => ChangeKind::Insert,
            "U" => ChangeKind::Update,
            "D" => ChangeKind::Delete,
            "T" => ChangeKind::Truncate,
            other => return Err(DecodeError::new(input, format!("unknown action {other:?}"))),
        };
        let schema = self.schema.ok_or_else(|| missing("schema"))?;
        let name = self.table.ok_or_else(|| missing("table"))?;
        // What each action needs to be applied: new values for I and U, the old key for
        // U and D; T carries nothing but the table.
        let (columns, identity) = match kind {
            ChangeKind::Insert => (
                self.columns.ok_or_else(|| missing("columns"))?,
                self.identity,
            ),
            ChangeKind::Update => (
                self.columns.ok_or_else(|| missing("columns"))?,
                Some(self.identity.ok_or_else(|| missing("identity"))?),
            ),
            ChangeKind::Delete => (
                Columns(Vec::new()),
                Some(self.identity.ok_or_else(|| missing("identity"))?),
            ),
            ChangeKind::Truncate => (Columns(Vec::new()), None),
        };
        Ok(Message::Change(Change {
            kind,
            lsn: lsn("lsn", self.lsn)?,
            table: TableName {
                schema: schema.into_string(),
                name: name.into_string(),
            },
            columns: columns.0,
            identity: identity.map(|c| c.0).unwrap_or_default(),
        }))
    }
}

/// wal2json's commit time (`2024-11-21 20:12:39.02236+00`): always ISO
/// (`timestamptz_to_str`), with the offset of the walsender session's `TimeZone`.
fn commit_time(text: &str) -> Option<CommitTime> {
    chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .ok()
        .map(|t| t.to_utc())
}

/// A JSON string, borrowed from the input unless it contained escapes.
///
/// serde's own `Cow<str>` only borrows when it is the field type itself, not inside an
/// `Option`; this newtype borrows wherever it is used.
struct Str<'a>(Cow<'a, str>);

impl Str<'_> {
    fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Str<'a>, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// A `columns` or `identity` array, converted element by element into owned [`Column`]s
/// so no intermediate vector of borrowed columns is built.
struct Columns(Vec<Column>);

impl<'de> Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Columns, D::Error> {
        struct ColumnsVisitor;
        impl<'de> Visitor<'de> for ColumnsVisitor {
            type Value = Columns;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of column objects")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Columns, A::Error> {
                let mut columns = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(64));
                while let Some(raw) = seq.next_element::<RawColumn<'de>>()? {
                    columns.push(raw.into_column().map_err(de::Error::custom)?);
                }
                Ok(Columns(columns))
            }
        }
        deserializer.deserialize_seq(ColumnsVisitor)
    }
}

/// One element of `columns` or `identity`, borrowed from the input.
struct RawColumn<'a> {
    name: Str<'a>,
    /// `None` only when the field is absent; JSON `null` is `Some("null")`.
    value: Option<&'a RawValue>,
}

// Written by hand rather than derived: a derived struct also accepts the array form
// `["id",1]`, and `Option<&RawValue>` would read `null` as absent.
impl<'de: 'a, 'a> Deserialize<'de> for RawColumn<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawColumn<'a>, D::Error> {
        struct ColumnVisitor;
        impl<'de> Visitor<'de> for ColumnVisitor {
            type Value = RawColumn<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a column object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawColumn<'de>, A::Error> {
                let mut name = None;
                let mut value = None;
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    match &*key.0 {
                        "name" if name.is_none() => name = Some(map.next_value()?),
                        "value" if value.is_none() => value = Some(map.next_value()?),
                        "name" | "value" => {
                            return Err(de::Error::custom(format!("duplicate field `{}`", key.0)))
                        }
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
                Ok(RawColumn { name, value })
            }
        }
        deserializer.deserialize_map(ColumnVisitor)
    }
}

impl RawColumn<'_> {
    fn into_column(self) -> Result<Column, String> {
        let Some(raw) = self.value else {
            return Err(format!("column {:?} has no \"value\"", self.name.0));
        };
        let value = value_from_raw(raw.get())
            .map_err(|what| format!("column {:?}: value is {what}", self.name.0))?;
        Ok(Column {
            name: self.name.into_string(),
            value,
        })
    }
}

/// Classifies raw JSON, already validated by serde_json, by its first byte.
fn value_from_raw(raw: &str) -> Result<Value, &'static str> {
    Ok(match raw.as_bytes().first() {
        Some(b'"') => {
            let inner = raw
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .ok_or("an invalid string")?;
            // Without a backslash the JSON text is the string itself: skip the unescaper.
            if inner.contains('\\') {
                Value::Text(serde_json::from_str(raw).map_err(|_| "an invalid string")?)
            } else {
                Value::Text(inner.to_owned())
            }
        }
        Some(b'n') => Value::Null,
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'-' | b'0'..=b'9') => Value::Number(raw.to_owned()),
        Some(b'{') => return Err("an object"),
        Some(b'[') => return Err("an array"),
        _ => return Err("not a JSON value"),
    })
}

/// Whether wal2json writes the values of the type `type_oid` as bare JSON numbers (as
/// JSON strings under `numeric-data-types-as-string`): `int2`, `int4`, `int8`, `oid`,
/// `float4`, `float8` and `numeric`, by the column's own type (a domain over one of them,
/// or an array of them, is a string either way).
pub fn sends_as_number(type_oid: u32) -> bool {
    matches!(type_oid, 20 | 21 | 23 | 26 | 700 | 701 | 1700)
}

/// Options passed to START_REPLICATION.
#[derive(Debug, Clone, Default)]
pub struct PluginOptions {
    /// Ask wal2json 2.6+ for `numeric-data-types-as-string`, so NaN and ±Infinity are not
    /// turned into `null`. wal2json 2.5 rejects the option at START_REPLICATION.
    pub numeric_as_string: bool,
    /// Only these tables (`add-tables`); all tables when empty. Transactions that touch none
    /// of them still arrive as empty B/C pairs.
    pub add_tables: Vec<TableName>,
    /// Only logical messages with these prefixes (`add-msg-prefixes`); all when empty.
    /// wal2json cannot express a prefix that is empty or contains `,`, `\` or white space;
    /// [`PluginOptions::check`] rejects those.
    pub add_msg_prefixes: Vec<String>,
}

/// A [`PluginOptions`] value wal2json cannot be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("wal2json cannot filter on message prefix {0:?}: use a non-empty prefix without ',', '\\' or white space")]
pub struct InvalidPluginOptions(String);

impl PluginOptions {
    /// The `(name, value)` pairs for START_REPLICATION, names unquoted.
    pub fn to_options(&self) -> Vec<(&'static str, String)> {
        let mut options = vec![
            ("format-version", "2".to_owned()),
            ("include-transaction", "1".to_owned()),
            ("include-xids", "1".to_owned()),
            ("include-timestamp", "1".to_owned()),
            ("include-lsn", "1".to_owned()),
            // wal2json's default is 1. Type names cost about a fifth of the walsender's CPU
            // and of the bytes decoded; the sink takes types from the replica's catalog.
            ("include-types", "0".to_owned()),
            // The default, but the decoder requires `schema`, so do not depend on it.
            ("include-schemas", "1".to_owned()),
        ];
        if self.numeric_as_string {
            options.push(("numeric-data-types-as-string", "1".to_owned()));
        }
        if !self.add_tables.is_empty() {
            let mut list = String::new();
            for (i, table) in self.add_tables.iter().enumerate() {
                if i > 0 {
                    list.push(',');
                }
                escape_identifier(&mut list, &table.schema);
                list.push('.');
                escape_identifier(&mut list, &table.name);
            }
            options.push(("add-tables", list));
        }
        if !self.add_msg_prefixes.is_empty() {
            options.push(("add-msg-prefixes", self.add_msg_prefixes.join(",")));
        }
        options
    }

    /// Rejects message prefixes wal2json's list parser would split, mangle or (when the
    /// list ends up empty) silently treat as "no filter".
    pub fn check(&self) -> Result<(), InvalidPluginOptions> {
        match self
            .add_msg_prefixes
            .iter()
            .find(|p| p.is_empty() || p.bytes().any(|b| b == b',' || b == b'\\' || is_c_space(b)))
        {
            Some(bad) => Err(InvalidPluginOptions(bad.clone())),
            None => Ok(()),
        }
    }
}

/// C's `isspace` in the C locale, which wal2json's list parsers stop at (includes `\v`,
/// unlike `u8::is_ascii_whitespace`).
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Escapes a name for `add-tables`: wal2json splits the list at unescaped `,` and white
/// space, splits each entry at the first unescaped `.`, reads a bare `*` as "all", and
/// drops each `\` keeping the character after it.
fn escape_identifier(out: &mut String, name: &str) {
    for c in name.chars() {
        if matches!(c, ',' | '.' | '\\' | '*') || (c.is_ascii() && is_c_space(c as u8)) {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    // Real records from PostgreSQL 15 + wal2json 2.5 (pg_recvlogical with the options of
    // `to_options`, but include-types on, so they also show the "type" key is ignored);
    // only long rows are shortened where noted.
    const BEGIN: &str = r#"{"action":"B","xid":731,"timestamp":"2026-11-21 20:12:39.02236+00","lsn":"0/1541608","nextlsn":"0/1541638"}"#;
    const COMMIT: &str = r#"{"action":"C","xid":731,"timestamp":"2026-11-21 20:12:39.02236+00","lsn":"0/1541608","nextlsn":"0/1541638"}"#;
    const INSERT_ALL_TYPES: &str = r#"{"action":"I","xid":731,"timestamp":"2026-11-21 20:12:39.02236+00","lsn":"0/1541470","schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":1},{"name":"n","type":"numeric","value":12345678901234567890.123456789},{"name":"f8","type":"double precision","value":1e-07},{"name":"f4","type":"real","value":null},{"name":"b","type":"boolean","value":true},{"name":"s","type":"text","value":"q\"uo\\te\nnl\ttab é 😀 \u0001"},{"name":"c","type":"character(5)","value":"ab   "},{"name":"by","type":"bytea","value":"deadbeef"},{"name":"big","type":"bigint","value":9223372036854775807},{"name":"j","type":"jsonb","value":"{\"a\": [1, 2.50]}"},{"name":"arr","type":"integer[]","value":"{1,2}"},{"name":"ts","type":"timestamp with time zone","value":"2024-01-02 03:04:05.123456+00"},{"name":"sm","type":"smallint","value":-32768},{"name":"o","type":"oid","value":4294967295},{"name":"m","type":"money","value":"$12.34"}]}"#;
    // UPDATE t SET id = 10 WHERE id = 2 (columns shortened from 15 to 3).
    const UPDATE_PK: &str = r#"{"action":"U","xid":736,"timestamp":"2026-11-21 20:12:39.025288+00","lsn":"0/15419B0","schema":"public","table":"t","columns":[{"name":"id","type":"integer","value":10},{"name":"n","type":"numeric","value":-0.000000000000000000001},{"name":"f8","type":"double precision","value":null}],"identity":[{"name":"id","type":"integer","value":2}]}"#;
    // UPDATE toasty SET other = 2: the unchanged TOASTed column "big" is left out.
    const UPDATE_TOAST: &str = r#"{"action":"U","xid":739,"timestamp":"2026-11-21 20:12:39.034285+00","lsn":"0/15528B8","schema":"public","table":"toasty","columns":[{"name":"id","type":"integer","value":1},{"name":"other","type":"integer","value":2}],"identity":[{"name":"id","type":"integer","value":1}]}"#;
    const UPDATE_FULL: &str = r#"{"action":"U","xid":744,"timestamp":"2026-11-21 20:12:39.035578+00","lsn":"0/1552B08","schema":"public","table":"full_ri","columns":[{"name":"a","type":"integer","value":1},{"name":"b","type":"text","value":"b"}],"identity":[{"name":"a","type":"integer","value":1},{"name":"b","type":"text","value":"a"}]}"#;
    const DELETE: &str = r#"{"action":"D","xid":737,"timestamp":"2026-11-21 20:12:39.025669+00","lsn":"0/1541AA0","schema":"public","table":"t","identity":[{"name":"id","type":"integer","value":3}]}"#;
    const TRUNCATE: &str = r#"{"action":"T","xid":747,"timestamp":"2026-11-21 20:12:39.038476+00","lsn":"0/15543D8","schema":"public","table":"toasty"}"#;
    const MESSAGE_TX: &str = r#"{"action":"M","xid":748,"timestamp":"2026-11-21 20:12:39.039857+00","lsn":"0/15546F0","transactional":true,"prefix":"tributary","content":"hello \"x\"\n"}"#;
    const MESSAGE_NON_TX: &str = r#"{"action":"M","xid":null,"timestamp":null,"lsn":"0/15547A0","transactional":false,"prefix":"other","content":"non-tx"}"#;
    const SPECIAL_NAMES: &str = r#"{"action":"I","xid":746,"timestamp":"2026-11-21 20:12:39.036054+00","lsn":"0/1552C08","schema":"My Schema","table":"Tab,le.x","columns":[{"name":"Col \"q\"","type":"integer","value":1},{"name":"é","type":"text","value":"v"}]}"#;
    const PGBENCH_ACCOUNTS: &str = r#"{"action":"U","xid":769,"timestamp":"2026-11-21 20:13:31.464009+00","lsn":"0/21CAC38","schema":"public","table":"pgbench_accounts","columns":[{"name":"aid","type":"integer","value":13599},{"name":"bid","type":"integer","value":1},{"name":"abalance","type":"integer","value":-4482},{"name":"filler","type":"character(84)","value":"                                                                                    "}],"identity":[{"name":"aid","type":"integer","value":13599}]}"#;

    const REAL_RECORDS: &[&str] = &[
        BEGIN,
        COMMIT,
        INSERT_ALL_TYPES,
        UPDATE_PK,
        UPDATE_TOAST,
        UPDATE_FULL,
        DELETE,
        TRUNCATE,
        MESSAGE_TX,
        MESSAGE_NON_TX,
        SPECIAL_NAMES,
        PGBENCH_ACCOUNTS,
    ];

    /// What a test expects from `decode`: a message, or an error whose text contains all
    /// of the given fragments.
    enum Expect {
        Ok(Message),
        Err(&'static [&'static str]),
    }

    fn check(input: &str, expected: Expect) {
        check_bytes(input.as_bytes(), expected)
    }

    fn check_bytes(input: &[u8], expected: Expect) {
        match (decode(input), expected) {
            (Ok(got), Expect::Ok(want)) => assert_eq!(got, want, "input: {input:?}"),
            (Err(err), Expect::Err(fragments)) => {
                let text = err.to_string();
                for fragment in fragments {
                    assert!(text.contains(fragment), "{text:?} lacks {fragment:?}");
                }
            }
            (Ok(got), Expect::Err(_)) => panic!("expected an error, got {got:?}"),
            (Err(err), Expect::Ok(_)) => panic!("expected a message, got error: {err}"),
        }
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    /// A commit time from µs since 1970.
    fn micros(us: i64) -> CommitTime {
        chrono::DateTime::from_timestamp_micros(us).unwrap()
    }

    fn col(name: &str, value: Value) -> Column {
        Column {
            name: name.to_owned(),
            value,
        }
    }

    fn num(text: &str) -> Value {
        Value::Number(text.to_owned())
    }

    fn text(text: &str) -> Value {
        Value::Text(text.to_owned())
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        kind: ChangeKind,
        at: &str,
        schema: &str,
        table: &str,
        columns: Vec<Column>,
        identity: Vec<Column>,
    ) -> Expect {
        Expect::Ok(Message::Change(Change {
            kind,
            lsn: lsn(at),
            table: TableName {
                schema: schema.to_owned(),
                name: table.to_owned(),
            },
            columns,
            identity,
        }))
    }

    #[test]
    fn begin_and_commit_carry_the_commit_lsn_and_its_end() {
        // 2026-11-21 20:12:39.02236 UTC.
        let time = micros(1_795_291_959_022_360);
        check(
            BEGIN,
            Expect::Ok(Message::Begin(Begin {
                xid: 731,
                commit_lsn: lsn("0/1541608"),
                end_lsn: lsn("0/1541638"),
                commit_time: time,
            })),
        );
        check(
            COMMIT,
            Expect::Ok(Message::Commit(Commit {
                xid: 731,
                lsn: lsn("0/1541608"),
                end_lsn: lsn("0/1541638"),
                commit_time: time,
            })),
        );
    }

    #[test]
    fn commit_times_as_wal2json_writes_them_in_any_time_zone() {
        for (text, us) in [
            ("2024-11-21 20:12:39.02236+00", Some(1_732_219_959_022_360)),
            ("2024-11-21 21:12:39+01", Some(1_732_219_959_000_000)),
            ("2024-11-22 01:42:39.5+05:30", Some(1_732_219_959_500_000)),
            ("2024-11-21 15:12:39-05", Some(1_732_219_959_000_000)),
            ("yesterday", None),
            ("2024-11-21 20:12:39", None),
        ] {
            assert_eq!(commit_time(text), us.map(micros), "{text}");
        }
    }

    #[test]
    fn positions_xids_and_times_are_required() {
        // tributary always asks for include-lsn, -xids and -timestamp: a record without
        // them is not one it asked for.
        let cases: &[(&str, &[&str])] = &[
            (r#"{"action":"B"}"#, &["B record has no \"nextlsn\" field"]),
            (
                r#"{"action":"C","nextlsn":"0/2"}"#,
                &["C record has no \"lsn\" field"],
            ),
            (
                r#"{"action":"B","lsn":"0/1","nextlsn":"0/2","timestamp":"2024-11-21 20:12:39+00"}"#,
                &["B record has no \"xid\" field"],
            ),
            (
                r#"{"action":"C","xid":1,"lsn":"0/1","nextlsn":"0/2"}"#,
                &["C record has no \"timestamp\" field"],
            ),
            (
                r#"{"action":"C","xid":1,"lsn":"0/1","nextlsn":"0/2","timestamp":"soon"}"#,
                &["C record: \"timestamp\" is not a time: \"soon\""],
            ),
            (
                r#"{"action":"I","schema":"s","table":"t","columns":[]}"#,
                &["I record has no \"lsn\" field"],
            ),
            (
                r#"{"action":"M","transactional":false,"prefix":"p","content":""}"#,
                &["M record has no \"lsn\" field"],
            ),
        ];
        for (input, fragments) in cases {
            check(input, Expect::Err(fragments));
        }
    }

    #[test]
    fn insert_keeps_every_value_exact() {
        use Value::{Bool, Null};
        check(
            INSERT_ALL_TYPES,
            change(
                ChangeKind::Insert,
                "0/1541470",
                "public",
                "t",
                vec![
                    col("id", num("1")),
                    col("n", num("12345678901234567890.123456789")),
                    col("f8", num("1e-07")),
                    col("f4", Null),
                    col("b", Bool(true)),
                    col("s", text("q\"uo\\te\nnl\ttab é 😀 \u{1}")),
                    col("c", text("ab   ")),
                    col("by", text("deadbeef")),
                    col("big", num("9223372036854775807")),
                    col("j", text(r#"{"a": [1, 2.50]}"#)),
                    col("arr", text("{1,2}")),
                    col("ts", text("2024-01-02 03:04:05.123456+00")),
                    col("sm", num("-32768")),
                    col("o", num("4294967295")),
                    col("m", text("$12.34")),
                ],
                vec![],
            ),
        );
    }

    #[test]
    fn update_changing_the_key_has_old_key_in_identity() {
        check(
            UPDATE_PK,
            change(
                ChangeKind::Update,
                "0/15419B0",
                "public",
                "t",
                vec![
                    col("id", num("10")),
                    col("n", num("-0.000000000000000000001")),
                    col("f8", Value::Null),
                ],
                vec![col("id", num("2"))],
            ),
        );
    }

    #[test]
    fn update_leaves_out_unchanged_toast_columns() {
        let expected = change(
            ChangeKind::Update,
            "0/15528B8",
            "public",
            "toasty",
            vec![col("id", num("1")), col("other", num("2"))],
            vec![col("id", num("1"))],
        );
        check(UPDATE_TOAST, expected);
        let Ok(Message::Change(update)) = decode(UPDATE_TOAST.as_bytes()) else {
            panic!("not a change");
        };
        assert_eq!(update.new_value("big"), None, "absent, not NULL");
        assert_eq!(update.new_value("other"), Some(&num("2")));

        // A column that is present with NULL is a different thing.
        let with_null = UPDATE_TOAST.replace(r#""value":2}"#, r#""value":null}"#);
        let Ok(Message::Change(update)) = decode(with_null.as_bytes()) else {
            panic!("not a change");
        };
        assert_eq!(update.new_value("other"), Some(&Value::Null));
    }

    #[test]
    fn replica_identity_full_and_pgbench_updates() {
        check(
            UPDATE_FULL,
            change(
                ChangeKind::Update,
                "0/1552B08",
                "public",
                "full_ri",
                vec![col("a", num("1")), col("b", text("b"))],
                vec![col("a", num("1")), col("b", text("a"))],
            ),
        );
        check(
            PGBENCH_ACCOUNTS,
            change(
                ChangeKind::Update,
                "0/21CAC38",
                "public",
                "pgbench_accounts",
                vec![
                    col("aid", num("13599")),
                    col("bid", num("1")),
                    col("abalance", num("-4482")),
                    col("filler", text(&" ".repeat(84))),
                ],
                vec![col("aid", num("13599"))],
            ),
        );
    }

    #[test]
    fn delete_and_truncate() {
        check(
            DELETE,
            change(
                ChangeKind::Delete,
                "0/1541AA0",
                "public",
                "t",
                vec![],
                vec![col("id", num("3"))],
            ),
        );
        check(
            TRUNCATE,
            change(
                ChangeKind::Truncate,
                "0/15543D8",
                "public",
                "toasty",
                vec![],
                vec![],
            ),
        );
    }

    #[test]
    fn logical_messages() {
        check(
            MESSAGE_TX,
            Expect::Ok(Message::Logical(LogicalMessage {
                transactional: true,
                lsn: lsn("0/15546F0"),
                prefix: "tributary".to_owned(),
                content: "hello \"x\"\n".to_owned(),
            })),
        );
        check(
            MESSAGE_NON_TX,
            Expect::Ok(Message::Logical(LogicalMessage {
                transactional: false,
                lsn: lsn("0/15547A0"),
                prefix: "other".to_owned(),
                content: "non-tx".to_owned(),
            })),
        );
    }

    #[test]
    fn binary_message_content_is_decoded_lossily() {
        // pg_logical_emit_message(false, 'bin', '\xff00fe41'::bytea), byte for byte:
        // wal2json stops at the NUL and copies 0xff unescaped.
        let input =
            b"{\"action\":\"M\",\"xid\":null,\"timestamp\":null,\"lsn\":\"0/15547E0\",\"transactional\":false,\"prefix\":\"bin\",\"content\":\"\xff\"}";
        check_bytes(
            input,
            Expect::Ok(Message::Logical(LogicalMessage {
                transactional: false,
                lsn: lsn("0/15547E0"),
                prefix: "bin".to_owned(),
                content: "\u{fffd}".to_owned(),
            })),
        );
        // A row change is never decoded lossily: that would change data.
        let row = b"{\"action\":\"I\",\"schema\":\"s\",\"table\":\"t\",\"columns\":[{\"name\":\"a\",\"value\":\"\xff\"}]}";
        check_bytes(row, Expect::Err(&["I record is not valid UTF-8 (byte 71)"]));
    }

    #[test]
    fn names_with_quotes_commas_dots_and_unicode() {
        check(
            SPECIAL_NAMES,
            change(
                ChangeKind::Insert,
                "0/1552C08",
                "My Schema",
                "Tab,le.x",
                vec![col("Col \"q\"", num("1")), col("é", text("v"))],
                vec![],
            ),
        );
    }

    /// An INSERT of one column `v` with the given raw JSON value.
    fn one_value(raw: &str) -> String {
        format!(
            r#"{{"action":"I","lsn":"0/16","schema":"s","table":"t","columns":[{{"name":"v","value":{raw}}}]}}"#
        )
    }

    fn expect_value(value: Value) -> Expect {
        Expect::Ok(Message::Change(Change {
            kind: ChangeKind::Insert,
            lsn: lsn("0/16"),
            table: TableName {
                schema: "s".to_owned(),
                name: "t".to_owned(),
            },
            columns: vec![col("v", value)],
            identity: vec![],
        }))
    }

    #[test]
    fn values() {
        let cases: &[(&str, Value)] = &[
            // Numbers keep their exact text.
            (
                "12345678901234567890.123456789",
                num("12345678901234567890.123456789"),
            ),
            ("-0.000000000000000000001", num("-0.000000000000000000001")),
            ("1e-07", num("1e-07")),
            ("1.5e+300", num("1.5e+300")),
            ("-1E400", num("-1E400")),
            ("0", num("0")),
            ("1.10", num("1.10")),
            (
                "-9223372036854775808000000000000000000000.5",
                num("-9223372036854775808000000000000000000000.5"),
            ),
            // numeric-data-types-as-string (2.6): a JSON string is text.
            (r#""1.5""#, text("1.5")),
            (r#""NaN""#, text("NaN")),
            // Escapes.
            (r#""a\"b\\c\/d""#, text("a\"b\\c/d")),
            (r#""l1\nl2\r\t\b\f""#, text("l1\nl2\r\t\u{8}\u{c}")),
            (r#""\u00e9\u0000x""#, text("é\u{0}x")),
            (r#""\ud83d\ude00""#, text("😀")),
            (r#""raw é 😀""#, text("raw é 😀")),
            (r#""""#, text("")),
            ("true", Value::Bool(true)),
            ("false", Value::Bool(false)),
            ("null", Value::Null),
        ];
        for (raw, value) in cases {
            check(&one_value(raw), expect_value(value.clone()));
        }
        check(
            &one_value("{}"),
            Expect::Err(&["column \"v\": value is an object"]),
        );
        check(
            &one_value("[1]"),
            Expect::Err(&["column \"v\": value is an array"]),
        );
        check(&one_value("NaN"), Expect::Err(&["I record"]));
        check(&one_value("01"), Expect::Err(&["I record"]));
        check(&one_value(r#""\ud83d""#), Expect::Err(&["column \"v\""]));
        check(&one_value(r#""\x""#), Expect::Err(&["I record", "escape"]));
    }

    #[test]
    fn the_types_wal2json_writes_as_numbers() {
        // int8, int2, int4, oid, float4, float8, numeric: wal2json's list, by type OID.
        for oid in [20, 21, 23, 26, 700, 701, 1700] {
            assert!(sends_as_number(oid), "{oid}");
        }
        // bool, text, money, regclass (a number category, written as text), _int4, jsonb.
        for oid in [16, 25, 790, 2205, 1007, 3802] {
            assert!(!sends_as_number(oid), "{oid}");
        }
    }

    #[test]
    fn type_is_ignored_value_is_required() {
        // Ignored, even when repeated.
        let typed = r#"{"action":"I","lsn":"0/16","schema":"s","table":"t","columns":[{"name":"v","type":"integer","type":"x","value":1}]}"#;
        check(typed, expect_value(num("1")));
        check(
            r#"{"action":"I","schema":"s","table":"t","columns":[{"name":"v","type":"int"}]}"#,
            Expect::Err(&["I record", "column \"v\" has no \"value\""]),
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        // include-pk, include-type-oids, include-not-null, include-origin output.
        let input = r#"{"action":"I","origin":0,"lsn":"0/16","schema":"s","table":"t","columns":[{"name":"v","type":"x","typeoid":23,"value":true,"optional":false,"position":1}],"pk":[{"name":"v","type":"x","typeoid":23}]}"#;
        check(input, expect_value(Value::Bool(true)));
    }

    #[test]
    fn malformed_records_are_errors() {
        let cases: &[(&str, &[&str])] = &[
            ("", &["empty record"]),
            ("   ", &["empty record"]),
            ("null", &["not a JSON object"]),
            ("[]", &["not a JSON object"]),
            (r#"["B"]"#, &["not a JSON object"]),
            ("{", &["EOF"]),
            (&BEGIN[..BEGIN.len() - 1], &["B record", "EOF"]),
            (r#"{"action":"B"} x"#, &["trailing characters"]),
            (
                r#"{"action":"B","action":"C"}"#,
                &["duplicate field `action`"],
            ),
            ("{}", &["no \"action\" field"]),
            (r#"{"action":"X"}"#, &["unknown action \"X\""]),
            (r#"{"action":""}"#, &["unknown action \"\""]),
            (r#"{"action":1}"#, &["expected a string"]),
            (
                r#"{"action":"B","xid":"731"}"#,
                &["B record", "invalid type"],
            ),
            (r#"{"action":"B","xid":-1}"#, &["B record"]),
            (r#"{"action":"B","xid":4294967296}"#, &["B record"]),
            (
                r#"{"action":"C","nextlsn":"16"}"#,
                &["C record", "\"nextlsn\" is not an LSN", "\"16\""],
            ),
            (
                r#"{"action":"B","lsn":5}"#,
                &["B record", "expected a string"],
            ),
            (
                r#"{"action":"I","schema":"s","columns":[]}"#,
                &["I record has no \"table\" field"],
            ),
            (
                r#"{"action":"I","table":"t","columns":[]}"#,
                &["I record has no \"schema\" field"],
            ),
            (
                r#"{"action":"I","schema":"s","table":"t"}"#,
                &["I record has no \"columns\" field"],
            ),
            (
                r#"{"action":"U","schema":"s","table":"t","identity":[]}"#,
                &["U record has no \"columns\" field"],
            ),
            (
                r#"{"action":"U","schema":"s","table":"t","columns":[]}"#,
                &["U record has no \"identity\" field"],
            ),
            (
                r#"{"action":"D","schema":"s","table":"t"}"#,
                &["D record has no \"identity\" field"],
            ),
            (
                r#"{"action":"T","schema":"s"}"#,
                &["T record has no \"table\" field"],
            ),
            (
                r#"{"action":"I","schema":"s","table":"t","columns":{}}"#,
                &["I record", "an array of column objects"],
            ),
            (
                r#"{"action":"I","schema":"s","table":"t","columns":[1]}"#,
                &["I record", "invalid type"],
            ),
            (
                r#"{"action":"I","schema":"s","table":"t","columns":[{"value":1}]}"#,
                &["missing field `name`"],
            ),
            (
                r#"{"action":"M","transactional":true,"prefix":"p"}"#,
                &["M record has no \"content\" field"],
            ),
            (
                r#"{"action":"M","prefix":"p","content":""}"#,
                &["M record has no \"transactional\" field"],
            ),
            (
                r#"{"action":"M","transactional":true,"content":""}"#,
                &["M record has no \"prefix\" field"],
            ),
            (
                r#"{"action":"M","transactional":"yes","prefix":"p","content":""}"#,
                &["M record", "invalid type"],
            ),
        ];
        for (input, fragments) in cases {
            check(input, Expect::Err(fragments));
        }
    }

    #[test]
    fn error_excerpt_is_short_and_cut_on_a_char_boundary() {
        let long = format!(r#"{{"action":"X","pad":"{}"}}"#, "é".repeat(300));
        let err = decode(long.as_bytes()).unwrap_err();
        assert!(err.excerpt.len() <= EXCERPT_BYTES + '…'.len_utf8());
        assert!(err.excerpt.starts_with(r#"{"action":"X""#));
        assert!(!err.excerpt.contains('\u{fffd}'), "{}", err.excerpt);
        assert!(err.to_string().contains("unknown action"));

        let err = decode(b"{\"action\":\"X\",\n\"a\":\"\x00\"}").unwrap_err();
        assert_eq!(err.excerpt, r#"{"action":"X",\n"a":"\u{0}"}"#);

        let binary = [0xffu8; 500];
        let err = decode(&binary).unwrap_err();
        assert!(err.excerpt.chars().count() <= EXCERPT_BYTES + 1);
    }

    #[test]
    fn every_truncation_of_a_real_record_is_an_error() {
        for record in REAL_RECORDS {
            for end in 0..record.len() {
                // Not sliced as str: `end` may fall inside a character.
                let result = decode(&record.as_bytes()[..end]);
                assert!(result.is_err(), "{:?} decoded", &record.as_bytes()[..end]);
            }
            assert!(decode(record.as_bytes()).is_ok(), "{record}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn mutated_records_never_panic(
            which in 0..REAL_RECORDS.len(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = REAL_RECORDS[which].as_bytes().to_vec();
            for (at, byte) in flips {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let _ = decode(&bytes);
        }

        #[test]
        fn json_like_noise_never_panics(text in r#"[{}\[\]":,a-zA-Z0-9\\. -]{0,200}"#) {
            let _ = decode(text.as_bytes());
            let _ = decode(format!(r#"{{"action":"I","schema":"s","table":"t","columns":[{text}"#).as_bytes());
        }
    }

    fn table(schema: &str, name: &str) -> TableName {
        TableName {
            schema: schema.to_owned(),
            name: name.to_owned(),
        }
    }

    fn option<'a>(options: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        options
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn default_options() {
        let options = PluginOptions::default().to_options();
        let pairs: Vec<(&str, &str)> = options.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("format-version", "2"),
                ("include-transaction", "1"),
                ("include-xids", "1"),
                ("include-timestamp", "1"),
                ("include-lsn", "1"),
                ("include-types", "0"),
                ("include-schemas", "1"),
            ]
        );
    }

    #[test]
    fn optional_options() {
        let options = PluginOptions {
            numeric_as_string: true,
            add_tables: vec![table("public", "a"), table("s", "b")],
            add_msg_prefixes: vec!["tributary".to_owned(), "other".to_owned()],
        }
        .to_options();
        assert_eq!(option(&options, "numeric-data-types-as-string"), Some("1"));
        assert_eq!(option(&options, "add-tables"), Some("public.a,s.b"));
        assert_eq!(
            option(&options, "add-msg-prefixes"),
            Some("tributary,other")
        );
        let names: Vec<_> = options.iter().map(|(n, _)| *n).collect();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique, "no option twice");
    }

    #[test]
    fn add_tables_escaping() {
        // Each spelling was checked against wal2json 2.5's add-tables on a real server.
        let cases = [
            (table("My Schema", "Tab,le.x"), r"My\ Schema.Tab\,le\.x"),
            (table("b\\s", "*"), r"b\\s.\*"),
            (table("*", "y"), r"\*.y"),
            (table("tab\there", "new\nline"), "tab\\\there.new\\\nline"),
            (table("v\u{b}t", "é"), "v\\\u{b}t.é"),
        ];
        for (t, want) in cases {
            let options = PluginOptions {
                add_tables: vec![t],
                ..PluginOptions::default()
            }
            .to_options();
            assert_eq!(option(&options, "add-tables"), Some(want));
        }
    }

    #[test]
    fn message_prefixes_wal2json_cannot_express_are_rejected() {
        let with = |prefix: &str| PluginOptions {
            add_msg_prefixes: vec!["ok".to_owned(), prefix.to_owned()],
            ..PluginOptions::default()
        };
        assert_eq!(with("tributary-1.x").check(), Ok(()));
        for bad in ["", "a,b", "a b", "tab\t", "back\\slash", "v\u{b}"] {
            assert_eq!(with(bad).check(), Err(InvalidPluginOptions(bad.to_owned())));
        }
    }
}
