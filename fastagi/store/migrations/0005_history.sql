-- History at scale (README.md, "History at scale"): reads that do not grow with the number
-- of calls, less storage per call, and archiving of settled calls.

-- Kept counter: what the account's calls cost (its posted call transfers), maintained by the
-- transaction that posts one (store/tx_ledger.py resolve); `extbill db check` rebuilds it.
ALTER TABLE accounts ADD COLUMN spent INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0);
UPDATE accounts SET spent = (
    SELECT coalesce(sum(t.amount), 0) FROM transfers t
    WHERE t.kind = 'post' AND t.debit_account_id = accounts.id);

-- Kept counter: settled calls by state and settling path, maintained by the transaction that
-- settles each (store/tx_calls.py); /metrics reads it. Archiving does not lower it.
CREATE TABLE IF NOT EXISTS call_counts (
    state       TEXT    NOT NULL,
    settled_by  TEXT    NOT NULL,
    calls       INTEGER NOT NULL CHECK (calls >= 0),
    PRIMARY KEY (state, settled_by)
);
INSERT INTO call_counts (state, settled_by, calls)
    SELECT state, coalesce(settled_by, 'unknown'), count(*) FROM calls WHERE state <> 'reserved'
    GROUP BY state, coalesce(settled_by, 'unknown');

-- Tariff snapshots shared between calls, keyed by their content (the JSON text a call row
-- used to repeat): a call references one by id.
CREATE TABLE IF NOT EXISTS tariffs (
    id    INTEGER PRIMARY KEY,
    body  TEXT    NOT NULL UNIQUE
);
INSERT INTO tariffs (body) SELECT DISTINCT tariff FROM calls;

-- The calls table rebuilt (the one way SQLite changes a column's constraints): tariff_id in
-- place of the JSON, and pending_id without its foreign key. That key had no index on this
-- side, so deleting a reservation (archiving) scanned every call to look for a reference;
-- pending_id is always 'call:' || billing_id, and `extbill db check` matches calls with
-- their reservations.
CREATE TABLE calls_new (
    billing_id     TEXT    PRIMARY KEY,     -- the IVR channel's Asterisk uniqueid
    number_id      INTEGER NOT NULL REFERENCES numbers(id),
    extension_id   INTEGER REFERENCES extensions(id),
    account_id     INTEGER NOT NULL REFERENCES accounts(id),
    caller         TEXT    NOT NULL,
    channel        TEXT,
    linkedid       TEXT,
    dest           TEXT    NOT NULL,        -- the Dial string the call was granted to
    charged        TEXT    NOT NULL CHECK (charged IN ('main', 'ext')),
    start_ms       INTEGER NOT NULL,        -- Unix ms of the grant: the sweeper's clock
    granted_s      INTEGER NOT NULL CHECK (granted_s > 0),
    reserved       INTEGER NOT NULL CHECK (reserved >= 0),
    pending_id     TEXT,                    -- the first reservation: 'call:' || billing_id
    state          TEXT    NOT NULL CHECK (state IN ('reserved', 'rated', 'unanswered', 'unrated')),
    start_at       TEXT    NOT NULL,
    answer_at      TEXT,
    end_at         TEXT,
    talk_s         INTEGER,
    billed_s       INTEGER,
    cost           INTEGER,
    disposition    TEXT,
    cause          TEXT,
    settled_by     TEXT,
    settled_at     TEXT,
    renewals       INTEGER NOT NULL DEFAULT 0 CHECK (renewals >= 0),
    grant_final    INTEGER NOT NULL DEFAULT 1 CHECK (grant_final IN (0, 1)),
    supervised     INTEGER NOT NULL DEFAULT 0 CHECK (supervised IN (0, 1)),
    callee         TEXT,
    tariff_id      INTEGER NOT NULL REFERENCES tariffs(id)  -- the tariff snapshot the grant used
);
INSERT INTO calls_new (billing_id, number_id, extension_id, account_id, caller, channel, linkedid, dest,
    charged, start_ms, granted_s, reserved, pending_id, state, start_at, answer_at, end_at, talk_s,
    billed_s, cost, disposition, cause, settled_by, settled_at, renewals, grant_final, supervised, callee,
    tariff_id)
SELECT billing_id, number_id, extension_id, account_id, caller, channel, linkedid, dest,
    charged, start_ms, granted_s, reserved, pending_id, state, start_at, answer_at, end_at, talk_s,
    billed_s, cost, disposition, cause, settled_by, settled_at, renewals, grant_final, supervised, callee,
    (SELECT t.id FROM tariffs t WHERE t.body = calls.tariff)
FROM calls;
DROP TABLE calls;
ALTER TABLE calls_new RENAME TO calls;
CREATE INDEX IF NOT EXISTS calls_by_number ON calls(number_id, start_at);
-- Only open calls are looked up by state (sweeper, reconcile): settled ones stay out.
CREATE INDEX IF NOT EXISTS calls_open ON calls(start_at) WHERE state = 'reserved';
-- `calls NUMBER --ext KEY` pages by extension without walking the number's other calls.
CREATE INDEX IF NOT EXISTS calls_by_extension ON calls(extension_id, start_at) WHERE extension_id IS NOT NULL;
-- A call's transfers always credit revenue: a main or extension statement never reads them
-- on the credit side, so they stay out of that index.
DROP INDEX IF EXISTS transfers_by_credit;
CREATE INDEX IF NOT EXISTS transfers_by_credit ON transfers(credit_account_id, seq) WHERE code <> 'call';

-- What `extbill db archive` moved out, per account pair: one summary transfer each (code
-- 'archive', kind 'posted'), written without changing any counter, so the live ledger still
-- balances. Deleting transfers is allowed only for resolved call transfers while an archive
-- transaction holds its guard row (store/archive.py).
CREATE TABLE IF NOT EXISTS archive_guard (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    before  TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS archives (
    id           INTEGER PRIMARY KEY,
    before       TEXT    NOT NULL,              -- calls started before this (ISO 8601 UTC)
    file         TEXT    NOT NULL,
    calls        INTEGER NOT NULL,
    transfers    INTEGER NOT NULL,
    archived_at  TEXT    NOT NULL
);
DROP TRIGGER IF EXISTS transfers_no_delete;
CREATE TRIGGER IF NOT EXISTS transfers_no_delete BEFORE DELETE ON transfers
    WHEN OLD.code <> 'call' OR NOT EXISTS (SELECT 1 FROM archive_guard)
    BEGIN SELECT RAISE(ABORT, 'transfers are immutable'); END;
