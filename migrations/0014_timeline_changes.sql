-- Every timeline change of a connector's source that the pipeline followed (a promoted
-- standby, a restore whose history keeps everything the replica applied): from which
-- timeline, where the new history left it, and the server it was found on. `status`
-- shows the last one.
CREATE TABLE tributary.timeline_changes (
    connector_id  bigint NOT NULL REFERENCES tributary.connectors (id) ON DELETE CASCADE,
    from_timeline bigint NOT NULL,
    to_timeline   bigint NOT NULL,
    fork_lsn      pg_lsn NOT NULL,
    server        text NOT NULL,
    followed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector_id, to_timeline)
);
