-- trigger.rs SQLite schema, version 4.
--
-- A run's tags are copied into `run_tags` by the store when it inserts the run (only runs
-- with tags cost a statement), no longer by a trigger. With a trigger on it, every insert
-- into `runs` could write more than one row, so SQLite kept a statement journal for it: a
-- copy of each page the insert changed, about a twentieth of the engine's instructions per
-- run. Updates that change the tags still go through `runs_tags_on_update`, which fires
-- only for them.

DROP TRIGGER runs_tags_on_insert;
