-- What the operator decided, at `connector create`, about each table of the selected
-- schemas that has no usable replica identity. Kept across snapshots (connector_tables is
-- replaced by each one); a snapshot reads it to choose the tables it leaves out.
--
--   exclude                never replicated
--   add_pk                 the operator will add a key; excluded until then
--   replica_identity_full  the operator runs ALTER TABLE … REPLICA IDENTITY FULL; excluded
--                          from a snapshot that starts before they did
CREATE TABLE tributary.table_decisions (
    connector_id bigint NOT NULL REFERENCES tributary.connectors (id) ON DELETE CASCADE,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    decision     text NOT NULL
                 CHECK (decision IN ('exclude', 'add_pk', 'replica_identity_full')),
    decided_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector_id, schema_name, table_name)
);
