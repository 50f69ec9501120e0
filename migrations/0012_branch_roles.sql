-- Who a branch's URL logs in as (see src/control/branch_access.rs):
--
--   role_name NULL            made before branches had roles of their own: the store's role
--   role_created true         a login role tributary created for the branch and drops with
--                             it; its password sealed in password_ciphertext (ChaCha20-
--                             Poly1305 with the bookkeeping's key, associated data
--                             "tributary/branch_password/v1:" || name), never stored in clear
--   role_created false        an existing role named with `branch create --owner`: neither
--                             created nor dropped by tributary, its password unknown
ALTER TABLE tributary.branches
    ADD COLUMN role_name text CHECK (octet_length(role_name) BETWEEN 1 AND 63),
    ADD COLUMN role_created boolean,
    ADD COLUMN password_ciphertext bytea,
    ADD CONSTRAINT branches_role_check CHECK (
        (role_name IS NULL AND role_created IS NULL AND password_ciphertext IS NULL)
        OR (role_name IS NOT NULL AND role_created AND password_ciphertext IS NOT NULL)
        OR (role_name IS NOT NULL AND NOT role_created AND password_ciphertext IS NULL));
