-- Portable SQL: the same migration runs on PostgreSQL and on the embedded SQLite default.
-- Ids are UUID text, times are Unix milliseconds.

CREATE TABLE subscriptions (
    user_id TEXT PRIMARY KEY,
    plan_id TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end BIGINT NOT NULL,
    -- A downgrade waiting for the end of the period.
    pending_plan_id TEXT,
    updated_at BIGINT NOT NULL
);

-- Every plan change, for billing: when, from, to, why, and when it takes effect.
CREATE TABLE plan_changes (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    from_plan TEXT NOT NULL,
    to_plan TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    effective_at BIGINT NOT NULL,
    UNIQUE (user_id, idempotency_key)
);

CREATE TABLE user_roles (
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, role)
);

CREATE TABLE delegations (
    id TEXT PRIMARY KEY,
    from_user TEXT NOT NULL,
    to_user TEXT NOT NULL,
    permission TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE INDEX delegations_by_grantee ON delegations (to_user);

-- Every acknowledged Consume. The primary key makes a retried idempotency key a no-op.
CREATE TABLE ledger (
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    meter TEXT NOT NULL,
    amount BIGINT NOT NULL,
    period_start BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, idempotency_key)
);

CREATE INDEX ledger_by_period ON ledger (user_id, period_start);
