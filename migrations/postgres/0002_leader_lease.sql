-- Leader election among several RMs on one database (HA): the active RM holds a lease on the
-- cluster_meta row. Taking the lease bumps the epoch (which fences the previous leader's writes)
-- and names the leader's advertised URL, where standbys redirect clients; the active renews the
-- expiry, which is read against the database's clock so the RMs' clocks need not agree.
ALTER TABLE cluster_meta ADD COLUMN leader_url TEXT NOT NULL DEFAULT '';
ALTER TABLE cluster_meta ADD COLUMN lease_expires_at TIMESTAMPTZ;
