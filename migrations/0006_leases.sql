-- Connector leases: several daemons may share one bookkeeping database, and each
-- connector's pipeline runs in exactly one of them, the holder of its lease.

-- Fencing tokens: every lease taken draws a new one, so tokens only grow, across
-- connectors deleted and re-created too.
CREATE SEQUENCE tributary.fencing_tokens;

-- The current lease of each connector. A lease is held until `expires_at` (the bookkeeping
-- server's clock); its holder renews it well before, and stops its pipeline by itself when
-- it could not. A released or expired lease may be taken by any daemon, with a new token.
CREATE TABLE tributary.leases (
    connector_id bigint PRIMARY KEY REFERENCES tributary.connectors (id) ON DELETE CASCADE,
    -- The holder, as `host:pid`, for `tributary status`.
    owner        text NOT NULL,
    token        bigint NOT NULL UNIQUE,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    renewed_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

-- Every lease ever taken, with when it ended (released, or found expired by the next
-- holder): who ran which connector when.
CREATE TABLE tributary.lease_history (
    token        bigint PRIMARY KEY,
    connector_id bigint NOT NULL REFERENCES tributary.connectors (id) ON DELETE CASCADE,
    owner        text NOT NULL,
    acquired_at  timestamptz NOT NULL,
    ended_at     timestamptz,
    CHECK (ended_at >= acquired_at)
);

CREATE INDEX lease_history_connector ON tributary.lease_history (connector_id, token);

-- The daemons running on this bookkeeping, as they last said so (every quarter of their
-- lease TTL): connectors are spread over those seen within one TTL. A paused daemon keeps
-- its sessions open but stops being seen.
CREATE TABLE tributary.daemons (
    name       text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);
