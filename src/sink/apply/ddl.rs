//! Captured schema changes, run at their place in the open target transaction.

use super::ReplicaSink;
use crate::pg::{quote_ident, quote_literal};
use crate::sink::error::SinkError;
use crate::sink::replica::setup;
use crate::sink::triggers;
use crate::types::Lsn;

impl ReplicaSink {
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
        self.count_change();
        self.flush_truncate().await?;
        self.flush_batches().await?;
        self.drain().await?;
        let (set, restore) = self.source_settings(search_path, settings).await?;
        // The statement meets the source's trigger states, and the triggers it leaves
        // firing under apply are held again after it (see triggers.rs).
        triggers::unhold(&self.client)
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
        triggers::hold(&self.client, true)
            .await
            .map_err(setup(&self.database, "holding ALWAYS and REPLICA triggers"))
    }

    /// The SQL that gives the open transaction the source session's `search_path` and
    /// `settings` for a schema change (literals in the command are read with them), and
    /// the SQL that brings back the apply session's own afterwards (`SET LOCAL` would keep
    /// the source's to the commit).
    async fn source_settings(
        &self,
        search_path: &[String],
        settings: &[(String, String)],
    ) -> Result<(String, String), SinkError> {
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
        Ok((set, restore))
    }
}
