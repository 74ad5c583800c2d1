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
//!
//! # Clocks and accuracy
//!
//! On Redis every script reads the clock with Redis `TIME`, never the caller's clock, so
//! replicas with skewed clocks agree on when a bucket refills or a lease expires, and GCRA is
//! exact (to well under a microsecond) across any number of replicas. The in-process store uses
//! this process's monotonic clock. A fallback is per process: while Redis is down, N replicas
//! in [`RedisDownMode::Local`] each count on their own, so together they may allow up to N
//! times the limit (and a lease limit per replica); counts made locally are not merged back
//! when Redis returns.
//!
//! # Redis failures
//!
//! Each Redis call is bounded by a 250 ms timeout. A failure marks the limiter degraded and
//! skips Redis for a second, after which a single call probes it again, so an outage costs
//! one timeout per second rather than one per call, and the limiter recovers by itself. While
//! degraded, [`RedisDownMode::Local`] answers from the in-process store and
//! [`RedisDownMode::Closed`] refuses with [`LimitError::Unavailable`]. A call that timed out may
//! still have been counted by Redis; the idempotency key is what makes the caller's retry safe.
//!
//! # Keys
//!
//! Under the engine's deployment prefix: `usage:gcra:{user}:{meter}`,
//! `usage:quota:{user}:{meter}:{window_start_ms}`, `usage:idem:{user}:{key}` and
//! `usage:leases:{user}`, where the braces are literal: the user id is a Redis Cluster hash
//! tag, so one script's keys share a slot.

mod decision;
mod health;
mod keys;
mod local;
mod redis_store;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use redis::aio::ConnectionManager;
use tollgate_shared::engine::Engine;

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
    /// A limiter on `engine`'s Redis (or in-process, for a local engine).
    pub fn new(engine: Engine, mode: RedisDownMode, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                clock,
                mode,
                local: LocalStore::new(),
                health: Health::new(),
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
            Route::Local => self.inner.local.consume(&plan),
            Route::Unavailable => Err(LimitError::Unavailable),
        }
    }

    /// Undoes an allowed, non-replayed consume (the caller could not make it durable): gives the
    /// units back and forgets the idempotency key.
    ///
    /// With an idempotency key the units are given back only while the key's record exists
    /// and matches, so refunding twice gives back once. Failures are logged, not returned.
    pub async fn refund(&self, request: &ConsumeRequest) {
        let plan = Plan::new(request);
        if plan.amount == 0 {
            return;
        }
        let keys = plan.redis_keys(&self.inner.engine);
        let routed = self
            .on_redis(async |conn| redis_store::refund(conn, &plan, &keys).await)
            .await;
        let refunded = match routed {
            Route::Redis(refunded) => refunded,
            Route::Local => self.inner.local.refund(&plan),
            Route::Unavailable => {
                tracing::warn!(meter = plan.meter, "redis is down; refund dropped");
                return;
            }
        };
        if !refunded {
            tracing::debug!(
                meter = plan.meter,
                "nothing to refund for this idempotency key"
            );
        }
    }

    /// Connection leases: grants `connection_id` a slot among the user's at most `limit` live
    /// leases, each expiring `ttl` after its last acquire (re-acquiring the same id renews it and
    /// never counts twice). Returns (granted, active_after).
    ///
    /// A limit of 0 grants nothing new; leases expire on the store's clock (Redis `TIME`).
    pub async fn acquire_lease(
        &self,
        user_id: Uuid,
        connection_id: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<(bool, u32), LimitError> {
        let answers = self
            .acquire_leases(&[(user_id, connection_id, limit, ttl)])
            .await?;
        Ok(answers[0])
    }

    /// [`Self::acquire_lease`] for each `(user, connection id, limit, ttl)`, in order, in one
    /// round trip to Redis.
    pub async fn acquire_leases(
        &self,
        leases: &[(Uuid, &str, u32, Duration)],
    ) -> Result<Vec<(bool, u32)>, LimitError> {
        let keyed: Vec<(String, &str, u32, u64)> = leases
            .iter()
            .map(|&(user, id, limit, ttl)| {
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                (
                    self.inner.engine.key(&keys::leases(user)),
                    id,
                    limit,
                    ttl_ms,
                )
            })
            .collect();
        let routed = self
            .on_redis(async |conn| redis_store::acquire_leases(conn, &keyed).await)
            .await;
        match routed {
            Route::Redis(answers) => Ok(answers),
            Route::Local => Ok(leases
                .iter()
                .map(|&(user, id, limit, ttl)| self.inner.local.acquire_lease(user, id, limit, ttl))
                .collect()),
            Route::Unavailable => Err(LimitError::Unavailable),
        }
    }

    /// Gives up each `(user, connection id)` lease, freeing its slot at once.
    pub async fn release_leases(&self, leases: &[(Uuid, &str)]) -> Result<(), LimitError> {
        let keyed: Vec<(String, &str)> = leases
            .iter()
            .map(|&(user, id)| (self.inner.engine.key(&keys::leases(user)), id))
            .collect();
        let routed = self
            .on_redis(async |conn| redis_store::release_leases(conn, &keyed).await)
            .await;
        match routed {
            Route::Redis(()) => Ok(()),
            Route::Local => {
                for &(user, id) in leases {
                    self.inner.local.release_lease(user, id);
                }
                Ok(())
            }
            Route::Unavailable => Err(LimitError::Unavailable),
        }
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
        op: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Route<T> {
        let Some(mut conn) = self.inner.engine.redis_multiplexed() else {
            return Route::Local;
        };
        if !self.inner.health.should_try() {
            return self.fallback();
        }
        let attempt = tokio::time::timeout(health::REDIS_TIMEOUT, async {
            op(&mut conn).await.map_err(|err| err.to_string())
        })
        .await;
        match attempt {
            Ok(Ok(value)) => {
                self.inner.health.succeeded();
                Route::Redis(value)
            }
            Ok(Err(error)) => {
                self.inner.health.failed(&error);
                self.fallback()
            }
            Err(_) => {
                self.inner.health.failed("timed out");
                self.fallback()
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
