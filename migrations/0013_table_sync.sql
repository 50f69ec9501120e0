-- Tables as units (resumable snapshots): each table's copy is exact at its own source
-- position, kept here beside how often it was copied. A table whose copy position the
-- replica has passed is `streaming`.
ALTER TABLE tributary.connector_tables
    DROP CONSTRAINT connector_tables_sync_state_check,
    ADD CONSTRAINT connector_tables_sync_state_check
        CHECK (sync_state IN ('pending', 'copying', 'copied', 'streaming')),
    ADD COLUMN copied_lsn pg_lsn,
    ADD COLUMN copies integer NOT NULL DEFAULT 0 CHECK (copies >= 0);
