-- extbill schema, version 1 (PRAGMA user_version). Money: INTEGER minor units, 1 = 0.001 CNY.
-- Later versions are fastagi/store/migrations/NNNN_*.sql; never edit a shipped version.

CREATE TABLE IF NOT EXISTS accounts (
    id               INTEGER PRIMARY KEY,
    kind             TEXT    NOT NULL CHECK (kind IN ('funding', 'revenue', 'main', 'ext')),
    debits_pending   INTEGER NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted    INTEGER NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending  INTEGER NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted   INTEGER NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    -- the second check of the no-overdraw rule (the first is in fastagi/ledger.py)
    CHECK (kind NOT IN ('main', 'ext') OR debits_pending + debits_posted <= credits_posted)
);

-- Immutable: one row per balance change; the id is the client's idempotency key.
CREATE TABLE IF NOT EXISTS transfers (
    seq                INTEGER PRIMARY KEY,
    id                 TEXT    NOT NULL UNIQUE,
    kind               TEXT    NOT NULL CHECK (kind IN ('posted', 'pending', 'post', 'void', 'expire')),
    debit_account_id   INTEGER NOT NULL REFERENCES accounts(id),
    credit_account_id  INTEGER NOT NULL REFERENCES accounts(id),
    amount             INTEGER NOT NULL CHECK (amount >= 0),
    pending_id         TEXT    REFERENCES transfers(id),
    code               TEXT    NOT NULL,       -- recharge | move | call
    ref                TEXT,                   -- the user's --ref, or the call's billing id
    created_at         TEXT    NOT NULL,       -- ISO 8601 UTC
    CHECK ((kind IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL))
);
-- A reservation is resolved at most once: posted, voided or expired, never two of them.
CREATE UNIQUE INDEX IF NOT EXISTS transfers_one_resolution ON transfers(pending_id)
    WHERE pending_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS transfers_by_debit ON transfers(debit_account_id, seq);
CREATE INDEX IF NOT EXISTS transfers_by_credit ON transfers(credit_account_id, seq);
CREATE TRIGGER IF NOT EXISTS transfers_no_update BEFORE UPDATE ON transfers
    BEGIN SELECT RAISE(ABORT, 'transfers are immutable'); END;
CREATE TRIGGER IF NOT EXISTS transfers_no_delete BEFORE DELETE ON transfers
    BEGIN SELECT RAISE(ABORT, 'transfers are immutable'); END;

CREATE TABLE IF NOT EXISTS plans (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    per_minute   INTEGER NOT NULL CHECK (per_minute >= 0),
    initial_s    INTEGER NOT NULL CHECK (initial_s > 0),
    increment_s  INTEGER NOT NULL CHECK (increment_s > 0),
    connect_fee  INTEGER NOT NULL CHECK (connect_fee >= 0),
    grace_s      INTEGER NOT NULL CHECK (grace_s >= 0),
    max_call_s   INTEGER NOT NULL CHECK (max_call_s >= initial_s)
);

-- Per caller-number prefix prices; the longest matching prefix wins.
CREATE TABLE IF NOT EXISTS plan_rates (
    plan_id     INTEGER NOT NULL REFERENCES plans(id),
    prefix      TEXT    NOT NULL,
    per_minute  INTEGER NOT NULL CHECK (per_minute >= 0),
    PRIMARY KEY (plan_id, prefix)
);

CREATE TABLE IF NOT EXISTS numbers (
    id               INTEGER PRIMARY KEY,
    number           TEXT    NOT NULL UNIQUE CHECK (length(number) = 10 AND number LIKE '400%'),
    name             TEXT    NOT NULL,
    lang             TEXT    NOT NULL DEFAULT 'zh' CHECK (lang IN ('zh', 'en')),
    ivr              INTEGER NOT NULL DEFAULT 1 CHECK (ivr IN (0, 1)),
    ext_billing      INTEGER NOT NULL DEFAULT 0 CHECK (ext_billing IN (0, 1)),
    min_balance      INTEGER NOT NULL DEFAULT 0 CHECK (min_balance >= 0),
    default_dest     TEXT,
    digit_timeout_s  INTEGER NOT NULL DEFAULT 5,
    plan_id          INTEGER REFERENCES plans(id),
    account_id       INTEGER NOT NULL UNIQUE REFERENCES accounts(id),
    suspended        INTEGER NOT NULL DEFAULT 0 CHECK (suspended IN (0, 1)),
    created_at       TEXT    NOT NULL,
    CHECK (ext_billing = 0 OR ivr = 1)
);

CREATE TABLE IF NOT EXISTS extensions (
    id                  INTEGER PRIMARY KEY,
    number_id           INTEGER NOT NULL REFERENCES numbers(id),
    key                 TEXT    NOT NULL,
    name                TEXT    NOT NULL,
    dest                TEXT    NOT NULL,
    plan_id             INTEGER REFERENCES plans(id),
    account_id          INTEGER NOT NULL UNIQUE REFERENCES accounts(id),
    low_balance         INTEGER,            -- NULL: 10 first blocks at the first rate
    low_flag            INTEGER NOT NULL DEFAULT 0,  -- 1 while below; balance.low logs once per crossing
    created_at          TEXT    NOT NULL,
    UNIQUE (number_id, key)
);

-- Every change of a number's suspension state, with the balance that caused it.
CREATE TABLE IF NOT EXISTS suspension_events (
    id           INTEGER PRIMARY KEY,
    number_id    INTEGER NOT NULL REFERENCES numbers(id),
    suspended    INTEGER NOT NULL,
    balance      INTEGER NOT NULL,
    min_balance  INTEGER NOT NULL,
    reason       TEXT    NOT NULL,
    at           TEXT    NOT NULL
);

-- One row per granted call: its reservation, then its rating. Mutable call state;
-- the money itself moves only through transfers.
CREATE TABLE IF NOT EXISTS calls (
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
    tariff         TEXT    NOT NULL,        -- JSON snapshot of the tariff the grant used
    granted_s      INTEGER NOT NULL CHECK (granted_s > 0),
    reserved       INTEGER NOT NULL CHECK (reserved >= 0),
    pending_id     TEXT    REFERENCES transfers(id),
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
    settled_at     TEXT
);
CREATE INDEX IF NOT EXISTS calls_open ON calls(state, start_at);
CREATE INDEX IF NOT EXISTS calls_by_number ON calls(number_id, start_at);

INSERT OR IGNORE INTO accounts (id, kind) VALUES (1, 'funding'), (2, 'revenue');
