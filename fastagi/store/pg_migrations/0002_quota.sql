-- PostgreSQL twin of fastagi/store/migrations/0002_quota.sql
-- Quota chunks (docs/rules.md rule 9): a call holds one chunk at a time, renewed mid-call.
-- granted_s and reserved (version 1) become the totals over all chunks; chunk N > 0 is the
-- pending transfer 'call:<billing id>:r<N>'.
ALTER TABLE calls ADD COLUMN renewals BIGINT NOT NULL DEFAULT 0 CHECK (renewals >= 0);
-- 1: nothing more will be granted (unless the account is recharged); all version-1 grants were.
ALTER TABLE calls ADD COLUMN grant_final BIGINT NOT NULL DEFAULT 1 CHECK (grant_final IN (0, 1));
-- 1: granted while a supervisor held the lease (renewed and warned mid-call through AMI);
-- 0: granted all it could pay, final, warned and cut by Dial's own L(x:y), left alone.
ALTER TABLE calls ADD COLUMN supervised BIGINT NOT NULL DEFAULT 0 CHECK (supervised IN (0, 1));
-- The callee channel (its uniqueid) whose hangup time a renewal moves; known from AMI.
ALTER TABLE calls ADD COLUMN callee TEXT COLLATE "C";

-- Which serve process supervises the calls of one Asterisk (renews them through its AMI
-- connection to that Asterisk), and until when. `system` is that Asterisk's systemname (the
-- prefix of its uniqueids; "" for none): with several Asterisk servers on one database a call
-- gets chunks only while a supervisor of its own Asterisk holds the lease, otherwise a final
-- grant of all it can pay.
CREATE TABLE IF NOT EXISTS supervisor_lease (
    system    TEXT COLLATE "C"    PRIMARY KEY,
    holder    TEXT COLLATE "C"    NOT NULL,
    until_ms  BIGINT NOT NULL
);
