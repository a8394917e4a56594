-- trigger.rs PostgreSQL schema, version 3.
--
-- Ready entries of runs that continue on their worker (`resume`, see docs/state-machine.md)
-- are marked in a column of their own, with a partial index: a transaction reads which
-- subqueues have any (usually none) once, and a slot freed in any other subqueue is given
-- back without looking at that subqueue's head.

ALTER TABLE ready ADD COLUMN resume boolean NOT NULL DEFAULT false;
UPDATE ready SET resume = true WHERE (body::json ->> 'resume') = 'true';
CREATE INDEX ready_resumes ON ready (env_id, queue, ck) WHERE resume;
