//! What the server's notices on the replication connection mean.
//!
//! wal2json reports a change it leaves out of the stream only with `elog(WARNING)`, which
//! reaches the client as a NoticeResponse among the CopyData messages, right where the
//! change would have been (inside its transaction, before the commit). The texts below are
//! wal2json's (`wal2json.c`, 2.x), format 2 naming the table `"schema"."table"`, format 1
//! only `"table"`. Names are printed unescaped, so a name holding `"."` cannot be split
//! back: such a table is [`NoticeTable::Unparsed`].

use super::ServerError;
use crate::change::TableName;

/// A notice from the walsender, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// wal2json left a change out of the stream.
    Dropped {
        /// `None` for format 1's message, which does not say (an UPDATE or a DELETE).
        action: Option<Action>,
        table: NoticeTable,
        cause: DropCause,
    },
    /// wal2json sent an UPDATE or DELETE without the old key that finds its row.
    WithoutOldKey { action: Action, table: NoticeTable },
    /// A WARNING tributary does not know: what it means for the data is unknown.
    UnknownWarning(ServerError),
    /// NOTICE, INFO, LOG or DEBUG: by PostgreSQL's severities, nothing went wrong.
    Informational(ServerError),
}

impl Notice {
    /// The one table the notice is about, when it names it with its schema.
    pub fn table(&self) -> Option<&TableName> {
        match self {
            Notice::Dropped {
                table: NoticeTable::Qualified(table),
                ..
            }
            | Notice::WithoutOldKey {
                table: NoticeTable::Qualified(table),
                ..
            } => Some(table),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Insert,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Insert => "INSERT",
            Action::Update => "UPDATE",
            Action::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// The table had no replica identity, so the change carried no key.
    NoIdentity,
    /// The change carried no row at all.
    NoTupleData,
}

/// The table a notice names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeTable {
    Qualified(TableName),
    /// Format 1 names no schema.
    Unqualified(String),
    /// The text after `in table`, when it cannot be split into schema and name.
    Unparsed(String),
}

impl std::fmt::Display for NoticeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoticeTable::Qualified(table) => write!(f, "{table}"),
            NoticeTable::Unqualified(name) => write!(f, "{name} (schema not named)"),
            NoticeTable::Unparsed(text) => f.write_str(text),
        }
    }
}

/// Classifies one notice. Never panics, whatever the text.
pub fn classify(notice: &ServerError) -> Notice {
    if notice.severity != "WARNING" {
        return Notice::Informational(notice.clone());
    }
    let message = notice.message.as_str();
    let parsed = if let Some(rest) = message.strip_prefix("no tuple identifier for ") {
        action_and_table(rest).map(|(action, table)| Notice::Dropped {
            action: Some(action),
            table,
            cause: DropCause::NoIdentity,
        })
    } else if let Some(rest) = message.strip_prefix("no old tuple data for ") {
        action_and_table(rest).map(|(action, table)| Notice::WithoutOldKey { action, table })
    } else if let Some(rest) = message.strip_prefix("no tuple data for ") {
        action_and_table(rest).map(|(action, table)| Notice::Dropped {
            action: Some(action),
            table,
            cause: DropCause::NoTupleData,
        })
    } else {
        message
            .strip_prefix("table ")
            .and_then(|rest| {
                rest.strip_suffix(" without primary key or replica identity is nothing")
            })
            .map(|quoted| Notice::Dropped {
                action: None,
                table: table(quoted),
                cause: DropCause::NoIdentity,
            })
    };
    parsed.unwrap_or_else(|| Notice::UnknownWarning(notice.clone()))
}

/// `UPDATE in table "s"."t"`.
fn action_and_table(text: &str) -> Option<(Action, NoticeTable)> {
    let (action, quoted) = text.split_once(" in table ")?;
    let action = match action {
        "INSERT" => Action::Insert,
        "UPDATE" => Action::Update,
        "DELETE" => Action::Delete,
        _ => return None,
    };
    Some((action, table(quoted)))
}

/// `"s"."t"` or `"t"`, as wal2json prints them (unescaped).
fn table(quoted: &str) -> NoticeTable {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'));
    let Some(inner) = inner else {
        return NoticeTable::Unparsed(quoted.to_owned());
    };
    let parts: Vec<&str> = inner.split("\".\"").collect();
    match parts[..] {
        [name] => NoticeTable::Unqualified(name.to_owned()),
        [schema, name] => NoticeTable::Qualified(TableName {
            schema: schema.to_owned(),
            name: name.to_owned(),
        }),
        _ => NoticeTable::Unparsed(quoted.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn notice(severity: &str, message: &str) -> ServerError {
        ServerError {
            severity: severity.into(),
            code: "01000".into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    fn qualified(schema: &str, name: &str) -> NoticeTable {
        NoticeTable::Qualified(TableName {
            schema: schema.into(),
            name: name.into(),
        })
    }

    #[test]
    fn wal2json_warnings_become_typed_notices() {
        use Action::*;
        use DropCause::*;
        let dropped = |action, table, cause| Notice::Dropped {
            action,
            table,
            cause,
        };
        for (message, expected) in [
            (
                r#"no tuple identifier for UPDATE in table "app"."t""#,
                dropped(Some(Update), qualified("app", "t"), NoIdentity),
            ),
            (
                r#"no tuple identifier for DELETE in table "My S"."a.b""#,
                dropped(Some(Delete), qualified("My S", "a.b"), NoIdentity),
            ),
            (
                r#"no tuple data for INSERT in table "app"."t""#,
                dropped(Some(Insert), qualified("app", "t"), NoTupleData),
            ),
            (
                r#"no tuple data for UPDATE in table "t""#,
                dropped(
                    Some(Update),
                    NoticeTable::Unqualified("t".into()),
                    NoTupleData,
                ),
            ),
            (
                r#"table "t" without primary key or replica identity is nothing"#,
                dropped(None, NoticeTable::Unqualified("t".into()), NoIdentity),
            ),
            (
                r#"no old tuple data for DELETE in table "app"."t""#,
                Notice::WithoutOldKey {
                    action: Delete,
                    table: qualified("app", "t"),
                },
            ),
            // A name holding `"."` cannot be split back.
            (
                r#"no tuple identifier for UPDATE in table "a"."b"."c""#,
                dropped(
                    Some(Update),
                    NoticeTable::Unparsed(r#""a"."b"."c""#.into()),
                    NoIdentity,
                ),
            ),
        ] {
            assert_eq!(classify(&notice("WARNING", message)), expected, "{message}");
        }
    }

    #[test]
    fn other_warnings_are_unknown_and_lesser_notices_informational() {
        for message in [
            "no tuple identifier for TRUNCATE in table \"a\".\"b\"",
            "something else entirely",
            "",
        ] {
            let warning = notice("WARNING", message);
            assert_eq!(classify(&warning), Notice::UnknownWarning(warning));
        }
        let info = notice(
            "NOTICE",
            "no tuple identifier for UPDATE in table \"a\".\"b\"",
        );
        assert_eq!(classify(&info), Notice::Informational(info));
    }

    proptest! {
        #[test]
        fn arbitrary_messages_never_panic(message in ".{0,80}") {
            let _ = classify(&notice("WARNING", &message));
            let _ = classify(&notice("WARNING", &format!("no tuple data for UPDATE in table {message}")));
        }
    }
}
