-- A branch cut at a source position its requester names (`tributary verify`): the
-- requester cannot know the position before the pipeline stands still, so the pipeline
-- first holds at a source commit boundary and records where (held_at); the requester
-- then takes a source snapshot at a position at or after it and names that (cut_at); the
-- pipeline streams on up to exactly that position and cuts there.
ALTER TABLE tributary.branches
    ADD COLUMN hold boolean NOT NULL DEFAULT false,
    ADD COLUMN held_at pg_lsn,
    ADD COLUMN cut_at pg_lsn,
    ADD CONSTRAINT branches_hold_check CHECK (hold OR (held_at IS NULL AND cut_at IS NULL));
