-- The apply lag (and changes applied) each connector's daemon last measured (`tributary status` shows it). Kept
-- apart from `connectors`, whose every update wakes the supervisors.
CREATE TABLE tributary.apply_lag (
    connector_id bigint PRIMARY KEY REFERENCES tributary.connectors (id) ON DELETE CASCADE,
    seconds      double precision NOT NULL CHECK (seconds >= 0),
    -- Row changes the daemon has applied for it since it started (for rates).
    changes      bigint NOT NULL DEFAULT 0 CHECK (changes >= 0),
    measured_at  timestamptz NOT NULL DEFAULT now()
);
