-- The web console and the JSON API: users, their sessions, API keys, one-time form tokens,
-- API idempotency records and the audit log. Secrets are stored only as hashes.

CREATE TABLE IF NOT EXISTS users (
    id             INTEGER PRIMARY KEY,
    login          TEXT    NOT NULL UNIQUE,
    role           TEXT    NOT NULL CHECK (role IN ('operator', 'hq', 'branch')),
    number_id      INTEGER REFERENCES numbers(id),
    extension_id   INTEGER REFERENCES extensions(id),
    password_hash  TEXT    NOT NULL,            -- argon2id, salted (argon2-cffi)
    lang           TEXT    CHECK (lang IS NULL OR lang IN ('zh', 'en')),
    created_at     TEXT    NOT NULL,
    CHECK ((role = 'operator') = (number_id IS NULL)),
    CHECK ((role = 'branch') = (extension_id IS NOT NULL))
);

-- A signed-in browser: the cookie holds an opaque random id, this table its SHA-256.
CREATE TABLE IF NOT EXISTS web_sessions (
    id_hash     TEXT    PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf        TEXT    NOT NULL,
    address     TEXT,
    created_ms  INTEGER NOT NULL,
    seen_ms     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS web_sessions_by_user ON web_sessions(user_id);

-- A money or settings form, issued once per rendering; a submit consumes it.
CREATE TABLE IF NOT EXISTS form_tokens (
    token       TEXT    PRIMARY KEY,
    session     TEXT    NOT NULL,             -- web_sessions.id_hash
    created_ms  INTEGER NOT NULL,
    used_ms     INTEGER
);

CREATE TABLE IF NOT EXISTS api_keys (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    number_id   INTEGER NOT NULL REFERENCES numbers(id),
    token_hash  TEXT    NOT NULL UNIQUE,      -- SHA-256 of a 256-bit random token
    prefix      TEXT    NOT NULL,             -- the token's first characters, to recognise it
    created_at  TEXT    NOT NULL,
    revoked_at  TEXT
);

-- The first answer to each (key, Idempotency-Key): a repeat gets it back unchanged.
CREATE TABLE IF NOT EXISTS api_requests (
    api_key_id   INTEGER NOT NULL REFERENCES api_keys(id),
    idem_key     TEXT    NOT NULL,
    body_hash    TEXT    NOT NULL,
    status       INTEGER NOT NULL,
    response     TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (api_key_id, idem_key)
);

-- Every money action and setting change from the console or the API.
CREATE TABLE IF NOT EXISTS audit_log (
    id        INTEGER PRIMARY KEY,
    at        TEXT    NOT NULL,
    who       TEXT    NOT NULL,               -- a user's login, or "apikey:NAME"
    role      TEXT    NOT NULL,
    address   TEXT,
    action    TEXT    NOT NULL,
    number    TEXT    NOT NULL,
    ext       TEXT,
    before    TEXT,                            -- JSON
    after     TEXT,                            -- JSON
    idem_key  TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_number ON audit_log(number, id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
