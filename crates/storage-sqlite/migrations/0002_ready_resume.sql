-- trigger.rs SQLite schema, version 2.
--
-- Ready entries of runs that continue on their worker (`resume`, see docs/state-machine.md)
-- are marked in a column of their own, with a partial index: a transaction reads which
-- subqueues have any (usually none) once, and a slot freed in any other subqueue is given
-- back without looking at that subqueue's head.

ALTER TABLE ready ADD COLUMN resume INTEGER NOT NULL DEFAULT 0;
UPDATE ready SET resume = 1 WHERE json_extract(body, '$.resume') = 1;
CREATE INDEX ready_resumes ON ready (env_id, queue, ck) WHERE resume;
