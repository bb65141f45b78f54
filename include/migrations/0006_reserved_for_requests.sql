-- Placeholder: version 6 belongs to the refusal and void requests (issue 12, part 1), built on
-- another branch. It exists only so that this branch's migration 0007 follows without a gap;
-- the merge replaces this file with that branch's 0006 (delete this one then).
SELECT 1;
