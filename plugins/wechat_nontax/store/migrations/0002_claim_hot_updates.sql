-- Claiming stamps `claimed_by` and `claim_expires_at` on thousands of rows at once. Neither
-- column is indexed, so Postgres can update them in place (a HOT update, no index entries)
-- when the row's page has room: keep a fifth of each page free for that.
ALTER TABLE nontax.bill_order SET (fillfactor = 80);
