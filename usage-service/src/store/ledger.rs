//! The usage ledger: one row per acknowledged `Consume`, keyed by (user, idempotency key).
//!
//! Rows are written in batches (see `crate::ledger` for the group commit); a batch is one
//! multi-row insert in one transaction, and a key that is already present is reported back so
//! the caller can tell a retry (same meter and amount) from a conflicting reuse.

use std::collections::{HashMap, HashSet};

use futures::future::BoxFuture;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::{
    domain::{Meter, UserId},
    limits::{Quota, QuotaSeed},
    periods,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub user: UserId,
    pub idempotency_key: String,
    pub meter: Meter,
    pub amount: u64,
    pub period_start_ms: i64,
    pub recorded_at_ms: i64,
}

/// What happened to one entry of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerWrite {
    Inserted,
    /// The key was already recorded with this meter and amount.
    Duplicate,
    /// The key was already recorded with another meter or amount.
    Conflict,
}

/// What a reversal row's key starts with (a caller's key never has it: see `refund`).
pub const REVERSAL_PREFIX: &str = "refund:";

/// Rows per INSERT statement (bind parameters stay well under SQLite's limit); the group
/// commit never hands [`Store::append_ledger`] a longer batch.
pub const ROWS_PER_STATEMENT: usize = 100;

impl Store {
    /// Writes a batch of at most [`ROWS_PER_STATEMENT`] entries as one statement (so one round
    /// trip and one commit, atomic without an explicit transaction) and says, per entry, whether
    /// it was new.
    pub async fn append_ledger(
        &self,
        entries: &[LedgerEntry],
    ) -> Result<Vec<LedgerWrite>, StoreError> {
        debug_assert!(entries.len() <= ROWS_PER_STATEMENT);
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "INSERT INTO ledger (user_id, idempotency_key, meter, amount, period_start, recorded_at) VALUES ",
        );
        for row in 0..entries.len() {
            let base = row * 6;
            if row > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                base + 1,
                base + 2,
                base + 3,
                base + 4,
                base + 5,
                base + 6
            ));
        }
        sql.push_str(
            " ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING user_id, idempotency_key",
        );
        // Only placeholders are formatted into the statement; every value is bound.
        let mut query = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql));
        for entry in entries {
            query = query
                .bind(entry.user.to_string())
                .bind(entry.idempotency_key.clone())
                .bind(entry.meter.as_str())
                .bind(entry.amount as i64)
                .bind(entry.period_start_ms)
                .bind(entry.recorded_at_ms);
        }
        let inserted: HashSet<(String, String)> =
            query.fetch_all(self.pool()).await?.into_iter().collect();
        if inserted.len() == entries.len() {
            return Ok(vec![LedgerWrite::Inserted; entries.len()]);
        }
        self.resolve_conflicts(entries, &inserted).await
    }

    /// Tells retries (same meter and amount) from conflicting reuses of a key, for the entries
    /// the insert skipped. Rare: only retries and misuse get here.
    async fn resolve_conflicts(
        &self,
        entries: &[LedgerEntry],
        inserted: &HashSet<(String, String)>,
    ) -> Result<Vec<LedgerWrite>, StoreError> {
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut claimed = HashMap::new();
        for entry in entries {
            let key = (entry.user.to_string(), entry.idempotency_key.clone());
            // Within one batch, only the first entry with a key was inserted.
            if inserted.contains(&key) && !claimed.contains_key(&key) {
                claimed.insert(key, (entry.meter.clone(), entry.amount));
                outcomes.push(LedgerWrite::Inserted);
                continue;
            }
            let existing = match claimed.get(&key) {
                Some((meter, amount)) => Some((meter.as_str().to_owned(), *amount as i64)),
                None => sqlx::query_as::<_, (String, i64)>(
                    "SELECT meter, amount FROM ledger WHERE user_id = $1 AND idempotency_key = $2",
                )
                .bind(&key.0)
                .bind(&key.1)
                .fetch_optional(self.pool())
                .await?,
            };
            let same = existing.is_some_and(|(meter, amount)| {
                meter == entry.meter.as_str() && amount == entry.amount as i64
            });
            outcomes.push(if same {
                LedgerWrite::Duplicate
            } else {
                LedgerWrite::Conflict
            });
        }
        Ok(outcomes)
    }

    /// Appends the reversal of the row of `key` (same meter and amount, negated, under the key
    /// `refund:<key>`, dated like the original row so every window that counted it, the
    /// period's and a day's, sums to nothing), so the ledger stays append-only. False when
    /// there is no such row or it was already reversed.
    pub async fn reverse_ledger(
        &self,
        user: UserId,
        key: &str,
        meter: &Meter,
        amount: u64,
    ) -> Result<bool, StoreError> {
        let reversed = sqlx::query(
            "INSERT INTO ledger (user_id, idempotency_key, meter, amount, period_start, recorded_at) \
             SELECT user_id, $5 || idempotency_key, meter, -amount, period_start, recorded_at FROM ledger \
             WHERE user_id = $1 AND idempotency_key = $2 AND meter = $3 AND amount = $4 \
             ON CONFLICT (user_id, idempotency_key) DO NOTHING",
        )
        .bind(user.to_string())
        .bind(key)
        .bind(meter.as_str())
        .bind(amount as i64)
        .bind(REVERSAL_PREFIX)
        .execute(self.pool())
        .await?;
        Ok(reversed.rows_affected() == 1)
    }

    /// Units recorded per meter for a user in the period starting at `period_start_ms`. Rows of
    /// any meter are read, declared today or not: the caller picks the ones it reports.
    pub async fn usage(
        &self,
        user: UserId,
        period_start_ms: i64,
    ) -> Result<HashMap<Meter, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT meter, CAST(SUM(amount) AS BIGINT) FROM ledger WHERE user_id = $1 AND period_start = $2 GROUP BY meter",
        )
        .bind(user.to_string())
        .bind(period_start_ms)
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(meter, total)| {
                let meter = Meter::parse(&meter).map_err(|err| StoreError::Corrupt(err.0))?;
                Ok((meter, total.max(0) as u64))
            })
            .collect()
    }

    /// Units of `meter` recorded for a user in `[start_ms, end_ms)`, a span inside one billing
    /// period (a quota window: a UTC day or the period itself).
    pub async fn used_between(
        &self,
        user: UserId,
        meter: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<u64, StoreError> {
        let (total,): (i64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger \
             WHERE user_id = $1 AND period_start = $2 AND meter = $3 \
             AND recorded_at >= $4 AND recorded_at < $5",
        )
        .bind(user.to_string())
        .bind(periods::month(start_ms).start_ms)
        .bind(meter)
        .bind(start_ms)
        .bind(end_ms)
        .fetch_one(self.pool())
        .await?;
        Ok(total.max(0) as u64)
    }
}

/// The ledger is what the limiter's in-process store starts a quota window from.
impl QuotaSeed for Store {
    fn used<'a>(
        &'a self,
        user: Uuid,
        meter: &'a str,
        window: Quota,
    ) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move {
            let used = self
                .used_between(
                    user.into(),
                    meter,
                    window.window_start_ms,
                    window.window_end_ms,
                )
                .await?;
            Ok(used)
        })
    }
}
