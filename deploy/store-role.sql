-- The branch store's role and control database. Run as a superuser on the branch store:
--   psql -v ON_ERROR_STOP=1 -d postgres -f deploy/store-role.sql
-- then set store.url to postgresql://tributary_store:<password>@<host>:5432/tributary
-- and run `tributary store check`. Change the password (or set it with psql's \password).
CREATE ROLE tributary_store LOGIN CREATEDB CREATEROLE PASSWORD 'change-me';
-- PostgreSQL 15 and newer. On 13 and 14 there is no such grant: only a superuser may set
-- session_replication_role, so the role must be one (ALTER ROLE tributary_store SUPERUSER;).
GRANT SET ON PARAMETER session_replication_role TO tributary_store;
-- Optional (15+): a checkpoint ahead of each branch cut, so that replication does not stand
-- still while the server flushes what the snapshot or recent changes left dirty.
GRANT pg_checkpoint TO tributary_store;
CREATE DATABASE tributary OWNER tributary_store;
