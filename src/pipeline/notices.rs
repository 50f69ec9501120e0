//! What the source's notices mean for the replica: a WARNING on the replication stream is
//! a state, never only a log line.
//!
//! wal2json leaves a change out with nothing but a WARNING ([`crate::source::notice`]),
//! which arrives inside the change's transaction, before its commit. A change of a
//! replicated table left out or sent without its key, and any WARNING tributary does not
//! know, stop the pipeline right there: the reader returns the error before that
//! transaction's commit reaches the applier, so neither it nor anything after it is
//! applied or acknowledged, and the operator reads which table, why, and what to do.
//! Notices about tables the connector does not replicate are only logged (debug).

use std::collections::HashSet;

use crate::change::TableName;
use crate::pg::{quote_table, ConnInfo};
use crate::pipeline::drift::catalog_session;
use crate::pipeline::PipelineError;
use crate::source::catalog;
use crate::source::identity::{Missing, ReplicaIdentity};
use crate::source::notice::{self, Action, DropCause, Notice, NoticeTable};
use crate::source::ServerError;
use crate::types::ConnectorName;

/// What a notice calls for.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing went wrong (NOTICE, INFO, …): logged.
    Log,
    /// About a table the connector does not replicate.
    Ignore,
    /// The replica would miss something: the pipeline stops.
    Stop(Notice),
}

/// The verdict on `notice`, given which tables the connector replicates. A table the
/// notice does not name exactly might be one of them, so it stops the pipeline too.
pub fn judge(notice: &ServerError, replicated: impl Fn(&TableName) -> bool) -> Verdict {
    let notice = notice::classify(notice);
    let table = match &notice {
        Notice::Informational(_) => return Verdict::Log,
        Notice::UnknownWarning(_) => return Verdict::Stop(notice),
        Notice::Dropped { table, .. } | Notice::WithoutOldKey { table, .. } => table,
    };
    match table {
        NoticeTable::Qualified(table) if !replicated(table) => Verdict::Ignore,
        _ => Verdict::Stop(notice),
    }
}

/// Turns the notices that stop the pipeline into its error, with the cause read from the
/// source's catalog.
pub struct Explainer {
    source: ConnInfo,
    /// What to tell the operator when only a new snapshot helps.
    retry_setup: String,
    /// The connector, for the command that copies one table again.
    connector: ConnectorName,
    /// Tables found to be materialized views.
    views: HashSet<TableName>,
}

impl Explainer {
    pub fn new(source: ConnInfo, retry_setup: String, connector: ConnectorName) -> Explainer {
        Explainer {
            source,
            retry_setup,
            connector,
            views: HashSet::new(),
        }
    }

    /// The materialized view a stopping notice is about, if it is one: a materialized view
    /// has no replica identity, so wal2json leaves out the UPDATEs and DELETEs that
    /// `REFRESH … CONCURRENTLY` writes, with a warning. Nothing is lost: the replica
    /// computes its own view at that place (`sink`).
    pub async fn materialized_view(&mut self, notice: &Notice) -> Option<TableName> {
        let table = match notice {
            Notice::Dropped {
                table: NoticeTable::Qualified(table),
                cause: DropCause::NoIdentity,
                ..
            } => table,
            _ => return None,
        };
        if !self.views.contains(table) {
            const SQL: &str = "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c \
                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'm')";
            let client = catalog_session(&self.source).await.ok()?;
            let row = client
                .query_one(SQL, &[&table.schema, &table.name])
                .await
                .ok()?;
            if !row.get::<_, bool>(0) {
                return None;
            }
            self.views.insert(table.clone());
        }
        Some(table.clone())
    }

    /// The pipeline's error for a notice [`judge`] stopped on.
    pub async fn failure(&self, notice: &Notice) -> PipelineError {
        let identity = match notice {
            Notice::Dropped {
                table: NoticeTable::Qualified(table),
                cause: DropCause::NoIdentity,
                ..
            }
            | Notice::WithoutOldKey {
                table: NoticeTable::Qualified(table),
                ..
            } => Some(self.identity(table).await),
            _ => None,
        };
        let consequence = match notice.table() {
            // Only that table stops (the reader holds it out of the stream).
            Some(table) => Consequence::table(&self.connector, table),
            None => Consequence::pipeline(&self.retry_setup),
        };
        let (error, next_step) = explain(notice, identity, &consequence);
        PipelineError::definite(error, next_step)
    }

    async fn identity(&self, table: &TableName) -> Result<Option<ReplicaIdentity>, String> {
        let client = catalog_session(&self.source)
            .await
            .map_err(|e| e.to_string())?;
        catalog::replica_identity(&client, table)
            .await
            .map_err(|e| e.to_string())
    }
}

/// What a notice that stops streaming means for the replica, and how what was left out
/// gets there.
struct Consequence {
    stopped: String,
    recover: String,
}

impl Consequence {
    /// A notice about no table in particular: the whole stream stops.
    fn pipeline(retry_setup: &str) -> Consequence {
        Consequence {
            stopped: "the replica would silently miss it, so nothing from that source \
                      transaction on is applied or acknowledged"
                .into(),
            recover: format!(
                "{retry_setup} (what was left out reaches the replica only through a new \
                 snapshot)"
            ),
        }
    }

    /// A notice about one table: that table stops, the others stream on.
    fn table(connector: &ConnectorName, table: &TableName) -> Consequence {
        Consequence {
            stopped: format!(
                "the replica would silently miss it, so {table} is held out of the stream \
                 from here on, as it was before that change (the other tables stream on)"
            ),
            recover: format!(
                "copy it again: `tributary connector resync {connector} --table {table}`"
            ),
        }
    }
}

/// The error and the next step for `notice`; `identity` is what the source's catalog
/// says about the table now (or why it could not say), for notices about a missing key.
fn explain(
    notice: &Notice,
    identity: Option<Result<Option<ReplicaIdentity>, String>>,
    consequence: &Consequence,
) -> (String, String) {
    let Consequence { stopped, recover } = consequence;
    let give_identity = |table: &NoticeTable| {
        let sql = match table {
            NoticeTable::Qualified(table) => quote_table(table),
            _ => "…".to_owned(),
        };
        let give = match &identity {
            // The key is there: only the setting keeps it from serving.
            Some(Ok(Some(ReplicaIdentity::Nothing(Missing::Declared { primary_key: true })))) => {
                format!("run ALTER TABLE {sql} REPLICA IDENTITY DEFAULT; on the source (its primary key then serves)")
            }
            _ => format!(
                "give {table} a usable replica identity on the source (a primary key that is \
                 not DEFERRABLE, REPLICA IDENTITY USING INDEX on a unique index of NOT NULL \
                 columns, or ALTER TABLE {sql} REPLICA IDENTITY FULL;)"
            ),
        };
        format!("{give}, or exclude it with a replica identity decision; then {recover}")
    };
    let cause = |table: &NoticeTable| match &identity {
        Some(Ok(Some(ReplicaIdentity::Nothing(missing)))) => {
            format!(
                "{table} has no usable replica identity: {}",
                missing.describe()
            )
        }
        Some(Ok(Some(_))) => format!(
            "{table} had no usable replica identity when the change was made (it has one now)"
        ),
        Some(Ok(None)) => {
            format!("{table} had no usable replica identity (the table no longer exists)")
        }
        Some(Err(e)) => format!(
            "{table} has no usable replica identity (the source's catalog could not be read \
             for the cause: {e})"
        ),
        None => format!("{table} has no usable replica identity"),
    };
    match notice {
        Notice::Dropped {
            action,
            table,
            cause: DropCause::NoIdentity,
        } => (
            format!(
                "wal2json left {} of {table} out of the change stream (\"{}\"): {}; {stopped}",
                action_phrase(*action),
                warning_text(notice),
                cause(table)
            ),
            give_identity(table),
        ),
        Notice::Dropped {
            action,
            table,
            cause: DropCause::NoTupleData,
        } => (
            format!(
                "wal2json left {} of {table} out of the change stream: it carried no row data \
                 (\"{}\"); {stopped}",
                action_phrase(*action),
                warning_text(notice)
            ),
            format!("{recover}; please report the warning to the tributary developers"),
        ),
        Notice::WithoutOldKey { action, table } => (
            format!(
                "wal2json sent {} of {table} without the old key that finds its row (\"{}\"): \
                 {}; {stopped}",
                action_phrase(Some(*action)),
                warning_text(notice),
                cause(table)
            ),
            give_identity(table),
        ),
        Notice::UnknownWarning(warning) | Notice::Informational(warning) => (
            format!(
                "the source sent a warning tributary does not know while streaming: {warning}; \
                 it may mean that a change is missing, so nothing from here on is applied or \
                 acknowledged"
            ),
            format!(
                "find out what the warning means for the replicated tables (the source's log \
                 has it with its context); if it cost a change, {recover}; please report it \
                 to the tributary developers, so that it gets a definite meaning"
            ),
        ),
    }
}

fn action_phrase(action: Option<Action>) -> &'static str {
    match action {
        Some(Action::Insert) => "an INSERT",
        Some(Action::Update) => "an UPDATE",
        Some(Action::Delete) => "a DELETE",
        None => "an UPDATE or DELETE",
    }
}

/// The warning's own words, for the error message.
fn warning_text(notice: &Notice) -> String {
    match notice {
        Notice::Dropped {
            action,
            table,
            cause,
        } => {
            let action = action.map_or("UPDATE/DELETE", Action::as_str);
            match cause {
                DropCause::NoIdentity => format!("no tuple identifier for {action} in {table}"),
                DropCause::NoTupleData => format!("no tuple data for {action} in {table}"),
            }
        }
        Notice::WithoutOldKey { action, table } => {
            format!("no old tuple data for {} in {table}", action.as_str())
        }
        Notice::UnknownWarning(w) | Notice::Informational(w) => w.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::identity::Missing;

    fn warning(message: &str) -> ServerError {
        ServerError {
            severity: "WARNING".into(),
            code: "01000".into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn warnings_about_replicated_tables_and_unknown_ones_stop() {
        let replicated = |t: &TableName| t.schema == "app";
        let verdict = |message: &str| judge(&warning(message), replicated);
        assert!(matches!(
            verdict(r#"no tuple identifier for UPDATE in table "app"."t""#),
            Verdict::Stop(Notice::Dropped { .. })
        ));
        assert!(matches!(
            verdict(r#"no old tuple data for DELETE in table "app"."t""#),
            Verdict::Stop(Notice::WithoutOldKey { .. })
        ));
        assert_eq!(
            verdict(r#"no tuple identifier for UPDATE in table "other"."t""#),
            Verdict::Ignore
        );
        // Without a schema, the table may be a replicated one.
        assert!(matches!(
            verdict(r#"table "t" without primary key or replica identity is nothing"#),
            Verdict::Stop(_)
        ));
        assert!(matches!(
            verdict("something new"),
            Verdict::Stop(Notice::UnknownWarning(_))
        ));
        let mut notice = warning("logical decoding found consistent point");
        notice.severity = "NOTICE".into();
        assert_eq!(judge(&notice, replicated), Verdict::Log);
    }

    #[test]
    fn each_stop_names_the_table_the_cause_and_the_fix() {
        let dropped = notice::classify(&warning(
            r#"no tuple identifier for UPDATE in table "app"."t""#,
        ));
        let retry = "run retry-setup";
        for (identity, cause) in [
            (
                Some(Ok(Some(ReplicaIdentity::Nothing(Missing::DeferrableKey)))),
                "app.t has no usable replica identity: its primary key is DEFERRABLE",
            ),
            (
                Some(Ok(Some(ReplicaIdentity::Nothing(Missing::IndexDropped)))),
                "REPLICA IDENTITY USING INDEX was dropped",
            ),
            (
                Some(Ok(Some(ReplicaIdentity::Nothing(Missing::NoKey)))),
                "it has no primary key",
            ),
            (
                Some(Ok(Some(ReplicaIdentity::Full))),
                "had no usable replica identity when the change was made",
            ),
            (Some(Ok(None)), "no longer exists"),
            (
                Some(Err("timeout".into())),
                "could not be read for the cause: timeout",
            ),
        ] {
            let (error, next) = explain(&dropped, identity, &Consequence::pipeline(retry));
            assert!(
                error.starts_with("wal2json left an UPDATE of app.t out"),
                "{error}"
            );
            assert!(
                error.contains("no tuple identifier for UPDATE in app.t"),
                "{error}"
            );
            assert!(error.contains(cause), "{error}");
            assert!(
                error.contains("nothing from that source transaction on"),
                "{error}"
            );
            assert!(
                next.contains("ALTER TABLE \"app\".\"t\" REPLICA IDENTITY FULL;"),
                "{next}"
            );
            assert!(next.contains(retry), "{next}");
        }
        // A key that only REPLICA IDENTITY NOTHING keeps from serving: no key to add.
        let declared = Missing::Declared { primary_key: true };
        let (error, next) = explain(
            &dropped,
            Some(Ok(Some(ReplicaIdentity::Nothing(declared)))),
            &Consequence::pipeline(retry),
        );
        assert!(error.contains("REPLICA IDENTITY NOTHING is set"), "{error}");
        assert!(
            next.starts_with("run ALTER TABLE \"app\".\"t\" REPLICA IDENTITY DEFAULT;"),
            "{next}"
        );
        assert!(!next.contains("primary key that is"), "{next}");

        let (error, next) = explain(
            &Notice::UnknownWarning(warning("out of cheese")),
            None,
            &Consequence::pipeline(retry),
        );
        assert!(error.contains("WARNING 01000: out of cheese"), "{error}");
        assert!(next.contains(retry), "{next}");

        let no_data = notice::classify(&warning(r#"no tuple data for INSERT in table "app"."t""#));
        let (error, _) = explain(&no_data, None, &Consequence::pipeline(retry));
        assert!(error.contains("an INSERT of app.t"), "{error}");
        assert!(error.contains("no row data"), "{error}");

        // About one table: that table stops, and a resync brings it back.
        let table = TableName {
            schema: "app".into(),
            name: "t".into(),
        };
        let shop = ConnectorName::new("shop".to_owned()).unwrap();
        let (error, next) = explain(&dropped, None, &Consequence::table(&shop, &table));
        assert!(error.contains("app.t is held out of the stream"), "{error}");
        assert!(error.contains("(the other tables stream on)"), "{error}");
        assert!(
            next.ends_with("then copy it again: `tributary connector resync shop --table app.t`"),
            "{next}"
        );
    }
}
