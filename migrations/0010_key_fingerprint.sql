-- The fingerprint of the key this bookkeeping's source URLs are sealed with (see
-- src/bookkeeping/keys.rs): recorded with the first URL sealed, or, for URLs sealed before
-- this column existed, by the first command whose key opens every one of them. Every
-- command compares its key's fingerprint with it before writing anything, so that a wrong
-- key is named as such rather than failing to decrypt later, and no command makes a new
-- key once there is one. An HMAC of a constant under the key, cut to 64 bits: it tells keys
-- apart and reveals nothing of the key.
ALTER TABLE tributary.installation
    ADD COLUMN key_fingerprint text CHECK (key_fingerprint ~ '^[0-9a-f]{16}$');
