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
ALTER TABLE calls ADD COLUMN tariff_id INTEGER REFERENCES tariffs(id);
UPDATE calls SET tariff_id = (SELECT t.id FROM tariffs t WHERE t.body = calls.tariff);
ALTER TABLE calls DROP COLUMN tariff;

-- Only open calls are looked up by state (sweeper, reconcile): settled ones stay out.
DROP INDEX IF EXISTS calls_open;
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
