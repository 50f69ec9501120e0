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
//! Any role may call `pg_logical_emit_message`, so a message alone proves nothing. The
//! trigger function therefore hands over to `tributary.emit`, a SECURITY DEFINER function
//! owned by a superuser that describes the command itself (it fails outside an event
//! trigger), and signs the message with a key in `tributary.capture_key` that only
//! superusers and tributary's role may read ([`CaptureKey::verify`]). The objects count as
//! installed only while a superuser owns them.
//!
//! There is no exception handler: a command whose message cannot be emitted fails on the
//! source rather than go unreplicated (and a handler's subtransaction would make logical
//! decoding deliver the message after the row changes that follow it).

use serde::Deserialize;
use tokio_postgres::Client;

use crate::source::catalog::CatalogError;
use crate::source::wal2json::PluginOptions;

/// Version of the source-side objects this build installs and understands.
pub const CAPTURE_VERSION: i32 = 2;

/// Prefix of the logical messages the event triggers emit (`add-msg-prefixes`).
pub const MESSAGE_PREFIX: &str = "tributary.ddl";

/// The SQL that installs (or upgrades) the capture objects: run it as a superuser in the
/// source database. One transaction; running it again changes nothing.
pub fn install_sql() -> String {
    format!(
        r#"-- tributary schema change capture, version {CAPTURE_VERSION}.
-- Run once as a superuser in the source database (event triggers need one); after that,
-- tributary's own role needs no more than REPLICATION, CONNECT and SELECT (and SELECT on
-- tributary.capture_key, granted below or with `GRANT SELECT ON tributary.capture_key TO
-- <role>`). Running this again changes nothing, and upgrades an older version in place.
BEGIN;
DO $check$ BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace n
                 JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
                WHERE n.nspname = 'tributary' AND NOT r.rolsuper) THEN
        RAISE EXCEPTION 'schema tributary exists and is not owned by a superuser: drop or rename it first';
    END IF;
END $check$;
-- The triggers go first, so that this script's own commands do not fire an older version's,
-- and come back last.
DROP EVENT TRIGGER IF EXISTS tributary_ddl_command_end;
DROP EVENT TRIGGER IF EXISTS tributary_sql_drop;
DROP EVENT TRIGGER IF EXISTS tributary_a_note_ddl_command_end;
DROP EVENT TRIGGER IF EXISTS tributary_a_note_sql_drop;
CREATE SCHEMA IF NOT EXISTS tributary;
COMMENT ON SCHEMA tributary IS 'tributary schema change capture (see tributary connector source-sql)';
GRANT USAGE ON SCHEMA tributary TO PUBLIC;

CREATE OR REPLACE FUNCTION tributary.capture_version() RETURNS integer
    LANGUAGE sql IMMUTABLE AS 'SELECT {CAPTURE_VERSION}';
GRANT EXECUTE ON FUNCTION tributary.capture_version() TO PUBLIC;

-- Any role may emit logical messages, so each one is signed with a key only superusers and
-- tributary's role can read: a message without the right signature is not replayed. The key
-- is kept in a materialized view, not a table: every FOR ALL TABLES publication would
-- publish a table, and break its subscribers. Its definition names a setting of the
-- installing transaction, so the key itself is in no catalog and a REFRESH cannot recreate
-- it (tributary.emit also refuses one). Version 1 kept the key in a table: it carries over.
DO $key$
DECLARE
    seed text;
    readers text[] := '{{}}';
    reader text;
    kind text;
BEGIN
    -- Replaced: version 1's table (its key carries over), or the empty view a restored
    -- dump of the source has (its REFRESH fails): a new key then, read at the next start.
    SELECT c.relkind::text INTO kind FROM pg_catalog.pg_class c
     WHERE c.oid = pg_catalog.to_regclass('tributary.capture_key')
       AND (c.relkind = 'r' OR NOT c.relispopulated);
    IF kind IS NOT NULL THEN
        IF kind = 'r' THEN
            SELECT k.key INTO seed FROM tributary.capture_key k LIMIT 1;
        END IF;
        SELECT coalesce(pg_catalog.array_agg(r.rolname), '{{}}') INTO readers
          FROM pg_catalog.pg_class c,
               LATERAL pg_catalog.aclexplode(c.relacl) a
          JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
         WHERE c.oid = 'tributary.capture_key'::pg_catalog.regclass
           AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner;
        EXECUTE CASE kind WHEN 'r' THEN 'DROP TABLE tributary.capture_key'
                          ELSE 'DROP MATERIALIZED VIEW tributary.capture_key' END;
    END IF;
    IF pg_catalog.to_regclass('tributary.capture_key') IS NULL THEN
        PERFORM pg_catalog.set_config('tributary.capture_seed', coalesce(seed,
            pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text), true);
        CREATE MATERIALIZED VIEW tributary.capture_key AS
            SELECT pg_catalog.current_setting('tributary.capture_seed') AS key;
        PERFORM pg_catalog.set_config('tributary.capture_seed', '', true);
        REVOKE ALL ON tributary.capture_key FROM PUBLIC;
        FOREACH reader IN ARRAY readers LOOP
            EXECUTE pg_catalog.format('GRANT SELECT ON tributary.capture_key TO %I', reader);
        END LOOP;
    END IF;
END
$key$;

-- Describes the command it is called for (it fails outside an event trigger), signs and
-- emits it. Only tributary.capture_ddl(), run as its owner, calls it.
CREATE OR REPLACE FUNCTION tributary.emit(event text, tag text, search_path jsonb) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $emit$
DECLARE
    touched jsonb;
    body text;
    secret text;
BEGIN
    -- A restored dump of the source has an empty key view until this script runs again;
    -- nothing can follow it then, and its users' DDL must not fail.
    IF NOT coalesce((SELECT relispopulated FROM pg_class
                      WHERE oid = to_regclass('tributary.capture_key')), false) THEN
        RETURN;
    END IF;
    IF event = 'sql_drop' THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'type', d.object_type, 'schema', d.schema_name,
                   'identity', d.object_identity, 'oid', d.objid::int8)), '[]')
          INTO touched
          FROM pg_event_trigger_dropped_objects() d
         WHERE NOT d.is_temporary;
    ELSE
        IF tag = 'REFRESH MATERIALIZED VIEW' AND EXISTS (
               SELECT FROM pg_event_trigger_ddl_commands() c
                WHERE c.objid = 'tributary.capture_key'::regclass) THEN
            RAISE EXCEPTION 'tributary.capture_key holds the key of tributary''s schema change '
                'capture and must not be refreshed';
        END IF;
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'type', c.object_type, 'schema', c.schema_name,
                   'identity', c.object_identity, 'oid', c.objid::int8,
                   'in_extension', c.in_extension,
                   'table', (SELECT format('%I.%I', n.nspname, t.relname)
                               FROM pg_index i
                               JOIN pg_class t ON t.oid = i.indrelid
                               JOIN pg_namespace n ON n.oid = t.relnamespace
                              WHERE c.object_type = 'index' AND i.indexrelid = c.objid))), '[]')
          INTO touched
          FROM pg_event_trigger_ddl_commands() c;
    END IF;
    body := jsonb_build_object(
        'v', {CAPTURE_VERSION}, 'event', event, 'tag', tag, 'query', current_query(),
        'search_path', search_path, 'objects', touched,
        'settings', jsonb_build_object(
            'TimeZone', current_setting('TimeZone'),
            'DateStyle', current_setting('DateStyle'),
            'IntervalStyle', current_setting('IntervalStyle'),
            'standard_conforming_strings', current_setting('standard_conforming_strings')))::text;
    SELECT k.key INTO secret FROM tributary.capture_key k;
    IF secret IS NULL OR secret = '' THEN
        RAISE EXCEPTION 'tributary.capture_key holds no key'
            USING HINT = 'Run the SQL of `tributary connector source-sql` again as a superuser.';
    END IF;
    PERFORM pg_logical_emit_message(true, '{MESSAGE_PREFIX}',
        encode(sha256(convert_to(secret || encode(sha256(convert_to(secret || body, 'UTF8')), 'hex'), 'UTF8')), 'hex')
        || ' ' || body);
END
$emit$;
REVOKE ALL ON FUNCTION tributary.emit(text, text, jsonb) FROM PUBLIC;

-- Two event triggers per event, fired in the order of their names. First
-- tributary.note_search_path(), as the session's role, notes the schemas names resolve in
-- ("$user" is the session's user only there). Then tributary.capture_ddl(), as its owner,
-- emits the message with that note. No role's code runs between the two, and an event
-- trigger function cannot be called other than as one: nobody can make tributary.emit say
-- what they like. Names are qualified (the note runs under the session's search_path), and
-- there is no EXCEPTION block, whose subtransaction would make logical decoding deliver the
-- message after the changes that follow it: a command whose message cannot be emitted
-- fails rather than go unreplicated.
CREATE OR REPLACE FUNCTION tributary.note_search_path() RETURNS event_trigger
    LANGUAGE plpgsql AS $note$
BEGIN
    PERFORM pg_catalog.set_config('tributary.search_path',
        pg_catalog.format('%s', pg_catalog.to_jsonb(pg_catalog.current_schemas(false))), true);
END
$note$;
GRANT EXECUTE ON FUNCTION tributary.note_search_path() TO PUBLIC;

CREATE OR REPLACE FUNCTION tributary.capture_ddl() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $capture$
BEGIN
    PERFORM tributary.emit(TG_EVENT, TG_TAG,
        coalesce(nullif(current_setting('tributary.search_path', true), ''), '[]')::jsonb);
END
$capture$;
GRANT EXECUTE ON FUNCTION tributary.capture_ddl() TO PUBLIC;

CREATE EVENT TRIGGER tributary_a_note_ddl_command_end ON ddl_command_end
    EXECUTE FUNCTION tributary.note_search_path();
CREATE EVENT TRIGGER tributary_a_note_sql_drop ON sql_drop
    EXECUTE FUNCTION tributary.note_search_path();
CREATE EVENT TRIGGER tributary_ddl_command_end ON ddl_command_end
    EXECUTE FUNCTION tributary.capture_ddl();
CREATE EVENT TRIGGER tributary_sql_drop ON sql_drop
    EXECUTE FUNCTION tributary.capture_ddl();
COMMIT;
"#
    )
}

/// `GRANT` of the signing key to the role tributary connects as.
pub fn grant_key_sql(role: &str) -> String {
    format!(
        "GRANT SELECT ON tributary.capture_key TO {};",
        crate::pg::quote_ident(role)
    )
}

/// The SQL that removes the capture objects (the schema only if nothing else is in it).
pub fn uninstall_sql() -> &'static str {
    "BEGIN;
DROP EVENT TRIGGER IF EXISTS tributary_ddl_command_end;
DROP EVENT TRIGGER IF EXISTS tributary_sql_drop;
DROP EVENT TRIGGER IF EXISTS tributary_a_note_ddl_command_end;
DROP EVENT TRIGGER IF EXISTS tributary_a_note_sql_drop;
DROP FUNCTION IF EXISTS tributary.capture_ddl();
DROP FUNCTION IF EXISTS tributary.note_search_path();
DROP FUNCTION IF EXISTS tributary.emit(text, text, jsonb);
DROP FUNCTION IF EXISTS tributary.capture_version();
DO $drop$ BEGIN
    -- A materialized view since version 2, a table before.
    IF pg_catalog.to_regclass('tributary.capture_key') IS NOT NULL THEN
        EXECUTE CASE (SELECT relkind FROM pg_catalog.pg_class
                       WHERE oid = 'tributary.capture_key'::pg_catalog.regclass)
            WHEN 'm' THEN 'DROP MATERIALIZED VIEW tributary.capture_key'
            ELSE 'DROP TABLE tributary.capture_key' END;
    END IF;
END $drop$;
DROP SCHEMA IF EXISTS tributary RESTRICT;
COMMIT;
"
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

/// What the source has installed, whether this session's role could install it, and the
/// signing key if it may read it.
#[derive(Debug, Clone)]
pub struct CaptureFacts {
    pub status: CaptureStatus,
    pub can_install: bool,
    pub key: Option<CaptureKey>,
}

/// Enabled capture triggers calling our function, whether the version function exists,
/// whether this role may install them (a superuser, on a primary: a standby source gets
/// them from its primary), and whether it may read the signing key. The
/// functions must belong to a superuser: anyone else could rewrite what every DDL runs.
pub const INSPECT_SQL: &str = "\
    SELECT CASE WHEN coalesce((SELECT c.relispopulated FROM pg_catalog.pg_class c \
                               WHERE c.oid = pg_catalog.to_regclass('tributary.capture_key')), \
                              false) \
           THEN (SELECT count(*) FROM pg_catalog.pg_event_trigger e \
             WHERE e.evtenabled <> 'D' \
               AND (e.evtname IN ('tributary_ddl_command_end', 'tributary_sql_drop') \
                    AND e.evtfoid = pg_catalog.to_regprocedure('tributary.capture_ddl()') \
                    OR e.evtname IN ('tributary_a_note_ddl_command_end', \
                                     'tributary_a_note_sql_drop') \
                    AND e.evtfoid = pg_catalog.to_regprocedure('tributary.note_search_path()')) \
               AND (SELECT bool_and(r.rolsuper) FROM pg_catalog.pg_proc p \
                      JOIN pg_catalog.pg_roles r ON r.oid = p.proowner \
                     WHERE p.oid IN (e.evtfoid, \
                           pg_catalog.to_regprocedure('tributary.emit(text, text, jsonb)'))) \
               AND pg_catalog.to_regprocedure('tributary.emit(text, text, jsonb)') IS NOT NULL)::int \
           ELSE 0 END, \
           pg_catalog.to_regprocedure('tributary.capture_version()') IS NOT NULL, \
           coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false) \
             AND NOT pg_catalog.pg_is_in_recovery(), \
           pg_catalog.to_regclass('tributary.capture_key') IS NOT NULL \
             AND pg_catalog.has_table_privilege('tributary.capture_key', 'SELECT') \
             AND (SELECT c.relispopulated FROM pg_catalog.pg_class c \
                   WHERE c.oid = pg_catalog.to_regclass('tributary.capture_key'))";

/// The event triggers of a complete installation: a note and an emit for each event.
const TRIGGERS: i32 = 4;

/// The installed version, once [`INSPECT_SQL`] found the function.
pub const VERSION_SQL: &str = "SELECT tributary.capture_version()";

const KEY_SQL: &str = "SELECT key FROM tributary.capture_key";

/// The status from what [`INSPECT_SQL`] and [`VERSION_SQL`] found.
pub fn status(triggers: i32, found: Option<i32>) -> CaptureStatus {
    match (found, triggers) {
        (None, 0) => CaptureStatus::Missing,
        (Some(CAPTURE_VERSION), TRIGGERS) => CaptureStatus::Installed,
        (found, _) => CaptureStatus::Outdated { found },
    }
}

/// The key capture messages are signed with. Never printed.
#[derive(Clone)]
pub struct CaptureKey(String);

impl std::fmt::Debug for CaptureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaptureKey(****)")
    }
}

impl CaptureKey {
    /// `sha256(key || hex(sha256(key || body)))`, hex: what `tributary.emit` writes.
    fn sign(&self, body: &str) -> String {
        let inner = hex(ring::digest::digest(
            &ring::digest::SHA256,
            format!("{}{body}", self.0).as_bytes(),
        )
        .as_ref());
        hex(ring::digest::digest(
            &ring::digest::SHA256,
            format!("{}{inner}", self.0).as_bytes(),
        )
        .as_ref())
    }

    /// The body of a signed message, `None` when the signature is not ours.
    pub fn verify<'a>(&self, content: &'a str) -> Option<&'a str> {
        let (signature, body) = content.split_once(' ')?;
        let expected = self.sign(body);
        #[allow(deprecated)] // the one constant-time comparison ring offers for byte slices
        let equal =
            ring::constant_time::verify_slices_are_equal(signature.as_bytes(), expected.as_bytes());
        equal.is_ok().then_some(body)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads what is installed, and the signing key if this role may read it. Needs nothing
/// beyond CONNECT otherwise: the catalog is public.
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
    let key = if row.get::<_, bool>(3) {
        let rows = client.query(KEY_SQL, &[]).await.map_err(query)?;
        rows.first().map(|row| CaptureKey(row.get(0)))
    } else {
        None
    };
    Ok(CaptureFacts {
        status: status(triggers, found),
        can_install: row.get(2),
        key,
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
    /// The session settings that decide how literals in the command are read:
    /// `TimeZone`, `DateStyle`, `IntervalStyle`, `standard_conforming_strings`.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
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
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `None` for objects outside schemas (a schema itself, an extension).
    pub schema: Option<String>,
    /// Qualified and quoted as needed: `public.orders`, `"My S".t.col`, `billing`. `None`
    /// where PostgreSQL reports none (the objects of `GRANT`, `REVOKE` and `ALTER DEFAULT
    /// PRIVILEGES`).
    #[serde(default)]
    pub identity: Option<String>,
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
    /// Parses a message body (see [`CaptureKey::verify`]).
    pub fn parse(body: &str) -> Result<DdlMessage, MessageError> {
        let message: DdlMessage = serde_json::from_str(body)?;
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
    fn signatures_match_what_postgres_computes_and_nothing_else() {
        // SELECT encode(sha256(convert_to('key ü' || encode(sha256(convert_to(
        //     'key ü' || '{"v": 1}', 'UTF8')), 'hex'), 'UTF8')), 'hex')
        let key = CaptureKey("key ü".into());
        let signed = "82dbdd62a4625bd81d42fd3aee79235db44796eb97eeee71127495fc3292200a {\"v\": 1}";
        assert_eq!(key.verify(signed), Some("{\"v\": 1}"));
        assert_eq!(
            key.verify(&signed.replace("{\"v\": 1}", "{\"v\": 2}")),
            None
        );
        assert_eq!(key.verify("{\"v\": 1}"), None);
        assert_eq!(CaptureKey("other".into()).verify(signed), None);
        assert_eq!(format!("{key:?}"), "CaptureKey(****)");
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
        // The note of the search path fires first: event triggers fire by name.
        assert!("tributary_a_note_ddl_command_end" < "tributary_ddl_command_end");
        assert!("tributary_a_note_sql_drop" < "tributary_sql_drop");
        assert!(!sql.contains("{MESSAGE_PREFIX}"));
        assert!(
            !sql.contains("EXCEPTION WHEN"),
            "no subtransaction around the message"
        );
    }
}
