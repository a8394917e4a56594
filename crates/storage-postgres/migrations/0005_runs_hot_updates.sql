-- trigger.rs PostgreSQL schema, version 5.
--
-- A run's row is rewritten at every transition. While its status was indexed, each of
-- those updates wrote a new entry into every index of `runs`. Now no index covers the
-- status, and pages keep room for new row versions (fillfactor 70), so most transitions are
-- heap-only (HOT) updates that touch no index at all.
--
-- The engine looks runs up by status only for those waiting for a version
-- (`PENDING_VERSION`): a stored flag of its own, indexed where set, which changes only when
-- a run enters or leaves that status. Listing runs filtered by status walks the
-- environment's runs newest first (`runs_by_env`).

ALTER TABLE runs ADD COLUMN pending_version boolean
    GENERATED ALWAYS AS (status = 'PENDING_VERSION') STORED;
CREATE INDEX runs_pending_version ON runs (env_id, created_at, id) WHERE pending_version;
DROP INDEX runs_by_status;
ALTER TABLE runs SET (fillfactor = 70);
