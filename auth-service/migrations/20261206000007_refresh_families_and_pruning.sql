-- Portable SQL, like the first migration: the same statements run on PostgreSQL and SQLite.

-- A rotated refresh token may be re-issued once within the grace window (`reissued_at`), and
-- the children of one token (`parent_hash`) are siblings: once one of them is refreshed the
-- others are retired, and their later use is a replay. (`retired_at` records the retirement of
-- tokens issued before parents were recorded; a sibling's is read from its family.)
ALTER TABLE refresh_tokens ADD COLUMN reissued_at BIGINT;
ALTER TABLE refresh_tokens ADD COLUMN retired_at BIGINT;
ALTER TABLE refresh_tokens ADD COLUMN parent_hash TEXT;

-- A token's siblings, checked at every rotation. Only columns that never change once a row is
-- written are indexed, so spending a token rewrites no index entry (on PostgreSQL, a heap-only
-- update).
CREATE INDEX refresh_tokens_by_parent ON refresh_tokens (parent_hash)
    WHERE parent_hash IS NOT NULL;

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
