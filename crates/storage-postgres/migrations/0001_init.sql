-- trigger.rs PostgreSQL schema, version 1.
--
-- Same shape as the SQLite schema: every row struct of `trigger_engine::model` is stored
-- whole as JSON text in `body`, so all fields round-trip exactly; the fields that queries
-- filter, join or order on are copied into indexed columns. Tags are `text[]` columns with
-- GIN indexes; text columns use the "C" collation, so ids and keys sort bytewise whatever the
-- server's locale. No foreign keys: the engine does not rely on them and the conformance suite
-- writes rows without parents.

CREATE TABLE organizations (
    id          text COLLATE "C" PRIMARY KEY,
    created_at  bigint NOT NULL,
    body        text COLLATE "C" NOT NULL
);
CREATE INDEX organizations_by_created ON organizations (created_at, id);

CREATE TABLE projects (
    id            text COLLATE "C" PRIMARY KEY,
    external_ref  text COLLATE "C" NOT NULL UNIQUE,
    org_id        text COLLATE "C" NOT NULL,
    created_at    bigint NOT NULL,
    body          text COLLATE "C" NOT NULL
);
CREATE INDEX projects_by_org ON projects (org_id, created_at, id);

CREATE TABLE api_keys (
    id          text COLLATE "C" PRIMARY KEY,
    env_id      text COLLATE "C",
    key_hash    text COLLATE "C" NOT NULL UNIQUE,
    created_at  bigint NOT NULL,
    body        text COLLATE "C" NOT NULL
);
CREATE INDEX api_keys_by_env ON api_keys (env_id, created_at, id);

CREATE TABLE environments (
    id          text COLLATE "C" PRIMARY KEY,
    project_id  text COLLATE "C" NOT NULL,
    created_at  bigint NOT NULL,
    body        text COLLATE "C" NOT NULL
);
CREATE INDEX environments_by_project ON environments (project_id, created_at, id);

-- Runs of an environment holding a slot. The row is also the environment's claim lock:
-- `env_running` reads it `FOR UPDATE`, so replicas take slots of one environment in turn.
CREATE TABLE env_running (
    env_id   text COLLATE "C" PRIMARY KEY,
    running  integer NOT NULL
);

-- `seq` orders versions registered in the same millisecond by insertion.
CREATE TABLE workers (
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    id          text COLLATE "C" PRIMARY KEY,
    env_id      text COLLATE "C" NOT NULL,
    version     text COLLATE "C" NOT NULL,
    created_at  bigint NOT NULL,
    body        text COLLATE "C" NOT NULL
);
CREATE INDEX workers_by_env ON workers (env_id, created_at, seq);
CREATE INDEX workers_by_version ON workers (env_id, version, created_at, seq);

CREATE TABLE tasks (
    env_id     text COLLATE "C" NOT NULL,
    worker_id  text COLLATE "C" NOT NULL,
    slug       text COLLATE "C" NOT NULL,
    body       text COLLATE "C" NOT NULL,
    PRIMARY KEY (env_id, worker_id, slug)
);

CREATE TABLE queues (
    env_id  text COLLATE "C" NOT NULL,
    name    text COLLATE "C" NOT NULL,
    lim     integer,
    paused  boolean NOT NULL,
    body    text COLLATE "C" NOT NULL,
    PRIMARY KEY (env_id, name)
);

CREATE TABLE runs (
    id               text COLLATE "C" PRIMARY KEY,
    env_id           text COLLATE "C" NOT NULL,
    task             text COLLATE "C" NOT NULL,
    status           text COLLATE "C" NOT NULL,
    queue            text COLLATE "C" NOT NULL,
    batch_id         text COLLATE "C",
    parent_run_id    text COLLATE "C",
    -- Version string of the worker the run was dequeued on, else the version it is locked to.
    version          text COLLATE "C",
    is_test          boolean NOT NULL,
    machine          text COLLATE "C",
    created_at       bigint NOT NULL,
    idempotency_key  text COLLATE "C",
    tags             text[] NOT NULL,
    body             text COLLATE "C" NOT NULL,
    -- NULLs are distinct, so runs without a key never collide.
    UNIQUE (env_id, task, idempotency_key)
);
CREATE INDEX runs_by_env ON runs (env_id, id);
CREATE INDEX runs_by_status ON runs (env_id, status, created_at, id);
CREATE INDEX runs_by_parent ON runs (parent_run_id, created_at, id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX runs_by_batch ON runs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX runs_by_tags ON runs USING gin (tags);

-- A NULL `payload_type` / `output_type` means "no payload" / "no output yet".
CREATE TABLE run_data (
    run_id        text COLLATE "C" PRIMARY KEY,
    payload       text COLLATE "C",
    payload_type  text COLLATE "C",
    output        text COLLATE "C",
    output_type   text COLLATE "C"
);

CREATE TABLE snapshots (
    id      text COLLATE "C" PRIMARY KEY,
    run_id  text COLLATE "C" NOT NULL,
    body    text COLLATE "C" NOT NULL
);
CREATE INDEX snapshots_by_run ON snapshots (run_id, id);

CREATE TABLE ready (
    run_id  text COLLATE "C" PRIMARY KEY,
    env_id  text COLLATE "C" NOT NULL,
    queue   text COLLATE "C" NOT NULL,
    ck      text COLLATE "C" NOT NULL,
    score   bigint NOT NULL,
    body    text COLLATE "C" NOT NULL
);
CREATE INDEX ready_by_subqueue ON ready (env_id, queue, ck, score, run_id);

-- One row per (queue, concurrency key) with something queued or running. The head score is
-- not stored: it is read as `min(score)` of the subqueue's ready entries (one index probe),
-- which is exact in any snapshot, where a stored copy could be recomputed from a snapshot
-- older than a concurrent enqueue it waited for.
CREATE TABLE subqueues (
    env_id       text COLLATE "C" NOT NULL,
    queue        text COLLATE "C" NOT NULL,
    ck           text COLLATE "C" NOT NULL,
    ready_count  integer NOT NULL,
    running      integer NOT NULL,
    lim          integer,
    paused       boolean NOT NULL,
    PRIMARY KEY (env_id, queue, ck)
);

-- A subqueue with nothing queued and nothing running is deleted (it reads as absent: all
-- counts zero), so concurrency keys used once do not pile up.
CREATE FUNCTION subqueues_drop_idle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM subqueues WHERE env_id = NEW.env_id AND queue = NEW.queue AND ck = NEW.ck;
    RETURN NULL;
END;
$$;
CREATE TRIGGER subqueues_drop_idle AFTER UPDATE OF ready_count, running ON subqueues
    FOR EACH ROW WHEN (NEW.ready_count = 0 AND NEW.running = 0)
    EXECUTE FUNCTION subqueues_drop_idle();

CREATE TABLE holders (
    run_id  text COLLATE "C" PRIMARY KEY,
    env_id  text COLLATE "C" NOT NULL,
    queue   text COLLATE "C" NOT NULL,
    ck      text COLLATE "C" NOT NULL
);

CREATE TABLE timers (
    key      text COLLATE "C" PRIMARY KEY,
    kind     text COLLATE "C" NOT NULL,
    target   text COLLATE "C" NOT NULL,
    fence    text COLLATE "C" NOT NULL,
    fire_at  bigint NOT NULL
);
CREATE INDEX timers_by_fire_at ON timers (fire_at, key);

CREATE TABLE waitpoints (
    id                   text COLLATE "C" PRIMARY KEY,
    env_id               text COLLATE "C" NOT NULL,
    kind                 text COLLATE "C" NOT NULL,
    status               text COLLATE "C" NOT NULL,
    idempotency_key      text COLLATE "C",
    completed_by_run_id  text COLLATE "C",
    output_is_error      boolean NOT NULL,
    created_at           bigint NOT NULL,
    tags                 text[] NOT NULL,
    body                 text COLLATE "C" NOT NULL,
    UNIQUE (env_id, idempotency_key)
);
CREATE INDEX waitpoints_by_run ON waitpoints (completed_by_run_id) WHERE completed_by_run_id IS NOT NULL;
CREATE INDEX waitpoints_by_env ON waitpoints (env_id, id);

-- `batch_index` is -1 for edges outside a batch, so that the UNIQUE constraint sees them.
CREATE TABLE blocks (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        text COLLATE "C" NOT NULL,
    waitpoint_id  text COLLATE "C" NOT NULL,
    batch_index   integer NOT NULL,
    body          text COLLATE "C" NOT NULL,
    UNIQUE (run_id, waitpoint_id, batch_index)
);
CREATE INDEX blocks_by_waitpoint ON blocks (waitpoint_id);

CREATE TABLE batches (
    id               text COLLATE "C" PRIMARY KEY,
    env_id           text COLLATE "C" NOT NULL,
    idempotency_key  text COLLATE "C",
    body             text COLLATE "C" NOT NULL,
    UNIQUE (env_id, idempotency_key)
);
CREATE INDEX batches_by_env ON batches (env_id, id);

CREATE TABLE batch_items (
    batch_id  text COLLATE "C" NOT NULL,
    idx       integer NOT NULL,
    run_id    text COLLATE "C" NOT NULL,
    PRIMARY KEY (batch_id, idx)
);

-- Events of one run are written under its row lock, so their `seq` order is commit order.
CREATE TABLE events (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id  text COLLATE "C" NOT NULL,
    body    text COLLATE "C" NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, seq);
