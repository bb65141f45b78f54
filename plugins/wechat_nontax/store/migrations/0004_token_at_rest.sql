-- The access token at rest: never in clear. `token_ciphertext` is the token encrypted with
-- Airflow's Fernet key, `token_sha256` what an invalidation compares. The clear column goes,
-- and every row is stale: the next fetch stores its token the new way.
--
-- Forced refreshes (stable_token's force_refresh: 20 a day, 30 s apart for the whole account)
-- are counted on the row, for every worker: when the last one was, and how many this Beijing
-- day (`forced_day`).
ALTER TABLE nontax.access_token
    ADD COLUMN token_ciphertext text,
    ADD COLUMN token_sha256 text,
    ADD COLUMN forced_at timestamptz,
    ADD COLUMN forced_day date,
    ADD COLUMN forced_count_day integer NOT NULL DEFAULT 0,
    DROP COLUMN token;
UPDATE nontax.access_token SET expires_at = NULL;
