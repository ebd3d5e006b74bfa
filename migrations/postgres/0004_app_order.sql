-- The app id's two numbers (`application_<cluster_ts>_<seq>`) as integers, so the history of
-- apps the RM no longer keeps in memory lists newest first, by id, as the in-memory apps do
-- (the id text does not sort: `_10000` comes before `_9999`). Rows written before this
-- migration get them from their id.
-- The same shape as sqlite/0004_app_order.sql.
ALTER TABLE apps ADD COLUMN app_ts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE apps ADD COLUMN app_seq BIGINT NOT NULL DEFAULT 0;
UPDATE apps SET
    app_ts = CAST(split_part(app_id, '_', 2) AS BIGINT),
    app_seq = CAST(split_part(app_id, '_', 3) AS BIGINT);
CREATE INDEX apps_by_id ON apps (app_ts, app_seq);
