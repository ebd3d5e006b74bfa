-- The app id's two numbers (`application_<cluster_ts>_<seq>`) as integers, so the history of
-- apps the RM no longer keeps in memory lists newest first, by id, as the in-memory apps do
-- (the id text does not sort: `_10000` comes before `_9999`). Rows written before this
-- migration get them from their id.
-- The same shape as postgres/0004_app_order.sql.
ALTER TABLE apps ADD COLUMN app_ts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE apps ADD COLUMN app_seq BIGINT NOT NULL DEFAULT 0;
UPDATE apps SET
    app_ts = CAST(substr(substr(app_id, 13), 1, instr(substr(app_id, 13), '_') - 1) AS INTEGER),
    app_seq = CAST(substr(substr(app_id, 13), instr(substr(app_id, 13), '_') + 1) AS INTEGER);
CREATE INDEX apps_by_id ON apps (app_ts, app_seq);
