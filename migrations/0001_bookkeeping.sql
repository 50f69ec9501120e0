-- The bookkeeping schema: connectors, their tables, and the history of their states.
--
-- Only src/bookkeeping/ reads and writes these tables. Every name is schema-qualified,
-- so this file means the same whatever the session's search_path is.

CREATE SCHEMA IF NOT EXISTS tributary;

-- Keeps updated_at honest without every UPDATE having to remember it.
CREATE FUNCTION tributary.touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- Tells the supervisor (LISTEN tributary_connectors) which connector changed; the payload
-- is the connector's id. The supervisor also polls, so a missed notification only delays.
CREATE FUNCTION tributary.notify_connector_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tributary_connectors', OLD.id::text);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('tributary_connectors', NEW.id::text);
    RETURN NEW;
END
$$;

CREATE TABLE tributary.connectors (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                  text NOT NULL UNIQUE
                          CHECK (name ~ '^[a-z][a-z0-9_]{0,31}$'),
    -- nonce (12 bytes) || ChaCha20-Poly1305 ciphertext and tag; see bookkeeping/secrets.rs.
    source_url_ciphertext bytea NOT NULL,
    -- The source URL with its password masked, for listings.
    source_display        text NOT NULL,
    schemas               text[] NOT NULL DEFAULT '{}',
    enabled               boolean NOT NULL DEFAULT true,
    slot_name             text NOT NULL UNIQUE,
    replica_database      text NOT NULL UNIQUE,
    state                 text NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'validating', 'snapshotting',
                                           'streaming', 'failed', 'stopped')),
    -- Set together with state 'failed' (and kept while a transient error is retried).
    last_error            text,
    next_step             text,
    -- The source's identity as seen at setup (IDENTIFY_SYSTEM, current_database()).
    system_id             text,
    timeline              bigint CHECK (timeline BETWEEN 0 AND 4294967295),
    source_database       text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER connectors_touch BEFORE UPDATE ON tributary.connectors
    FOR EACH ROW EXECUTE FUNCTION tributary.touch_updated_at();

CREATE TRIGGER connectors_notify AFTER INSERT OR UPDATE OR DELETE ON tributary.connectors
    FOR EACH ROW EXECUTE FUNCTION tributary.notify_connector_change();

-- One row per source table of the current snapshot: what was decided about it and how far
-- its copy got. Replaced as a whole when a new snapshot starts.
CREATE TABLE tributary.connector_tables (
    connector_id bigint NOT NULL REFERENCES tributary.connectors (id) ON DELETE CASCADE,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    decision     text NOT NULL DEFAULT 'include',
    sync_state   text NOT NULL DEFAULT 'pending'
                 CHECK (sync_state IN ('pending', 'copying', 'copied')),
    rows_copied  bigint NOT NULL DEFAULT 0 CHECK (rows_copied >= 0),
    bytes_copied bigint NOT NULL DEFAULT 0 CHECK (bytes_copied >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector_id, schema_name, table_name)
);

CREATE TRIGGER connector_tables_touch BEFORE UPDATE ON tributary.connector_tables
    FOR EACH ROW EXECUTE FUNCTION tributary.touch_updated_at();

-- Every state a connector's pipeline was put in, oldest first by id.
CREATE TABLE tributary.state_history (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connector_id bigint NOT NULL REFERENCES tributary.connectors (id) ON DELETE CASCADE,
    from_state   text CHECK (from_state IN ('pending', 'validating', 'snapshotting',
                                            'streaming', 'failed', 'stopped')),
    to_state     text NOT NULL
                 CHECK (to_state IN ('pending', 'validating', 'snapshotting',
                                     'streaming', 'failed', 'stopped')),
    error        text,
    at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX state_history_connector ON tributary.state_history (connector_id, id);
