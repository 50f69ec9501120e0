-- Tables as units: each table's copy is exact at its own source position, kept here beside
-- how often it was copied; a table whose copy position the replica has passed is
-- `streaming`. A table can be in trouble on its own (`needs_decision`: no usable replica
-- identity yet; `failed`: a change of it could not be replicated, so it is held out of
-- the stream until copied again), with the problem and the operator's next step.
ALTER TABLE tributary.connector_tables
    DROP CONSTRAINT connector_tables_sync_state_check,
    ADD CONSTRAINT connector_tables_sync_state_check
        CHECK (sync_state IN ('pending', 'copying', 'copied', 'streaming',
                              'needs_decision', 'failed')),
    ADD COLUMN copied_lsn pg_lsn,
    ADD COLUMN copies integer NOT NULL DEFAULT 0 CHECK (copies >= 0),
    ADD COLUMN problem text,
    ADD COLUMN next_step text;
