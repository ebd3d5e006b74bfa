-- The same shape as postgres/0002_leader_lease.sql. SQLite serves one RM (the store holds an
-- exclusive lock on the database), so no lease is taken here: the columns name the RM that
-- started last and stay empty otherwise.
ALTER TABLE cluster_meta ADD COLUMN leader_url TEXT NOT NULL DEFAULT '';
ALTER TABLE cluster_meta ADD COLUMN lease_expires_at_ms INTEGER;
