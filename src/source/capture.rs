//! Schema change capture: tributary's objects on the source, and the messages they emit.
//!
//! Logical decoding carries rows, not DDL. So, where the operator allows it, tributary keeps
//! a function and two event triggers in a `tributary` schema on the source (and nothing
//! anywhere else). On `sql_drop` and `ddl_command_end` the function emits a transactional
//! logical message with the prefix [`MESSAGE_PREFIX`]: the command tag, the text of the
//! query being run, the schemas the session resolves names in, and the objects touched.
//! Being transactional, the message is decoded at its exact place among the transaction's
//! row changes, and only if the transaction commits.
//!
//! Creating an event trigger needs a superuser; firing one does not (any role's DDL fires
//! it, and `pg_logical_emit_message` is open to every role). So the objects are installed
//! either by tributary when its source role is a superuser, or once by an operator from
//! [`install_sql`] (`tributary connector source-sql`), after which a role with only
//! REPLICATION, CONNECT and SELECT is enough. The objects carry a version
//! ([`CAPTURE_VERSION`], returned by `tributary.capture_version()`); the script is
//! idempotent, and running it again upgrades an older version in place.
//!
//! The function has no exception handler: a command whose message cannot be emitted fails
//! on the source rather than go unreplicated (and a handler's subtransaction would make
//! logical decoding deliver the message after the row changes that follow it).

use serde::Deserialize;
use tokio_postgres::Client;

use crate::source::catalog::CatalogError;
use crate::source::wal2json::PluginOptions;

/// Version of the source-side objects this build installs and understands.
pub const CAPTURE_VERSION: i32 = 1;

/// Prefix of the logical messages the event triggers emit (`add-msg-prefixes`).
pub const MESSAGE_PREFIX: &str = "tributary.ddl";

/// The SQL that installs (or upgrades) the capture objects: run it as a superuser in the
/// source database. One transaction; running it again changes nothing.
pub fn install_sql() -> String {
    format!(
        r#"-- tributary schema change capture, version {CAPTURE_VERSION}.
-- Run once as a superuser in the source database (event triggers need one); after that,
-- tributary's own role needs no more than REPLICATION, CONNECT and SELECT. Running this
-- again changes nothing, and upgrades an older version in place.
BEGIN;
CREATE SCHEMA IF NOT EXISTS tributary;
COMMENT ON SCHEMA tributary IS 'tributary schema change capture (see tributary connector source-sql)';
GRANT USAGE ON SCHEMA tributary TO PUBLIC;

CREATE OR REPLACE FUNCTION tributary.capture_version() RETURNS integer
    LANGUAGE sql IMMUTABLE AS 'SELECT {CAPTURE_VERSION}';
GRANT EXECUTE ON FUNCTION tributary.capture_version() TO PUBLIC;

-- Emits one transactional logical message '{MESSAGE_PREFIX}' per DDL command. Every name is
-- qualified instead of SET search_path, which would hide the session's; and there is no
-- EXCEPTION block, whose subtransaction would make logical decoding deliver the message
-- after the changes that follow it.
CREATE OR REPLACE FUNCTION tributary.capture_ddl() RETURNS event_trigger
    LANGUAGE plpgsql AS $capture$
DECLARE
    touched jsonb;
BEGIN
    IF TG_EVENT = 'sql_drop' THEN
        SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'type', d.object_type, 'schema', d.schema_name,
                   'identity', d.object_identity, 'oid', d.objid::int8)), '[]')
          INTO touched
          FROM pg_catalog.pg_event_trigger_dropped_objects() d
         WHERE NOT d.is_temporary;
    ELSE
        SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'type', c.object_type, 'schema', c.schema_name,
                   'identity', c.object_identity, 'oid', c.objid::int8,
                   'in_extension', c.in_extension,
                   'table', (SELECT pg_catalog.format('%I.%I', n.nspname, t.relname)
                               FROM pg_catalog.pg_index i
                               JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
                               JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
                              WHERE c.object_type = 'index' AND i.indexrelid = c.objid))), '[]')
          INTO touched
          FROM pg_catalog.pg_event_trigger_ddl_commands() c;
    END IF;
    PERFORM pg_catalog.pg_logical_emit_message(true, '{MESSAGE_PREFIX}', pg_catalog.jsonb_build_object(
        'v', {CAPTURE_VERSION}, 'event', TG_EVENT, 'tag', TG_TAG,
        'query', pg_catalog.current_query(),
        'search_path', pg_catalog.to_jsonb(pg_catalog.current_schemas(false)),
        'objects', touched)::text);
END
$capture$;

DROP EVENT TRIGGER IF EXISTS tributary_ddl_command_end;
CREATE EVENT TRIGGER tributary_ddl_command_end ON ddl_command_end
    EXECUTE FUNCTION tributary.capture_ddl();
DROP EVENT TRIGGER IF EXISTS tributary_sql_drop;
CREATE EVENT TRIGGER tributary_sql_drop ON sql_drop
    EXECUTE FUNCTION tributary.capture_ddl();
COMMIT;
"#
    )
}

/// The SQL that removes the capture objects (the schema only if nothing else is in it).
pub fn uninstall_sql() -> &'static str {
    "BEGIN;\n\
     DROP EVENT TRIGGER IF EXISTS tributary_ddl_command_end;\n\
     DROP EVENT TRIGGER IF EXISTS tributary_sql_drop;\n\
     DROP FUNCTION IF EXISTS tributary.capture_ddl();\n\
     DROP FUNCTION IF EXISTS tributary.capture_version();\n\
     DROP SCHEMA IF EXISTS tributary RESTRICT;\n\
     COMMIT;\n"
}

/// What the source has of the capture objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureStatus {
    /// Installed at this build's version, both triggers enabled.
    Installed,
    /// Installed, but at another version (or with a trigger missing or disabled).
    Outdated {
        found: Option<i32>,
    },
    Missing,
}

/// What the source has installed, and whether this session's role could install it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureFacts {
    pub status: CaptureStatus,
    pub can_install: bool,
}

impl CaptureFacts {
    /// Whether DDL is captured: the objects are there at this version.
    pub fn capturing(&self) -> bool {
        self.status == CaptureStatus::Installed
    }
}

/// Enabled capture triggers that call our function, and whether the version function
/// exists: readable by any role.
pub const INSPECT_SQL: &str = "\
    SELECT (SELECT count(*) FROM pg_catalog.pg_event_trigger e \
             WHERE e.evtname IN ('tributary_ddl_command_end', 'tributary_sql_drop') \
               AND e.evtenabled <> 'D' \
               AND e.evtfoid = pg_catalog.to_regprocedure('tributary.capture_ddl()'))::int, \
           pg_catalog.to_regprocedure('tributary.capture_version()') IS NOT NULL, \
           coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false)";

/// The installed version, once [`INSPECT_SQL`] found the function.
pub const VERSION_SQL: &str = "SELECT tributary.capture_version()";

/// The status from what [`INSPECT_SQL`] and [`VERSION_SQL`] found.
pub fn status(triggers: i32, found: Option<i32>) -> CaptureStatus {
    match (found, triggers) {
        (None, 0) => CaptureStatus::Missing,
        (Some(CAPTURE_VERSION), 2) => CaptureStatus::Installed,
        (found, _) => CaptureStatus::Outdated { found },
    }
}

/// Reads what is installed. Needs nothing beyond CONNECT: the catalog is public.
pub async fn inspect(client: &Client) -> Result<CaptureFacts, CatalogError> {
    let query = |source| CatalogError::Query {
        what: "the schema change capture objects",
        source,
    };
    let row = client.query_one(INSPECT_SQL, &[]).await.map_err(query)?;
    let triggers: i32 = row.get(0);
    let found = if row.get::<_, bool>(1) {
        let row = client.query_one(VERSION_SQL, &[]).await.map_err(query)?;
        Some(row.get::<_, i32>(0))
    } else {
        None
    };
    Ok(CaptureFacts {
        status: status(triggers, found),
        can_install: row.get(2),
    })
}

/// Installs or upgrades the capture objects (the role must be a superuser).
pub async fn install(client: &Client) -> Result<(), CatalogError> {
    client
        .batch_execute(&install_sql())
        .await
        .map_err(|source| CatalogError::Query {
            what: "installing the schema change capture objects",
            source,
        })
}

/// Removes the capture objects (the role must be a superuser or own them).
pub async fn uninstall(client: &Client) -> Result<(), CatalogError> {
    client
        .batch_execute(uninstall_sql())
        .await
        .map_err(|source| CatalogError::Query {
            what: "removing the schema change capture objects",
            source,
        })
}

/// The plugin options that let capture messages through (and no other messages).
pub fn with_messages(options: PluginOptions) -> PluginOptions {
    PluginOptions {
        add_msg_prefixes: vec![MESSAGE_PREFIX.to_owned()],
        ..options
    }
}

/// One capture message, as the event trigger function wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DdlMessage {
    #[serde(rename = "v")]
    pub version: i32,
    pub event: DdlEvent,
    pub tag: String,
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub search_path: Vec<String>,
    #[serde(default)]
    pub objects: Vec<DdlObject>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DdlEvent {
    /// The objects a command dropped; its `ddl_command_end` message follows.
    SqlDrop,
    /// A command finished: the message to act on.
    DdlCommandEnd,
}

/// An object a command created, altered or dropped, in `pg_identify_object` terms.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DdlObject {
    #[serde(rename = "type")]
    pub kind: String,
    /// `None` for objects outside schemas (a schema itself, an extension).
    pub schema: Option<String>,
    /// Qualified and quoted as needed: `public.orders`, `"My S".t.col`, `billing`.
    pub identity: String,
    /// `objid`: for a table, its OID.
    #[serde(default)]
    pub oid: Option<u32>,
    #[serde(default)]
    pub in_extension: bool,
    /// For an index: its table, `schema.name` quoted as needed.
    #[serde(default)]
    pub table: Option<String>,
}

/// Why a capture message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("a schema change message from the source is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error(
        "a schema change message from the source has version {found}, newer than this \
         tributary understands ({CAPTURE_VERSION})"
    )]
    Newer { found: i32 },
}

impl DdlMessage {
    pub fn parse(content: &str) -> Result<DdlMessage, MessageError> {
        let message: DdlMessage = serde_json::from_str(content)?;
        if message.version > CAPTURE_VERSION {
            return Err(MessageError::Newer {
                found: message.version,
            });
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_as_the_trigger_writes_them() {
        let content = r#"{"v": 1, "tag": "ALTER TABLE", "event": "ddl_command_end", "query": "alter table t add b int", "objects": [{"type": "table", "schema": "s", "identity": "s.t", "in_extension": false, "table": null}, {"type": "index", "schema": "s", "identity": "s.t_b", "in_extension": false, "table": "s.t"}], "search_path": ["s", "public"]}"#;
        let message = DdlMessage::parse(content).unwrap();
        assert_eq!(message.event, DdlEvent::DdlCommandEnd);
        assert_eq!(message.tag, "ALTER TABLE");
        assert_eq!(message.search_path, ["s", "public"]);
        assert_eq!(message.objects[1].table.as_deref(), Some("s.t"));
        let drop = r#"{"v": 1, "tag": "DROP TABLE", "event": "sql_drop", "query": "drop table t", "objects": [{"type": "table", "schema": "s", "identity": "s.t"}], "search_path": []}"#;
        assert_eq!(DdlMessage::parse(drop).unwrap().event, DdlEvent::SqlDrop);
    }

    #[test]
    fn newer_and_broken_messages_are_refused() {
        assert!(matches!(
            DdlMessage::parse(r#"{"v": 99, "tag": "X", "event": "ddl_command_end"}"#),
            Err(MessageError::Newer { found: 99 })
        ));
        assert!(DdlMessage::parse("not json").is_err());
        assert!(DdlMessage::parse(r#"{"v": 1, "tag": "X", "event": "other"}"#).is_err());
    }

    #[test]
    fn the_script_is_versioned_and_idempotent_in_form() {
        let sql = install_sql();
        assert!(sql.contains(&format!("SELECT {CAPTURE_VERSION}")));
        assert!(sql.contains("DROP EVENT TRIGGER IF EXISTS tributary_ddl_command_end"));
        assert!(sql.contains("CREATE OR REPLACE FUNCTION tributary.capture_ddl()"));
        assert!(!sql.contains("{MESSAGE_PREFIX}"));
        assert!(
            !sql.contains("EXCEPTION WHEN"),
            "no subtransaction around the message"
        );
    }
}
