-- trigger.rs SQLite schema, version 3.
--
-- A run's status changes at every transition, and while it was indexed each change moved
-- the run's entry in `runs_by_status`. The engine looks runs up by status only for those
-- waiting for a version (`PENDING_VERSION`): a partial index holds just those, and is
-- written only when a run enters or leaves that status. Listing runs filtered by status
-- walks the environment's runs newest first (`runs_by_env`).

DROP INDEX runs_by_status;
CREATE INDEX runs_pending_version ON runs (env_id, created_at, id) WHERE status = 'PENDING_VERSION';
