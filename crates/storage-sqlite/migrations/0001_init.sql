-- trigger.rs SQLite schema, version 1.
--
-- Every row struct of `trigger_engine::model` is stored whole as JSON in `body`, so that all
-- fields round-trip exactly; the fields that queries filter, join or order on are copied into
-- real, indexed columns next to it. Payloads and outputs live in `run_data` so that the many
-- small updates of a run never rewrite them.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX organizations_by_created ON organizations (created_at);

CREATE TABLE projects (
    id            TEXT PRIMARY KEY,
    external_ref  TEXT NOT NULL UNIQUE,
    org_id        TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX projects_by_org ON projects (org_id, created_at);

-- `env_id` is NULL for keys bound to no environment (personal access tokens, dashboard).
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    env_id      TEXT,
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX api_keys_by_env ON api_keys (env_id, created_at);

CREATE TABLE environments (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX environments_by_project ON environments (project_id, created_at);

-- Runs of an environment holding a concurrency slot (kept apart from `environments` so that
-- counting works for any env id and `update_environment` never races the counter).
CREATE TABLE env_running (
    env_id   TEXT PRIMARY KEY,
    running  INTEGER NOT NULL
);

CREATE TABLE workers (
    id          TEXT PRIMARY KEY,
    env_id      TEXT NOT NULL,
    version     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    body        TEXT NOT NULL
);
-- The implicit rowid suffix of these indexes orders ties by insertion.
CREATE INDEX workers_by_env ON workers (env_id, created_at);
CREATE INDEX workers_by_version ON workers (env_id, version, created_at);

CREATE TABLE tasks (
    env_id     TEXT NOT NULL,
    worker_id  TEXT NOT NULL,
    slug       TEXT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (env_id, worker_id, slug)
);

CREATE TABLE queues (
    env_id  TEXT NOT NULL,
    name    TEXT NOT NULL,
    lim     INTEGER,
    paused  INTEGER NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (env_id, name)
);

CREATE TABLE runs (
    id               TEXT PRIMARY KEY,
    env_id           TEXT NOT NULL,
    task             TEXT NOT NULL,
    status           TEXT NOT NULL,
    queue            TEXT NOT NULL,
    batch_id         TEXT,
    parent_run_id    TEXT,
    -- Version string of the worker the run was dequeued on, else the version it is locked to.
    version          TEXT,
    is_test          INTEGER NOT NULL,
    machine          TEXT,
    created_at       INTEGER NOT NULL,
    idempotency_key  TEXT,
    -- JSON array of the run's tags, mirrored into `run_tags` by the triggers below.
    tags             TEXT NOT NULL,
    body             TEXT NOT NULL,
    -- NULLs are distinct in SQLite, so runs without a key never collide.
    UNIQUE (env_id, task, idempotency_key)
);
CREATE INDEX runs_by_env ON runs (env_id, id);
CREATE INDEX runs_by_status ON runs (env_id, status, created_at);
CREATE INDEX runs_by_parent ON runs (parent_run_id, created_at) WHERE parent_run_id IS NOT NULL;
CREATE INDEX runs_by_batch ON runs (batch_id) WHERE batch_id IS NOT NULL;

CREATE TABLE run_tags (
    run_id  TEXT NOT NULL,
    tag     TEXT NOT NULL,
    PRIMARY KEY (run_id, tag)
) WITHOUT ROWID;
CREATE INDEX run_tags_by_tag ON run_tags (tag, run_id);

-- Keeping `run_tags` in step inside SQLite costs nothing on the (common) updates that leave
-- the tags alone, where a statement from Rust would run on every `update_run`.
CREATE TRIGGER runs_tags_on_insert AFTER INSERT ON runs WHEN new.tags <> '[]'
BEGIN
    INSERT OR IGNORE INTO run_tags (run_id, tag) SELECT new.id, value FROM json_each(new.tags);
END;
CREATE TRIGGER runs_tags_on_update AFTER UPDATE OF tags ON runs WHEN old.tags IS NOT new.tags
BEGIN
    DELETE FROM run_tags WHERE run_id = old.id;
    INSERT OR IGNORE INTO run_tags (run_id, tag) SELECT new.id, value FROM json_each(new.tags);
END;

-- A NULL `payload_type` / `output_type` means "no payload" / "no output yet".
CREATE TABLE run_data (
    run_id        TEXT PRIMARY KEY,
    payload       TEXT,
    payload_type  TEXT,
    output        TEXT,
    output_type   TEXT
);

CREATE TABLE snapshots (
    id      TEXT PRIMARY KEY,
    run_id  TEXT NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX snapshots_by_run ON snapshots (run_id, id);

CREATE TABLE ready (
    run_id  TEXT PRIMARY KEY,
    env_id  TEXT NOT NULL,
    queue   TEXT NOT NULL,
    ck      TEXT NOT NULL,
    score   INTEGER NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX ready_by_subqueue ON ready (env_id, queue, ck, score, run_id);

-- One row per (queue, concurrency key) with something queued or running. `head_score` is
-- NULL exactly when `ready_count` is 0; `lim` NULL means limited by the environment only.
CREATE TABLE subqueues (
    env_id       TEXT NOT NULL,
    queue        TEXT NOT NULL,
    ck           TEXT NOT NULL,
    ready_count  INTEGER NOT NULL,
    running      INTEGER NOT NULL,
    lim          INTEGER,
    paused       INTEGER NOT NULL,
    head_score   INTEGER,
    PRIMARY KEY (env_id, queue, ck)
);
CREATE INDEX subqueues_by_head ON subqueues (env_id, head_score, queue, ck);

-- A subqueue that has nothing queued and nothing running is deleted, so that concurrency
-- keys used once (per-user keys, say) do not pile up; such a subqueue reads as absent, which
-- means all counts zero. A new row takes its limit and paused flag from `queues` again.
CREATE TRIGGER subqueues_drop_idle AFTER UPDATE OF ready_count, running ON subqueues
WHEN new.ready_count = 0 AND new.running = 0
BEGIN
    DELETE FROM subqueues WHERE env_id = new.env_id AND queue = new.queue AND ck = new.ck;
END;

CREATE TABLE holders (
    run_id  TEXT PRIMARY KEY,
    env_id  TEXT NOT NULL,
    queue   TEXT NOT NULL,
    ck      TEXT NOT NULL
);

CREATE TABLE timers (
    key      TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    target   TEXT NOT NULL,
    fence    TEXT NOT NULL,
    fire_at  INTEGER NOT NULL
);
CREATE INDEX timers_by_fire_at ON timers (fire_at, key);

CREATE TABLE waitpoints (
    id                   TEXT PRIMARY KEY,
    env_id               TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    status               TEXT NOT NULL,
    idempotency_key      TEXT,
    completed_by_run_id  TEXT,
    output_is_error      INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    tags                 TEXT NOT NULL,
    body                 TEXT NOT NULL
);
CREATE UNIQUE INDEX waitpoints_by_key ON waitpoints (env_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX waitpoints_by_run ON waitpoints (completed_by_run_id)
    WHERE completed_by_run_id IS NOT NULL;
CREATE INDEX waitpoints_by_env ON waitpoints (env_id, id);

-- `batch_index` is -1 for edges outside a batch, so that the UNIQUE constraint sees them
-- (NULLs would all be distinct).
CREATE TABLE blocks (
    seq           INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL,
    waitpoint_id  TEXT NOT NULL,
    batch_index   INTEGER NOT NULL DEFAULT -1,
    body          TEXT NOT NULL,
    UNIQUE (run_id, waitpoint_id, batch_index)
);
CREATE INDEX blocks_by_waitpoint ON blocks (waitpoint_id);

CREATE TABLE batches (
    id               TEXT PRIMARY KEY,
    env_id           TEXT NOT NULL,
    idempotency_key  TEXT,
    body             TEXT NOT NULL
);
CREATE UNIQUE INDEX batches_by_key ON batches (env_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX batches_by_env ON batches (env_id, id);

CREATE TABLE batch_items (
    batch_id  TEXT NOT NULL,
    idx       INTEGER NOT NULL,
    run_id    TEXT NOT NULL,
    PRIMARY KEY (batch_id, idx)
) WITHOUT ROWID;

-- AUTOINCREMENT so that a seq is never reused, even after the newest events are deleted.
CREATE TABLE events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, seq);
