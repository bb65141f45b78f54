-- A person's action from the Bills view in the Airflow UI (issue now, and later refuse and
-- void) goes into the order's history under its own step, with the Airflow user's name.
ALTER TABLE nontax.bill_attempt DROP CONSTRAINT bill_attempt_step_known;
ALTER TABLE nontax.bill_attempt ADD CONSTRAINT bill_attempt_step_known CHECK (step IN (
    'load', 'validate', 'upload', 'insert', 'authorization', 'reset', 'pdf', 'recover',
    'operator'
));
