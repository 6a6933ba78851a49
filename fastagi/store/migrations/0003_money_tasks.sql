-- HQ's money tasks: monthly minimum consumption, owed amounts, removed extensions,
-- main's low-balance flag, and the notification outbox (README.md, "HQ money tasks").

-- 0 = no monthly minimum. The month closes in the number's time zone.
ALTER TABLE numbers ADD COLUMN monthly_minimum INTEGER NOT NULL DEFAULT 0 CHECK (monthly_minimum >= 0);
ALTER TABLE numbers ADD COLUMN time_zone TEXT NOT NULL DEFAULT 'Asia/Shanghai';
-- What the number still owes of its closed months' minimum charges; suspended while > 0.
ALTER TABLE numbers ADD COLUMN owed INTEGER NOT NULL DEFAULT 0 CHECK (owed >= 0);
-- main's balance.low: threshold (NULL: 10 first blocks at the number's plan) and flag
ALTER TABLE numbers ADD COLUMN low_balance INTEGER;
ALTER TABLE numbers ADD COLUMN low_flag INTEGER NOT NULL DEFAULT 0;

-- A removed extension keeps its row (its calls and transfers stay readable); its key is
-- free again once set aside (key renamed to KEY~ID) when a new extension takes it.
ALTER TABLE extensions ADD COLUMN removed_at TEXT;

-- One row per number and closed month: the idempotency record of `period close`.
CREATE TABLE IF NOT EXISTS period_closes (
    number_id   INTEGER NOT NULL REFERENCES numbers(id),
    month       TEXT    NOT NULL,               -- YYYY-MM in the number's time zone
    time_zone   TEXT    NOT NULL,
    minimum     INTEGER NOT NULL CHECK (minimum >= 0),
    spent       INTEGER NOT NULL CHECK (spent >= 0),
    charge      INTEGER NOT NULL CHECK (charge >= 0),
    paid        INTEGER NOT NULL CHECK (paid >= 0),
    owed        INTEGER NOT NULL CHECK (owed >= 0),   -- left unpaid at the close
    owed_left   INTEGER NOT NULL CHECK (owed_left >= 0 AND owed_left <= owed),
    closed_at   TEXT    NOT NULL,
    closed_by   TEXT    NOT NULL,               -- cli | serve
    PRIMARY KEY (number_id, month),
    CHECK (charge = paid + owed)
);

-- Notifications, written in the same transaction as the change that caused them and
-- delivered as signed webhooks by serve (service/outbox.py), in id order per stream.
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY,
    event_id      TEXT    NOT NULL UNIQUE,      -- receivers deduplicate on it
    type          TEXT    NOT NULL,             -- balance.low | number.suspended | ...
    stream        TEXT    NOT NULL,             -- the 400 number: events of one number in order
    payload       TEXT    NOT NULL,             -- JSON
    created_at    TEXT    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at_ms    INTEGER NOT NULL,             -- Unix ms of the next attempt
    retry_from_ms INTEGER NOT NULL,             -- the retry window starts here (written, or retried)
    last_error    TEXT,
    delivered_at  TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(state, stream, id);
