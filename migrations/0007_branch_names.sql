-- Branch names: any database name PostgreSQL takes (1 to 63 bytes) without control
-- characters, as `BranchName` checks (it refuses more: every Unicode control character);
-- they are quoted wherever they are used.
ALTER TABLE tributary.branches DROP CONSTRAINT branches_name_check;
ALTER TABLE tributary.branches ADD CONSTRAINT branches_name_check
    CHECK (octet_length(name) BETWEEN 1 AND 63 AND name !~ E'[\\x01-\\x1f\\x7f]');
