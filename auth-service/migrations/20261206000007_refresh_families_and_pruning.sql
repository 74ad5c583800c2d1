-- Portable SQL, like the first migration: the same statements run on PostgreSQL and SQLite.

-- A rotated refresh token may be re-issued once within the grace window (`reissued_at`), and
-- the live tokens of a session form one family of siblings: the first of them to be refreshed
-- retires the others (`retired_at`), whose later use is a replay.
ALTER TABLE refresh_tokens ADD COLUMN reissued_at BIGINT;
ALTER TABLE refresh_tokens ADD COLUMN retired_at BIGINT;

-- The live tokens of a session, found at every rotation to retire a refreshed token's siblings.
CREATE INDEX refresh_tokens_live_by_session ON refresh_tokens (session_id)
    WHERE rotated_at IS NULL AND retired_at IS NULL;

-- Pruning deletes by expiry, in bounded batches.
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- When each periodic maintenance task may next run: a replica runs one only after moving its
-- row forward, so several replicas do not repeat the same work.
CREATE TABLE auth_maintenance (
    task TEXT PRIMARY KEY,
    next_run_at BIGINT NOT NULL
);

INSERT INTO auth_maintenance (task, next_run_at) VALUES ('prune_sessions', 0);
