-- Branches: databases on the branch store copied from a connector's replica at a source
-- commit boundary.
--
--   requested  `branch create` asked the daemon's pipeline to cut it
--   cutting    claimed by whoever copies it (the pipeline, or the command itself when no
--              pipeline runs); the database may exist partly
--   copied     the database exists (CREATE DATABASE … TEMPLATE), at `lsn`; not usable yet
--   ready      sequences set, extensions dropped: handed to the user
--   failed     the cut failed (`error`); the database does not exist
CREATE TABLE tributary.branches (
    name           text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- Kept when the connector is deleted (branches outlive it): NULL then.
    connector_id   bigint REFERENCES tributary.connectors (id) ON DELETE SET NULL,
    connector_name text NOT NULL,
    state          text NOT NULL DEFAULT 'requested'
                   CHECK (state IN ('requested', 'cutting', 'copied', 'ready', 'failed')),
    -- The source commit position the branch's data represents.
    lsn            pg_lsn,
    -- How long the pipeline stood still for the copy.
    pause_ms       bigint CHECK (pause_ms >= 0),
    -- The database's size when it became ready.
    size_bytes     bigint CHECK (size_bytes >= 0),
    error          text,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    created_at     timestamptz
);

CREATE INDEX branches_connector ON tributary.branches (connector_id);

-- Tells the supervisor (LISTEN tributary_branches) which connector has a request; the
-- payload is the connector's id.
CREATE FUNCTION tributary.notify_branch_request() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.state = 'requested' AND NEW.connector_id IS NOT NULL THEN
        PERFORM pg_notify('tributary_branches', NEW.connector_id::text);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER branches_notify AFTER INSERT OR UPDATE ON tributary.branches
    FOR EACH ROW EXECUTE FUNCTION tributary.notify_branch_request();
