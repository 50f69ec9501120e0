//! A source that refuses wal2json as an output plugin (`output_plugin_libraries`, see
//! `source/output_plugins.rs`): after a minor update that brought the setting, or an
//! administrator resetting it, the next slot creation or START_REPLICATION is refused. That
//! is a definite failure, never retried (nothing changes until a superuser acts), recorded
//! with the statements that fix it and how the connector goes on: from its slot, without a
//! new snapshot, once streaming had begun.

use crate::pg::{self, ConnInfo};
use crate::pipeline::PipelineError;
use crate::source::output_plugins::{self, PluginList};
use crate::source::{self, ServerError};
use crate::types::{ConnectorName, SlotName};

/// The replication command the source refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// CREATE_REPLICATION_SLOT, for a snapshot.
    CreatingSlot,
    /// START_REPLICATION on the connector's slot.
    Streaming,
}

/// `error` from the `refused` command as the pipeline's error: the definite failure with its
/// fix when the source refuses wal2json, else unchanged. Only then is the setting read, over
/// a SQL session of its own; if that fails, `error` is returned as it is (its advice still
/// names the setting, from the server's hint).
pub(super) async fn explain(
    error: source::Error,
    refused: Refused,
    source: &ConnInfo,
    connector: &ConnectorName,
    slot: &SlotName,
) -> PipelineError {
    if error.sqlstate() != Some("42501") {
        return error.into();
    }
    let list = match pg::connect(source).await {
        Ok(client) => output_plugins::read(&client)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match (list, error.server_error()) {
        (Ok(list), Some(server)) if output_plugins::refuses_wal2json(&error, &list) => {
            failure(server, &list, refused, connector, slot)
        }
        (Ok(_), _) => error.into(),
        (Err(e), _) => {
            tracing::warn!("reading output_plugin_libraries after the source's {error}: {e}");
            error.into()
        }
    }
}

/// The definite failure of a source that refuses wal2json with `server`'s error.
fn failure(
    server: &ServerError,
    list: &PluginList,
    refused: Refused,
    connector: &ConnectorName,
    slot: &SlotName,
) -> PipelineError {
    let (command, then) = match refused {
        Refused::CreatingSlot => (
            "CREATE_REPLICATION_SLOT",
            "which starts the snapshot again".to_owned(),
        ),
        Refused::Streaming => (
            "START_REPLICATION",
            format!("which resumes from replication slot {slot}, without a new snapshot"),
        ),
    };
    let setting = match list {
        PluginList::Listed { value, .. } => {
            format!(
                "its output_plugin_libraries is {}, without wal2json",
                pg::quote_literal(value)
            )
        }
        _ => "its output_plugin_libraries does not list wal2json (this role may not read the \
              setting)"
            .to_owned(),
    };
    PipelineError::definite(
        format!(
            "the source refuses wal2json as an output plugin at {command} (ERROR {}: {}): \
             {setting}",
            server.code, server.message
        ),
        format!(
            "{} Then run `tributary connector retry-setup {connector}`, {then}.",
            list.fix()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_names_the_setting_the_fix_and_how_the_connector_goes_on() {
        let server = ServerError {
            severity: "ERROR".into(),
            code: "42501".into(),
            message: "library \"wal2json\" may not be used as an output plugin".into(),
            detail: None,
            hint: None,
        };
        let connector = ConnectorName::new("shop").unwrap();
        let slot = SlotName::new("tributary_abc_1_shop").unwrap();
        let listed =
            PluginList::from_setting(Some("pgoutput, test_decoding, decoder_raw")).unwrap();
        let cases = [
            (
                &listed,
                Refused::Streaming,
                "at START_REPLICATION (ERROR 42501: library \"wal2json\" may not be used as an \
                 output plugin): its output_plugin_libraries is 'pgoutput, test_decoding, \
                 decoder_raw', without wal2json",
                "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', \
                 'decoder_raw', 'wal2json'; SELECT pg_reload_conf(); Then run `tributary \
                 connector retry-setup shop`, which resumes from replication slot \
                 tributary_abc_1_shop, without a new snapshot.",
            ),
            (
                &PluginList::Unreadable,
                Refused::CreatingSlot,
                "at CREATE_REPLICATION_SLOT (ERROR 42501: library \"wal2json\" may not be used \
                 as an output plugin): its output_plugin_libraries does not list wal2json (this \
                 role may not read the setting)",
                "\\gexec` (psql runs the ALTER SYSTEM the query yields, none when wal2json is \
                 listed already), then SELECT pg_reload_conf(); Then run `tributary connector \
                 retry-setup shop`, which starts the snapshot again.",
            ),
        ];
        for (list, refused, error, next) in cases {
            let failure = failure(&server, list, refused, &connector, &slot);
            assert!(!failure.is_transient());
            let recorded = failure.failure(&connector);
            assert!(recorded.error.contains(error), "{}", recorded.error);
            assert!(recorded.next_step.contains(next), "{}", recorded.next_step);
        }
    }
}
