-- Departed nodes (DECOMMISSIONED, LOST) the RM has forgotten after `departed_node_expiry`: their
-- rows stay as history, with the time they were forgotten copied out of the doc, so that a
-- restart does not reload them and retention can delete old ones.
-- The same shape as sqlite/0003_forgotten_nodes.sql.
ALTER TABLE nodes ADD COLUMN forgotten_at_ms BIGINT;
