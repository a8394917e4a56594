-- trigger.rs PostgreSQL schema, version 4.
--
-- A run's row is rewritten at every transition, and its status is indexed, so each update
-- adds an entry to every index of `runs`. Two of them now hold only the rows they answer
-- for: the tags index the runs that have tags (a tag filter also says `tags <> '{}'`), and
-- the idempotency-key uniqueness the runs that have a key.

DROP INDEX runs_by_tags;
CREATE INDEX runs_by_tags ON runs USING gin (tags) WHERE tags <> '{}';

ALTER TABLE runs DROP CONSTRAINT runs_env_id_task_idempotency_key_key;
CREATE UNIQUE INDEX runs_by_key ON runs (env_id, task, idempotency_key) WHERE idempotency_key IS NOT NULL;
