-- The operator's decision, for a source whose wal2json predates 2.6: NaN, Infinity and
-- -Infinity in numeric and float columns arrive as NULL (wal2json cannot send them). Until
-- it is recorded, tables with such columns are refused rather than silently changed.
ALTER TABLE tributary.connectors
    ADD COLUMN nan_as_null boolean NOT NULL DEFAULT false;
