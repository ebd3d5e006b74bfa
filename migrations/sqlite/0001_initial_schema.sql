-- The RM's durable state. Each record is kept whole as JSON in `doc`; the other columns copy the
-- few fields that queries filter or sort on, so the schema rarely has to change when a record does.
-- Keep this file the same shape as migrations/postgres/0001_initial_schema.sql.

-- One row (id = 1): the restart epoch that fences writers, and when the current RM started.
CREATE TABLE cluster_meta (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    epoch         BIGINT NOT NULL,
    started_at_ms BIGINT NOT NULL
);
INSERT INTO cluster_meta (id, epoch, started_at_ms) VALUES (1, 0, 0);

CREATE TABLE apps (
    app_id          TEXT PRIMARY KEY NOT NULL,
    state           TEXT NOT NULL,
    queue           TEXT NOT NULL,
    user_name       TEXT NOT NULL,
    submitted_at_ms BIGINT NOT NULL,
    finished_at_ms  BIGINT,
    doc             TEXT NOT NULL
);
-- load() sorts on it.
CREATE INDEX apps_by_submission ON apps (submitted_at_ms, app_id);
-- Retention looks up old finished apps.
CREATE INDEX apps_by_finish ON apps (finished_at_ms);

CREATE TABLE containers (
    container_id TEXT PRIMARY KEY NOT NULL,
    -- A container never outlives its app's record: retention deletes both together.
    app_id       TEXT NOT NULL REFERENCES apps (app_id),
    node_id      TEXT NOT NULL,
    state        TEXT NOT NULL,
    doc          TEXT NOT NULL
);
CREATE INDEX containers_by_app ON containers (app_id);

CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY NOT NULL,
    state   TEXT NOT NULL,
    doc     TEXT NOT NULL
);
