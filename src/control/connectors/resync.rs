//! `connector resync`: copy some of a connector's tables again (after a suspected
//! divergence, or to bring back a table held out of the stream), the others untouched.
//! The daemon copies them under new snapshots before it streams on
//! (`pipeline/sync.rs::recopy`); each then takes the stream from its copy's position.

use crate::bookkeeping::{self, Bookkeeping, Connector, SetupChange, SetupRequest, TableStatus};
use crate::change::TableName;
use crate::state::PipelineState;

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error(
        "{connector} replicates no table {given}{hint}; `tributary connector tables {connector}` \
         lists its tables"
    )]
    UnknownTable {
        connector: String,
        given: String,
        hint: String,
    },
    #[error(
        "{table} is not replicated by {connector} ({decision}): only a table it replicates can \
         be copied again; `tributary connector retry-setup` takes a changed decision"
    )]
    NotReplicated {
        connector: String,
        table: TableName,
        decision: String,
    },
    #[error(
        "{connector} is {state}: its setup copies every table anyway; run resync once it \
         streams"
    )]
    SettingUp {
        connector: String,
        state: PipelineState,
    },
    #[error(transparent)]
    Bookkeeping(#[from] bookkeeping::Error),
}

impl ResyncError {
    /// A table named wrongly is the caller's mistake (exit 2); the rest is the state of
    /// things (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ResyncError::UnknownTable { .. } | ResyncError::NotReplicated { .. }
        )
    }
}

/// The connector's table that `given` names: `schema.name`, or a name alone when one
/// table of the connector has it.
pub fn find_table<'a>(
    connector: &str,
    tables: &'a [TableStatus],
    given: &str,
) -> Result<&'a TableStatus, ResyncError> {
    let exact = tables.iter().find(|t| t.table.to_string() == given);
    let by_name: Vec<&TableStatus> = tables.iter().filter(|t| t.table.name == given).collect();
    let found = match (exact, &by_name[..]) {
        (Some(table), _) => table,
        (None, [table]) => table,
        (None, candidates) => {
            let hint = match candidates {
                [] => String::new(),
                several => format!(
                    " (several schemas have it: {})",
                    several
                        .iter()
                        .map(|t| t.table.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(ResyncError::UnknownTable {
                connector: connector.to_owned(),
                given: given.to_owned(),
                hint,
            });
        }
    };
    if found.decision != "include" {
        return Err(ResyncError::NotReplicated {
            connector: connector.to_owned(),
            table: found.table.clone(),
            decision: found.decision.clone(),
        });
    }
    Ok(found)
}

/// Asks the daemon to copy `given` tables of `connector` again; returns the tables.
pub async fn request(
    bookkeeping: &Bookkeeping,
    connector: &Connector,
    given: &[String],
) -> Result<Vec<TableName>, ResyncError> {
    let name = connector.name.as_str();
    let snapshot_done = connector.state == PipelineState::Streaming
        || bookkeeping
            .history(connector.id)
            .await?
            .iter()
            .any(|change| change.to == PipelineState::Streaming);
    if !snapshot_done {
        return Err(ResyncError::SettingUp {
            connector: name.to_owned(),
            state: connector.state,
        });
    }
    let tables = bookkeeping.tables(connector.id).await?;
    let mut chosen = Vec::new();
    for given in given {
        let table = find_table(name, &tables, given)?.table.clone();
        if !chosen.contains(&table) {
            chosen.push(table);
        }
    }
    let change = SetupChange {
        restart: true,
        resync: &chosen,
        ..SetupChange::default()
    };
    match bookkeeping.request_setup(connector.id, &change).await? {
        SetupRequest::InProgress(state) => Err(ResyncError::SettingUp {
            connector: name.to_owned(),
            state,
        }),
        SetupRequest::Recorded | SetupRequest::Restarted => Ok(chosen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bookkeeping::TableSyncState;

    fn status(schema: &str, name: &str, decision: &str) -> TableStatus {
        TableStatus {
            table: TableName {
                schema: schema.into(),
                name: name.into(),
            },
            decision: decision.into(),
            state: TableSyncState::Streaming,
            rows: 0,
            bytes: 0,
            copied_at: None,
            copies: 1,
            problem: None,
            next_step: None,
        }
    }

    #[test]
    fn a_table_is_named_with_its_schema_or_by_a_name_no_other_schema_has() {
        let tables = [
            status("app", "orders", "include"),
            status("app", "items", "include"),
            status("audit", "items", "include"),
            status("app", "log", "exclude"),
        ];
        let found = |given: &str| find_table("shop", &tables, given).map(|t| t.table.to_string());
        assert_eq!(found("app.orders").unwrap(), "app.orders");
        assert_eq!(found("orders").unwrap(), "app.orders");
        assert_eq!(found("audit.items").unwrap(), "audit.items");
        let several = found("items").unwrap_err();
        assert!(several.is_usage());
        assert!(
            several
                .to_string()
                .contains("several schemas have it: app.items, audit.items"),
            "{several}"
        );
        let unknown = found("app.nope").unwrap_err().to_string();
        assert!(unknown.contains("connector tables shop"), "{unknown}");
        let excluded = found("app.log").unwrap_err();
        assert!(excluded.to_string().contains("(exclude)"), "{excluded}");
        assert!(excluded.is_usage());
    }
}
