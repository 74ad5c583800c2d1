//! Atomic rate limits, quotas, idempotency and connection leases for metered usage.
//!
//! Every replica of the usage service answers "may this user spend `n` units of this meter
//! now?", and the answer has to hold across all of them at once: two replicas must never both
//! let the 30th of 30 calls through, a retried request must not be counted twice, and a user
//! must not hold more live connections than the plan allows. So each operation is one atomic
//! step on shared state: a Lua script on Redis when the engine has Redis, or one critical
//! section over in-process maps when it does not.
//!
//! # Semantics
//!
//! - **Rate** ([`Rate`]): GCRA with emission interval `T = period / limit` and tolerance
//!   `period` (so the burst is `limit`). `n` units move the theoretical arrival time to
//!   `max(tat, now) + n·T` and pass iff that is at most `period` ahead of now.
//! - **Quota** ([`Quota`]): a counter per window, kept until a day after the window ends;
//!   `n` units pass iff `used + n <= limit`.
//! - A call is allowed only if every limit it names allows it; a denied call counts nothing
//!   anywhere and records no idempotency key, so a retry is judged afresh. A quota denial is
//!   reported before a rate denial, since waiting out the rate limit would not help.
//! - **Idempotency**: an allowed call with a non-empty key is remembered for 48 hours as
//!   `(meter, amount)`; the same key again is a replay (allowed, `replayed`, nothing counted),
//!   the same key with another meter or amount is [`LimitError::IdempotencyConflict`]. Keys are
//!   per user.
//! - `amount == 0` is a probe: always allowed, counts nothing, ignores the idempotency key.
//! - Limits are clamped to 2^53, the largest count Lua's doubles hold exactly.
//! - **Leases**: each user's live leases are ordered by when they were first acquired. A new
//!   lease is granted while fewer than `limit` are live; a renewal while the lease is among
//!   the `limit` oldest. So when a plan's limit is lowered, exactly the newest leases beyond it
//!   are refused (and dropped) at their next renewal, whichever gateway node holds them.
//!
//! # Clocks and accuracy
//!
//! On Redis every script reads the clock with Redis `TIME`, never the caller's clock, so
//! replicas with skewed clocks agree on when a bucket refills or a lease expires, and GCRA is
//! exact (to well under a microsecond) across any number of replicas. The in-process store uses
//! this process's monotonic clock. A fallback is per process: while Redis is down, N replicas
//! in [`RedisDownMode::Local`] each count on their own, so together they may allow up to N
//! times the limit (and a lease limit per replica); counts made locally are not merged back
//! when Redis returns. A quota window does not start from zero in the fallback, though: the
//! first local count of a window in each outage (or, without Redis, since the process started)
//! starts from what the ledger says was used ([`QuotaSeed`]).
//!
//! # Redis failures
//!
//! Each Redis call is bounded by a 250 ms timeout. A failure marks the limiter degraded and
//! skips Redis for a second, after which a single call probes it again, so an outage costs
//! one timeout per second rather than one per call, and the limiter recovers by itself. While
//! degraded, [`RedisDownMode::Local`] answers from the in-process store and
//! [`RedisDownMode::Closed`] refuses with [`LimitError::Unavailable`]. A call that timed out may
//! still have been counted by Redis; the idempotency key is what makes the caller's retry safe.
//! A refund goes to the store that counted ([`Decision::counter`]), never to the fallback: a
//! refund of Redis's count made to the in-process store would give nothing back and leave the
//! key recorded in Redis.
//!
//! # Keys
//!
//! Under the engine's deployment prefix: `usage:gcra:{user}:{meter}`,
//! `usage:quota:{user}:{meter}:{window_start_ms}`, `usage:idem:{user}:{key}`,
//! `usage:leases:{user}` and `usage:lease-order:{user}`, where the braces are literal: the user
//! id is a Redis Cluster hash tag, so one script's keys share a slot.

mod decision;
mod health;
mod keys;
mod leases;
mod local;
mod redis_store;
#[cfg(test)]
mod tests;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use tollgate_shared::engine::{Engine, RedisConnection};

use crate::clock::Clock;
use uuid::Uuid;

use self::{decision::MAX_EXACT, health::Health, local::LocalStore};

/// How long idempotency records of allowed calls are kept.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(48 * 3600);
/// How long a quota counter outlives its window (late refunds and reads still find it).
const QUOTA_GRACE_MS: i64 = 24 * 3600 * 1000;

/// GCRA rate limit: `limit` units per `period` (e.g. 30 per 60 s), burst = limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Units per period (and the burst size); 0 lets only probes through.
    pub limit: u64,
    /// The period the limit applies to.
    pub period: Duration,
}

/// A quota: at most `limit` units in the window [start_ms, end_ms) (a billing month or a UTC day).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Units allowed in the window.
    pub limit: u64,
    /// Window start, Unix ms; identifies the window's counter.
    pub window_start_ms: i64,
    /// Window end (exclusive), Unix ms.
    pub window_end_ms: i64,
}

/// One request to spend units of a meter.
#[derive(Clone, Debug)]
pub struct ConsumeRequest {
    /// Whose units.
    pub user_id: Uuid,
    /// What is metered (e.g. `"api_calls"`).
    pub meter: String,
    /// Units to spend; 0 is a probe that counts nothing.
    pub amount: u64,
    /// The caller's key for this unit of work; empty for none.
    pub idempotency_key: String,
    /// The rate limit to apply, if any.
    pub rate: Option<Rate>,
    /// The quota to apply, if any.
    pub quota: Option<Quota>,
}

/// Why a call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The rate limit has no room now; see `retry_after_ms`.
    RateLimited,
    /// The quota window has no room for this amount.
    QuotaExceeded,
}

/// Which store decided a consume, and counted it if it was allowed: where its refund goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Redis,
    Local,
}

/// The answer to a [`ConsumeRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the units were (or, for a replay, had been) counted.
    pub allowed: bool,
    /// Why not, when not allowed.
    pub denial: Option<Denial>,
    /// Units left in the binding limit after this call (the smaller of rate and quota headroom);
    /// u64::MAX when unlimited.
    pub remaining: u64,
    /// The binding limit's size; 0 when unlimited.
    pub limit: u64,
    /// When the binding limit is fully available again (rate) or its window ends (quota), Unix ms.
    pub reset_at_ms: i64,
    /// How long to wait before retrying, when denied; 0 when allowed.
    pub retry_after_ms: u64,
    /// True when this idempotency key was already counted: nothing was counted again.
    pub replayed: bool,
    /// The store that decided (and counted, or had counted).
    pub counter: Counter,
}

/// What the durable ledger says a user used of a meter in a quota window: where the in-process
/// store starts counting a window it takes over, so a Redis outage or a restart does not hand
/// the whole quota out again.
pub trait QuotaSeed: Send + Sync + std::fmt::Debug {
    fn used<'a>(
        &'a self,
        user: Uuid,
        meter: &'a str,
        window: Quota,
    ) -> BoxFuture<'a, anyhow::Result<u64>>;
}

/// Why the limiter could not decide.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// The key was already spent on a different meter or amount.
    #[error("the idempotency key was used with a different meter or amount")]
    IdempotencyConflict,
    /// The request's quota window does not contain the shared clock's now (`now_ms`): this
    /// replica's clock is off, or the window just turned. Nothing was counted; ask again with
    /// windows chosen at `now_ms`.
    #[error("the quota window is not the current one")]
    StaleWindow { now_ms: i64 },
    /// Redis is down and the limiter is in [`RedisDownMode::Closed`].
    #[error("the limiter is unavailable")]
    Unavailable,
    /// The in-process store had to take over a quota window and could not learn from the
    /// ledger how much of it was used.
    #[error("the quota used so far could not be read")]
    SeedUnavailable(#[source] anyhow::Error),
}

/// What to do while Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisDownMode {
    /// count in this process while Redis is down
    Local,
    /// refuse (Unavailable) while Redis is down
    Closed,
}

/// Rate limits, quotas, idempotency and connection leases; cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct Limiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    clock: Clock,
    mode: RedisDownMode,
    local: LocalStore,
    health: Health,
    seed: Option<Arc<dyn QuotaSeed>>,
    /// Counts Redis's recoveries: a local quota counter seeded in an earlier epoch missed what
    /// Redis counted since, and is seeded again.
    epoch: AtomicU64,
}

/// A request normalised for the stores.
#[derive(Debug)]
struct Plan<'a> {
    user: Uuid,
    meter: &'a str,
    amount: u64,
    /// The idempotency key; `None` for probes and calls without one.
    idempotency_key: Option<&'a str>,
    /// What the key is remembered as: `amount:meter`.
    idempotency_record: Option<String>,
    /// For a refund in part: what the key is remembered as afterwards (the units kept).
    kept_record: Option<String>,
    /// (limit, period in µs), clamped.
    rate: Option<(u64, u64)>,
    quota: Option<Quota>,
}

impl<'a> Plan<'a> {
    fn new(request: &'a ConsumeRequest) -> Self {
        let keyed = request.amount > 0 && !request.idempotency_key.is_empty();
        Self {
            user: request.user_id,
            meter: &request.meter,
            amount: request.amount,
            idempotency_key: keyed.then_some(request.idempotency_key.as_str()),
            idempotency_record: keyed.then(|| format!("{}:{}", request.amount, request.meter)),
            kept_record: None,
            rate: request.rate.map(|rate| {
                let period_us = u64::try_from(rate.period.as_micros()).unwrap_or(MAX_EXACT);
                (rate.limit.min(MAX_EXACT), period_us.clamp(1, MAX_EXACT))
            }),
            quota: request.quota.map(|quota| Quota {
                limit: quota.limit.min(MAX_EXACT),
                ..quota
            }),
        }
    }

    /// The plan of a refund that keeps `keep` of the request's units counted (and gives back
    /// the rest); a keyed request's record then says `keep:meter`.
    fn keeping(mut self, keep: u64) -> Self {
        let keep = keep.min(self.amount);
        if keep > 0 && self.idempotency_key.is_some() {
            self.kept_record = Some(format!("{keep}:{}", self.meter));
        }
        self.amount -= keep;
        self
    }

    fn redis_keys(&self, engine: &Engine) -> redis_store::Keys {
        let window = self.quota.map_or(0, |quota| quota.window_start_ms);
        redis_store::Keys {
            gcra: engine.key(&keys::gcra(self.user, self.meter)),
            quota: engine.key(&keys::quota(self.user, self.meter, window)),
            idempotency: engine.key(&keys::idempotency(
                self.user,
                self.idempotency_key.unwrap_or(""),
            )),
        }
    }
}

impl Limiter {
    /// A limiter on `engine`'s Redis (or in-process, for a local engine) whose in-process
    /// quota counters start from zero.
    pub fn new(engine: Engine, mode: RedisDownMode, clock: Clock) -> Self {
        Self::build(engine, mode, clock, None)
    }

    /// A limiter whose in-process quota counters start from what `seed` says was used.
    pub fn seeded(
        engine: Engine,
        mode: RedisDownMode,
        clock: Clock,
        seed: Arc<dyn QuotaSeed>,
    ) -> Self {
        Self::build(engine, mode, clock, Some(seed))
    }

    fn build(
        engine: Engine,
        mode: RedisDownMode,
        clock: Clock,
        seed: Option<Arc<dyn QuotaSeed>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                clock,
                mode,
                local: LocalStore::new(),
                health: Health::new(),
                seed,
                epoch: AtomicU64::new(0),
            }),
        }
    }

    /// Atomically: idempotency check, then rate (GCRA) and quota check, then count (only if
    /// allowed; a denied call counts nothing and records no idempotency key, so a retry is judged
    /// afresh). Idempotency records of allowed calls live 48 h.
    pub async fn consume(&self, request: &ConsumeRequest) -> Result<Decision, LimitError> {
        let plan = Plan::new(request);
        let keys = plan.redis_keys(&self.inner.engine);
        let clock = &self.inner.clock;
        let routed = self
            .on_redis(async |conn| {
                let sent_ms = clock.host_ms();
                let (server_ms, decision) = redis_store::consume(conn, &plan, &keys).await?;
                clock.observe(server_ms, sent_ms, clock.host_ms());
                Ok(decision)
            })
            .await;
        match routed {
            Route::Redis(decision) => decision,
            Route::Local => self.consume_locally(&plan).await,
            Route::Unavailable => Err(LimitError::Unavailable),
        }
    }

    /// The in-process store's consume, its quota window first seeded from the ledger if this
    /// store has not counted it in the current epoch.
    async fn consume_locally(&self, plan: &Plan<'_>) -> Result<Decision, LimitError> {
        let local = &self.inner.local;
        if let (Some(seed), Some(quota)) = (&self.inner.seed, plan.quota) {
            let epoch = self.inner.epoch.load(Ordering::Acquire);
            if !local.quota_is_current(plan, epoch) {
                let used = seed
                    .used(plan.user, plan.meter, quota)
                    .await
                    .map_err(LimitError::SeedUnavailable)?;
                local.seed_quota(plan, used, epoch);
            }
        }
        local.consume(plan)
    }

    /// Undoes an allowed consume that `counter` counted (the caller could not make it
    /// durable): gives the units back and forgets the idempotency key.
    ///
    /// With an idempotency key the units are given back only while the key's record exists
    /// and matches, so refunding twice gives back once. Redis is asked even while the limiter
    /// skips it for other calls: it is the store holding the count. Failures are logged, not
    /// returned; the key's record then stays, and a retry of the key is a replay.
    pub async fn refund(&self, request: &ConsumeRequest, counter: Counter) {
        self.refund_keeping(request, 0, counter).await;
    }

    /// Gives back the units of an allowed `request` beyond the `keep` it spent, to the store
    /// that counted them; its idempotency key is remembered as counting `keep` units after.
    /// Whether units were given back.
    pub async fn refund_keeping(
        &self,
        request: &ConsumeRequest,
        keep: u64,
        counter: Counter,
    ) -> bool {
        let plan = Plan::new(request).keeping(keep);
        if plan.amount == 0 {
            return false;
        }
        let refunded = match counter {
            Counter::Local => self.inner.local.refund(&plan),
            Counter::Redis => {
                let keys = plan.redis_keys(&self.inner.engine);
                let refund = async |conn: &mut RedisConnection| {
                    redis_store::refund(conn, &plan, &keys).await
                };
                match self.call_redis(refund).await {
                    Some(refunded) => refunded,
                    None => {
                        tracing::warn!(
                            meter = plan.meter,
                            "the refund could not reach redis, which counted the units"
                        );
                        return false;
                    }
                }
            }
        };
        if !refunded {
            tracing::debug!(
                meter = plan.meter,
                "nothing to refund for this idempotency key"
            );
        }
        refunded
    }

    /// Undoes an allowed consume for a caller that does not know which store counted it: each
    /// store gives the units back only while it holds the key's matching record, so at most
    /// one of them does. Whether one did.
    pub async fn refund_wherever_counted(&self, request: &ConsumeRequest, keep: u64) -> bool {
        let on_redis = self.inner.engine.is_redis()
            && self.refund_keeping(request, keep, Counter::Redis).await;
        on_redis || self.refund_keeping(request, keep, Counter::Local).await
    }

    /// The clock quota windows are chosen by: Redis's, as last observed.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Whether the last Redis call failed (for metrics/readiness).
    pub fn redis_degraded(&self) -> bool {
        self.inner.health.degraded()
    }

    /// Runs `op` on Redis within the timeout, or says where to go instead.
    async fn on_redis<T>(
        &self,
        op: impl AsyncFnOnce(&mut RedisConnection) -> redis::RedisResult<T>,
    ) -> Route<T> {
        if !self.inner.engine.is_redis() {
            return Route::Local;
        }
        if !self.inner.health.should_try() {
            return self.fallback();
        }
        match self.call_redis(op).await {
            Some(value) => Route::Redis(value),
            None => self.fallback(),
        }
    }

    /// Runs `op` on Redis within the timeout, whatever the health gate says, and tells the
    /// gate how it went; None if it failed (or there is no Redis).
    async fn call_redis<T>(
        &self,
        op: impl AsyncFnOnce(&mut RedisConnection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let mut conn = self.inner.engine.redis_multiplexed()?;
        let attempt = tokio::time::timeout(health::REDIS_TIMEOUT, async {
            op(&mut conn).await.map_err(|err| err.to_string())
        })
        .await;
        let health = &self.inner.health;
        match attempt {
            Ok(Ok(value)) => {
                if health.degraded() {
                    // Back on Redis: what it counts from now on, this outage's local quota
                    // counters never see, so the next outage seeds them afresh.
                    self.inner.epoch.fetch_add(1, Ordering::AcqRel);
                }
                health.succeeded();
                Some(value)
            }
            Ok(Err(error)) => {
                health.failed(&error);
                None
            }
            Err(_) => {
                health.failed("timed out");
                None
            }
        }
    }

    fn fallback<T>(&self) -> Route<T> {
        match self.inner.mode {
            RedisDownMode::Local => Route::Local,
            RedisDownMode::Closed => Route::Unavailable,
        }
    }
}

/// Where an operation was, or is to be, served.
enum Route<T> {
    Redis(T),
    Local,
    Unavailable,
}
