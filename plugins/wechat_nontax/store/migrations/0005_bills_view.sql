-- The Bills view in the Airflow UI (plugins/nontax_bills_plugin.py).
--
-- A person's action from the view (issue now, and later refuse and void) goes into the order's
-- history under its own step, with the Airflow user's name.
ALTER TABLE nontax.bill_attempt DROP CONSTRAINT bill_attempt_step_known;
ALTER TABLE nontax.bill_attempt ADD CONSTRAINT bill_attempt_step_known CHECK (step IN (
    'load', 'validate', 'upload', 'insert', 'authorization', 'reset', 'pdf', 'recover',
    'operator'
));

-- The view's pages answer from indexes at a million orders: the orders of one status, newest
-- change first (and the counts by status, an index-only scan); the search by billing_code
-- (order_id is the key, billing_no leads the unique pair). Neither touches the columns a claim
-- or a hold stamps, so those updates stay HOT.
CREATE INDEX bill_order_status_updated_idx ON nontax.bill_order (status, updated_at, order_id);
CREATE INDEX bill_order_billing_code_idx ON nontax.bill_order (billing_code);
