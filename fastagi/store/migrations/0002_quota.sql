-- Quota chunks (docs/rules.md rule 9): a call holds one chunk at a time, renewed mid-call.
-- granted_s and reserved (version 1) become the totals over all chunks; chunk N > 0 is the
-- pending transfer 'call:<billing id>:r<N>'.
ALTER TABLE calls ADD COLUMN renewals INTEGER NOT NULL DEFAULT 0 CHECK (renewals >= 0);
-- 1: nothing more will be granted (unless the account is recharged); all version-1 grants were.
ALTER TABLE calls ADD COLUMN grant_final INTEGER NOT NULL DEFAULT 1 CHECK (grant_final IN (0, 1));
-- The callee channel (its uniqueid) whose hangup time a renewal moves; known from AMI.
ALTER TABLE calls ADD COLUMN callee TEXT;

-- Which serve process supervises calls (renews them through its AMI connection), and until
-- when: a call set up while nobody holds the lease gets a final grant of all it can pay.
CREATE TABLE IF NOT EXISTS supervisor_lease (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    holder    TEXT    NOT NULL,
    until_ms  INTEGER NOT NULL
);
