-- Portable SQL: the same migration runs on PostgreSQL and on the embedded SQLite default.
-- Ids are UUID text, times are Unix milliseconds.

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    last_refreshed_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_reason TEXT
);

CREATE INDEX sessions_by_user ON sessions (user_id);

-- Every refresh token ever issued, by hash. `rotated_at` and `child_hash` record the rotation
-- chain, which is what tells a lost response (the immediate parent, within the grace window)
-- from a replay of a stolen token (anything else).
CREATE TABLE refresh_tokens (
    hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT,
    child_hash TEXT
);

CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);

-- A single row naming the key that signs: replicas race to create it and exactly one wins.
CREATE TABLE key_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    active_kid TEXT NOT NULL REFERENCES signing_keys (kid),
    changed_at BIGINT NOT NULL
);
