-- The installation: one per bookkeeping schema, whichever daemons share it. Its id is part
-- of the slot names of connectors created from now on (`tributary_<id>_<connector id>_<name>`),
-- so that two installations replicating one source (staging beside production) never
-- share, and so never take or drop, each other's slots.
CREATE TABLE tributary.installation (
    -- At most one row.
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- A lower-case letter, then 7 lower-case letters or digits (`InstallationId`); never
    -- all digits, so slot names carrying it are told apart from the older ones.
    id         text NOT NULL CHECK (id ~ '^[a-z][a-z0-9]{7}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO tributary.installation (id)
SELECT chr(97 + floor(random() * 26)::int)
       || string_agg(substr('abcdefghijklmnopqrstuvwxyz0123456789',
                            1 + floor(random() * 36)::int, 1), '')
  FROM generate_series(1, 7);

ALTER TABLE tributary.connectors
    -- Whether this installation may have created the connector's slot: set before the
    -- pipeline creates it. A slot by that name that exists while this is false was made by
    -- someone else, and is neither used nor dropped. Connectors that began a snapshot
    -- before this column existed created theirs.
    ADD COLUMN slot_created boolean NOT NULL DEFAULT false;

UPDATE tributary.connectors c SET slot_created = true
 WHERE EXISTS (SELECT FROM tributary.state_history h
                WHERE h.connector_id = c.id AND h.to_state = 'snapshotting');
