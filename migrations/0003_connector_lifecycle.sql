-- What `connector retry-setup`, `switch` and `update` record about a connector.

ALTER TABLE tributary.connectors
    -- Set by retry-setup when the replica must be rebuilt (lost slot, tables fixed since the
    -- snapshot); the pipeline clears it in the transaction that starts the new snapshot.
    ADD COLUMN resnapshot_requested boolean NOT NULL DEFAULT false,
    -- The connector commands use when --connector is omitted; at most one (index below).
    ADD COLUMN active boolean NOT NULL DEFAULT false,
    -- Extensions that branches of this connector leave out.
    ADD COLUMN drop_extensions text[] NOT NULL DEFAULT '{}',
    -- Whether tables created later in the selected schemas are replicated.
    ADD COLUMN include_new_tables boolean NOT NULL DEFAULT true;

CREATE UNIQUE INDEX connectors_one_active ON tributary.connectors (active) WHERE active;
