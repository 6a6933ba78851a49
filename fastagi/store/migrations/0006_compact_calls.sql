-- Less storage per call (README.md, "History at scale"): times as integer Unix milliseconds
-- instead of 24-character ISO 8601 text (the text is made at the edges: core/clock.py), and
-- nothing a call row or a transfer can derive from its own id.

-- The calls table rebuilt (SQLite changes columns by rebuilding): start_at, answer_at, end_at
-- and settled_at become start_ms (kept: the grant's clock), answer_ms, end_ms and settled_ms;
-- pending_id ('call:' || billing_id, always) is gone; linkedid is NULL when it is the call's
-- own billing id (most calls: the IVR channel opened the call); dest is shared (`dests`).
-- The Dial strings calls were granted to, each kept once (store/shared_texts.py).
CREATE TABLE IF NOT EXISTS dests (
    id    INTEGER PRIMARY KEY,
    dest  TEXT    NOT NULL UNIQUE
);
INSERT INTO dests (dest) SELECT DISTINCT dest FROM calls ORDER BY dest;
CREATE TABLE calls_new (
    billing_id     TEXT    PRIMARY KEY,     -- the IVR channel's Asterisk uniqueid
    number_id      INTEGER NOT NULL REFERENCES numbers(id),
    extension_id   INTEGER REFERENCES extensions(id),
    account_id     INTEGER NOT NULL REFERENCES accounts(id),
    caller         TEXT    NOT NULL,
    channel        TEXT,
    linkedid       TEXT,                    -- NULL: the billing id
    dest_id        INTEGER NOT NULL REFERENCES dests(id),  -- the Dial string the call was granted to
    charged        TEXT    NOT NULL CHECK (charged IN ('main', 'ext')),
    start_ms       INTEGER NOT NULL,        -- Unix ms of the grant (the records' start time)
    granted_s      INTEGER NOT NULL CHECK (granted_s > 0),
    reserved       INTEGER NOT NULL CHECK (reserved >= 0),
    state          TEXT    NOT NULL CHECK (state IN ('reserved', 'rated', 'unanswered', 'unrated')),
    answer_ms      INTEGER,
    end_ms         INTEGER,
    talk_s         INTEGER,
    billed_s       INTEGER,
    cost           INTEGER,
    disposition    TEXT,
    cause          TEXT,
    settled_by     TEXT,
    settled_ms     INTEGER,
    renewals       INTEGER NOT NULL DEFAULT 0 CHECK (renewals >= 0),
    grant_final    INTEGER NOT NULL DEFAULT 1 CHECK (grant_final IN (0, 1)),
    supervised     INTEGER NOT NULL DEFAULT 0 CHECK (supervised IN (0, 1)),
    callee         TEXT,
    tariff_id      INTEGER NOT NULL REFERENCES tariffs(id)  -- the tariff snapshot the grant used
);
-- 'YYYY-MM-DDTHH:MM:SS.mmmZ' (core/clock.py iso_from_ms) -> Unix ms, exactly
INSERT INTO calls_new (billing_id, number_id, extension_id, account_id, caller, channel, linkedid, dest_id,
    charged, start_ms, granted_s, reserved, state, answer_ms, end_ms, talk_s, billed_s, cost, disposition,
    cause, settled_by, settled_ms, renewals, grant_final, supervised, callee, tariff_id)
SELECT billing_id, number_id, extension_id, account_id, caller, channel,
    CASE WHEN linkedid = billing_id THEN NULL ELSE linkedid END,
    (SELECT d.id FROM dests d WHERE d.dest = calls.dest), charged,
    CAST(strftime('%s', start_at) AS INTEGER) * 1000 + CAST(substr(start_at, 21, 3) AS INTEGER),
    granted_s, reserved, state,
    CAST(strftime('%s', answer_at) AS INTEGER) * 1000 + CAST(substr(answer_at, 21, 3) AS INTEGER),
    CAST(strftime('%s', end_at) AS INTEGER) * 1000 + CAST(substr(end_at, 21, 3) AS INTEGER),
    talk_s, billed_s, cost, disposition, cause, settled_by,
    CAST(strftime('%s', settled_at) AS INTEGER) * 1000 + CAST(substr(settled_at, 21, 3) AS INTEGER),
    renewals, grant_final, supervised, callee, tariff_id
FROM calls;
DROP TABLE calls;
ALTER TABLE calls_new RENAME TO calls;
CREATE INDEX IF NOT EXISTS calls_by_number ON calls(number_id, start_ms);
-- Only open calls are looked up by state (sweeper, reconcile): settled ones stay out.
CREATE INDEX IF NOT EXISTS calls_open ON calls(start_ms) WHERE state = 'reserved';
-- `calls NUMBER --ext KEY` pages by extension without walking the number's other calls.
CREATE INDEX IF NOT EXISTS calls_by_extension ON calls(extension_id, start_ms) WHERE extension_id IS NOT NULL;

-- The transfers table rebuilt: created_at becomes created_ms; a call's first reservation
-- ('call:' || billing id) keeps no ref (its id's tail is the billing id: store/rows.py).
-- The new table's key on pending_id names itself: the rename below makes it `transfers`.
CREATE TABLE transfers_new (
    seq                INTEGER PRIMARY KEY,
    id                 TEXT    NOT NULL UNIQUE,
    kind               TEXT    NOT NULL CHECK (kind IN ('posted', 'pending', 'post', 'void', 'expire')),
    debit_account_id   INTEGER NOT NULL REFERENCES accounts(id),
    credit_account_id  INTEGER NOT NULL REFERENCES accounts(id),
    amount             INTEGER NOT NULL CHECK (amount >= 0),
    pending_id         TEXT    REFERENCES transfers_new(id),
    code               TEXT    NOT NULL,       -- recharge | move | call | minimum | archive ...
    ref                TEXT,                   -- the user's --ref, or the call's billing id
    created_ms         INTEGER NOT NULL,       -- Unix ms
    CHECK ((kind IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL))
);
INSERT INTO transfers_new (seq, id, kind, debit_account_id, credit_account_id, amount, pending_id, code,
    ref, created_ms)
SELECT seq, id, kind, debit_account_id, credit_account_id, amount, pending_id, code,
    CASE WHEN code = 'call' AND kind = 'pending' AND id = 'call:' || ref THEN NULL ELSE ref END,
    CAST(strftime('%s', created_at) AS INTEGER) * 1000 + CAST(substr(created_at, 21, 3) AS INTEGER)
FROM transfers ORDER BY seq;
DROP TABLE transfers;
ALTER TABLE transfers_new RENAME TO transfers;
-- A reservation is resolved at most once: posted, voided or expired, never two of them.
CREATE UNIQUE INDEX IF NOT EXISTS transfers_one_resolution ON transfers(pending_id)
    WHERE pending_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS transfers_by_debit ON transfers(debit_account_id, seq);
CREATE INDEX IF NOT EXISTS transfers_by_credit ON transfers(credit_account_id, seq) WHERE code <> 'call';
CREATE TRIGGER IF NOT EXISTS transfers_no_update BEFORE UPDATE ON transfers
    BEGIN SELECT RAISE(ABORT, 'transfers are immutable'); END;
CREATE TRIGGER IF NOT EXISTS transfers_no_delete BEFORE DELETE ON transfers
    WHEN OLD.code <> 'call' OR NOT EXISTS (SELECT 1 FROM archive_guard)
    BEGIN SELECT RAISE(ABORT, 'transfers are immutable'); END;
