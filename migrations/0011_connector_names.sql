-- Connector names may contain '-' (`prod-db`), as `ConnectorName` checks; slot and replica
-- database names carry it as '_'.
ALTER TABLE tributary.connectors DROP CONSTRAINT connectors_name_check;
ALTER TABLE tributary.connectors ADD CONSTRAINT connectors_name_check
    CHECK (name ~ '^[a-z][a-z0-9_-]{0,31}$');
