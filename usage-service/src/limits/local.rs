//! The in-process store: the same checks and counts as the Redis scripts, on maps behind one
//! mutex, for a deployment without Redis and for a replica riding out a Redis outage.
//!
//! One mutex over all maps makes each operation atomic the way one Lua script is on Redis; it
//! is never held across an `.await` (nothing here is async). Buckets, leases and idempotency
//! records age on the monotonic clock (`tokio::time::Instant`); quota windows and the reset
//! times handed to callers are wall-clock Unix milliseconds. Expired entries are swept at most
//! once a second.
//!
//! A quota counter remembers the fallback epoch it was seeded in (see [`super::Limiter`]): one
//! from an earlier Redis outage is stale, since Redis counted in between, and is seeded again
//! from the ledger before this store counts that window anew.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;
use tollgate_shared::time::unix_now_ms;
use uuid::Uuid;

use super::{
    Counter, Decision, IDEMPOTENCY_TTL, LimitError, Plan, QUOTA_GRACE_MS,
    decision::{combine, gcra_check, quota_verdict, rate_verdict},
    keys,
};

const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// All in-process limiter state.
#[derive(Debug)]
pub(super) struct LocalStore {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// GCRA buckets: the debt (µs) as of `at`.
    buckets: HashMap<String, Bucket>,
    /// Quota counters.
    quotas: HashMap<String, QuotaCount>,
    /// Idempotency records: `amount:meter` and when the record lapses.
    records: HashMap<String, (String, Instant)>,
    /// Each user's leases.
    leases: HashMap<Uuid, UserLeases>,
    swept_at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct QuotaCount {
    used: u64,
    /// When the counter may be forgotten (Unix ms).
    forget_at: i64,
    /// The fallback epoch whose ledger figure it started from.
    epoch: u64,
}

/// A user's live leases, and the acquisition number the next new one gets: a lease's number
/// orders it among the user's leases, oldest first.
#[derive(Debug, Default)]
struct UserLeases {
    next: u64,
    /// Connection id to (expiry, acquisition number).
    live: HashMap<String, (Instant, u64)>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    at: Instant,
    debt_us: f64,
}

impl Bucket {
    fn debt_at(&self, now: Instant) -> f64 {
        let elapsed_us = now.saturating_duration_since(self.at).as_secs_f64() * 1e6;
        (self.debt_us - elapsed_us).max(0.0)
    }
}

impl LocalStore {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                buckets: HashMap::new(),
                quotas: HashMap::new(),
                records: HashMap::new(),
                leases: HashMap::new(),
                swept_at: Instant::now(),
            }),
        }
    }

    fn lock(&self, now: Instant, now_ms: i64) -> MutexGuard<'_, State> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if now.saturating_duration_since(state.swept_at) >= SWEEP_EVERY {
            state.sweep(now, now_ms);
        }
        state
    }

    /// Idempotency check, rate and quota check, then count if allowed: one critical section.
    pub(super) fn consume(&self, plan: &Plan<'_>) -> Result<Decision, LimitError> {
        let now = Instant::now();
        let now_ms = unix_now_ms();
        let mut state = self.lock(now, now_ms);
        let record_key = plan
            .idempotency_key
            .map(|key| keys::idempotency(plan.user, key));

        let mut amount = plan.amount;
        let mut replayed = false;
        if let (Some(key), Some(record)) = (&record_key, &plan.idempotency_record)
            && let Some((seen, expires)) = state.records.get(key)
            && *expires > now
        {
            if seen != record {
                return Err(LimitError::IdempotencyConflict);
            }
            replayed = true;
            amount = 0;
        }

        let bucket_key = keys::gcra(plan.user, plan.meter);
        let (debt, rate_ok, new_debt) = match plan.rate {
            Some((limit, period_us)) => {
                let debt = state
                    .buckets
                    .get(&bucket_key)
                    .map_or(0.0, |bucket| bucket.debt_at(now));
                let (ok, new_debt) = gcra_check(debt, amount, limit, period_us as f64);
                (debt, ok, new_debt)
            }
            None => (0.0, true, 0.0),
        };

        let quota_key = plan
            .quota
            .map(|quota| keys::quota(plan.user, plan.meter, quota.window_start_ms));
        let window = quota_key
            .as_ref()
            .and_then(|key| state.quotas.get(key))
            .filter(|count| count.forget_at > now_ms)
            .copied();
        let used = window.map_or(0, |count| count.used);
        let quota_ok = plan.quota.is_none_or(|quota| {
            used.checked_add(amount)
                .is_some_and(|sum| sum <= quota.limit)
        });

        let allowed = rate_ok && quota_ok;
        let counted = allowed && amount > 0;
        if counted {
            if let Some((limit, _)) = plan.rate
                && limit > 0
            {
                let bucket = Bucket {
                    at: now,
                    debt_us: new_debt,
                };
                state.buckets.insert(bucket_key, bucket);
            }
            if let (Some(key), Some(quota)) = (quota_key, plan.quota) {
                let count = QuotaCount {
                    used: used + amount,
                    forget_at: quota.window_end_ms.saturating_add(QUOTA_GRACE_MS),
                    epoch: window.map_or(0, |count| count.epoch),
                };
                state.quotas.insert(key, count);
            }
            if let (Some(key), Some(record)) = (record_key, &plan.idempotency_record) {
                state
                    .records
                    .insert(key, (record.clone(), now + IDEMPOTENCY_TTL));
            }
        }
        drop(state);

        let rate = plan.rate.map(|(limit, period_us)| {
            let after = if counted { new_debt } else { debt };
            rate_verdict(rate_ok, after, new_debt, limit, period_us as f64, now_ms)
        });
        let quota = plan.quota.map(|quota| {
            let used_after = if counted { used + amount } else { used };
            quota_verdict(
                quota_ok,
                used_after,
                quota.limit,
                quota.window_end_ms,
                now_ms,
            )
        });
        Ok(combine(Counter::Local, now_ms, replayed, rate, quota))
    }

    /// Gives back the units of an allowed consume and forgets its idempotency record; with a
    /// key, only while the matching record exists (so a refund cannot be applied twice).
    pub(super) fn refund(&self, plan: &Plan<'_>) -> bool {
        let now = Instant::now();
        let mut state = self.lock(now, unix_now_ms());
        if let (Some(key), Some(record)) = (plan.idempotency_key, &plan.idempotency_record) {
            let key = keys::idempotency(plan.user, key);
            match state.records.get_mut(&key) {
                Some((seen, expires)) if seen == record && *expires > now => {
                    match &plan.kept_record {
                        Some(kept) => kept.clone_into(seen),
                        None => {
                            state.records.remove(&key);
                        }
                    }
                }
                _ => return false,
            }
        }
        if let Some((limit, period_us)) = plan.rate
            && limit > 0
        {
            let key = keys::gcra(plan.user, plan.meter);
            if let Some(bucket) = state.buckets.get_mut(&key) {
                let give_back = plan.amount as f64 * (period_us as f64 / limit as f64);
                *bucket = Bucket {
                    at: now,
                    debt_us: (bucket.debt_at(now) - give_back).max(0.0),
                };
            }
        }
        if let Some(quota) = plan.quota {
            let key = keys::quota(plan.user, plan.meter, quota.window_start_ms);
            if let Some(count) = state.quotas.get_mut(&key) {
                count.used = count.used.saturating_sub(plan.amount);
            }
        }
        true
    }

    /// Whether the plan's quota window has a live counter seeded in `epoch`.
    pub(super) fn quota_is_current(&self, plan: &Plan<'_>, epoch: u64) -> bool {
        let Some(quota) = plan.quota else {
            return true;
        };
        let now_ms = unix_now_ms();
        let key = keys::quota(plan.user, plan.meter, quota.window_start_ms);
        self.lock(Instant::now(), now_ms)
            .quota_is_current(&key, epoch, now_ms)
    }

    /// Starts the plan's quota window at `used` (what the ledger holds) for `epoch`, unless a
    /// caller seeded it for this epoch already (and may have counted since).
    pub(super) fn seed_quota(&self, plan: &Plan<'_>, used: u64, epoch: u64) {
        let Some(quota) = plan.quota else {
            return;
        };
        let now_ms = unix_now_ms();
        let key = keys::quota(plan.user, plan.meter, quota.window_start_ms);
        let mut state = self.lock(Instant::now(), now_ms);
        if !state.quota_is_current(&key, epoch, now_ms) {
            let count = QuotaCount {
                used,
                forget_at: quota.window_end_ms.saturating_add(QUOTA_GRACE_MS),
                epoch,
            };
            state.quotas.insert(key, count);
        }
    }

    /// Grants or renews a lease: (granted, active leases after). A renewal is granted only
    /// while the lease is among the user's `limit` oldest; one beyond it (the limit was
    /// lowered) is refused and dropped.
    pub(super) fn acquire_lease(
        &self,
        user: Uuid,
        connection_id: &str,
        limit: u32,
        ttl: Duration,
    ) -> (bool, u32) {
        let now = Instant::now();
        let mut state = self.lock(now, unix_now_ms());
        let leases = state.leases.entry(user).or_default();
        leases.live.retain(|_, (expires, _)| *expires > now);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let held = leases.live.get(connection_id).map(|&(_, number)| number);
        let granted = match held {
            Some(number) => leases.live.values().filter(|(_, n)| *n < number).count() < limit,
            None => leases.live.len() < limit,
        };
        match (granted, held) {
            (true, Some(number)) => {
                leases
                    .live
                    .insert(connection_id.to_owned(), (now + ttl, number));
            }
            (true, None) => {
                leases.next += 1;
                let number = leases.next;
                leases
                    .live
                    .insert(connection_id.to_owned(), (now + ttl, number));
            }
            (false, Some(_)) => {
                leases.live.remove(connection_id);
            }
            (false, None) => {}
        }
        let active = u32::try_from(leases.live.len()).unwrap_or(u32::MAX);
        if leases.live.is_empty() {
            state.leases.remove(&user);
        }
        (granted, active)
    }

    /// Drops a lease.
    pub(super) fn release_lease(&self, user: Uuid, connection_id: &str) {
        let mut state = self.lock(Instant::now(), unix_now_ms());
        if let Some(leases) = state.leases.get_mut(&user) {
            leases.live.remove(connection_id);
            if leases.live.is_empty() {
                state.leases.remove(&user);
            }
        }
    }
}

impl State {
    fn quota_is_current(&self, key: &str, epoch: u64, now_ms: i64) -> bool {
        self.quotas
            .get(key)
            .is_some_and(|count| count.epoch == epoch && count.forget_at > now_ms)
    }

    fn sweep(&mut self, now: Instant, now_ms: i64) {
        self.buckets.retain(|_, bucket| bucket.debt_at(now) > 0.0);
        self.quotas.retain(|_, count| count.forget_at > now_ms);
        self.records.retain(|_, (_, expires)| *expires > now);
        self.leases.retain(|_, leases| {
            leases.live.retain(|_, (expires, _)| *expires > now);
            !leases.live.is_empty()
        });
        self.swept_at = now;
    }
}
