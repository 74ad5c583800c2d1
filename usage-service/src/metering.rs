//! Metering: `Consume` counts usage against the plan's rate limit and quota atomically and
//! idempotently, and makes every acknowledged unit durable in the ledger before answering;
//! `GetUsage` reads the billing counters back from the ledger; connection leases bound a
//! user's concurrent connections across gateway nodes.
//!
//! The limiter counts first and the ledger row is written after, so the two can part: a crash
//! between them, a caller that gave up before its row was written, or a refund that could not
//! reach the store that counted all leave a key the limiter remembers and the ledger lacks. So
//! a replay (the limiter knew the key) is acknowledged only once its row is in the ledger: it
//! is written then if it is missing, and if it cannot be, the count is refunded and the call
//! answers UNAVAILABLE like any other.
//!
//! A rate-only meter (not billable, see [`crate::catalogue`]) skips the ledger: the limiter's
//! count and its idempotency record are all there is of it.

use std::{sync::Arc, time::Duration};

use crate::{
    access::DenyReason,
    catalogue::{MeterSpec, Plan},
    domain::{IdempotencyKey, Meter, UserId},
    error::UsageError,
    limits::{ConsumeRequest, Decision, Denial, LimitError, Quota, Rate},
    periods::{self, Window},
    store::{LedgerEntry, LedgerWrite, REVERSAL_PREFIX},
    usage::{Usage, UserContext},
};

/// Largest amount one `Consume` may count.
pub const MAX_AMOUNT: u64 = 1_000_000;
/// Most leases one `AcquireConnections` or `ReleaseConnections` may carry (and
/// `UpdateConnections` of each kind).
pub const MAX_LEASES: usize = 1000;
/// Bounds of a lease's time to live.
pub const LEASE_TTL: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(5)..=Duration::from_secs(3600);

/// A `Consume` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub decision: Decision,
    pub denial: Option<DenyReason>,
    /// The meter writes no ledger rows (see [`Usage::refund`]'s `keep`).
    pub rate_only: bool,
}

/// An `AcquireConnection` answer, with the context it was decided in (plan and roles), which
/// the gateway shows the connection.
#[derive(Clone, Debug)]
pub struct LeaseDecision {
    pub granted: bool,
    pub active: u32,
    pub limit: u32,
    pub context: Arc<UserContext>,
}

/// A meter's use in a billing period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterUsage {
    pub meter: Meter,
    pub used: u64,
    /// The plan's limit for the meter's own window (minute, day or period); None: unlimited.
    pub limit: Option<u64>,
}

impl Usage {
    pub async fn consume(
        &self,
        user: UserId,
        meter: Meter,
        amount: u64,
        key: IdempotencyKey,
    ) -> Result<Consumed, UsageError> {
        if amount == 0 {
            return Err(UsageError::InvalidInput("amount must be at least 1".into()));
        }
        if amount > MAX_AMOUNT {
            return Err(UsageError::InvalidInput(format!(
                "amount must be at most {MAX_AMOUNT}"
            )));
        }
        let spec = self
            .catalogue
            .meter(&meter)
            .ok_or_else(|| UsageError::UnknownMeter(meter.clone()))?
            .clone();
        let started = std::time::Instant::now();
        let context = self.context(user).await?;
        let mut now = self.now_ms();
        let mut attempts = 0;
        let (request, decision) = loop {
            let request = limit_request(&context.plan, user, &meter, amount, &key, now);
            match self.limiter.consume(&request).await {
                // This replica's clock disagreed with the shared one about the quota window:
                // choose the windows again at the shared clock's now.
                Err(LimitError::StaleWindow { now_ms }) if attempts < 2 => {
                    attempts += 1;
                    now = now_ms;
                }
                result => break (request, result?),
            }
        };
        let result = if !decision.allowed {
            Ok(decision)
        } else if spec.billable {
            self.record(&request, decision, now).await
        } else {
            if !decision.replayed {
                self.metrics.consumed(meter.as_str(), amount);
            }
            Ok(decision)
        };
        let consumed = result.map(|decision| Consumed {
            decision,
            rate_only: !spec.billable,
            denial: decision.denial.map(|denial| match denial {
                Denial::RateLimited => DenyReason::RateLimited,
                Denial::QuotaExceeded => DenyReason::QuotaExceeded,
            }),
        });
        if let Ok(consumed) = &consumed {
            self.metrics.decision(
                meter.as_str().to_owned(),
                consumed.denial.map_or("allowed", DenyReason::as_str),
            );
        }
        self.metrics.consume_latency(started.elapsed());
        consumed
    }

    /// Gives back an allowed consume of `key` whose action did not happen (an agent run whose
    /// backend could not be reached): the ledger gets the reversal of its row and the limiter
    /// the units. Idempotent; false when there was nothing (left) to refund. The caller states
    /// the meter and amount it consumed, and they must match what was recorded. A rate-only
    /// meter's units can be given back in part: the `keep` that were spent stay counted.
    pub async fn refund(
        &self,
        user: UserId,
        meter: Meter,
        (amount, keep): (u64, u64),
        key: IdempotencyKey,
    ) -> Result<bool, UsageError> {
        if !(1..=MAX_AMOUNT).contains(&amount) {
            return Err(UsageError::InvalidInput(format!(
                "amount must be 1 to {MAX_AMOUNT}"
            )));
        }
        if keep >= amount {
            return Err(UsageError::InvalidInput(
                "keep must be less than amount".into(),
            ));
        }
        if key.as_str().starts_with(REVERSAL_PREFIX) {
            return Err(UsageError::InvalidInput(format!(
                "idempotency keys starting with `{REVERSAL_PREFIX}` are reserved"
            )));
        }
        let spec = self
            .catalogue
            .meter(&meter)
            .ok_or_else(|| UsageError::UnknownMeter(meter.clone()))?
            .clone();
        let context = self.context(user).await?;
        let now = self.now_ms();
        if spec.billable && keep > 0 {
            return Err(UsageError::InvalidInput(format!(
                "`{}` is billable: its units are refunded whole (keep 0)",
                meter.as_str()
            )));
        }
        let request = limit_request(&context.plan, user, &meter, amount, &key, now);
        let refunded = if spec.billable {
            let reversed = self
                .store
                .reverse_ledger(user, key.as_str(), &meter, amount)
                .await?;
            if reversed {
                self.limiter.refund_wherever_counted(&request, keep).await;
            }
            reversed
        } else {
            // The limiter's idempotency record is all a rate-only meter has of the key.
            self.limiter.refund_wherever_counted(&request, keep).await
        };
        if refunded {
            self.metrics.decision(meter.as_str().to_owned(), "refunded");
        }
        Ok(refunded)
    }

    /// Makes an allowed consume durable, a replay included (its row may never have been
    /// written); undoes the count, at the store that made it, if it cannot be.
    async fn record(
        &self,
        request: &ConsumeRequest,
        decision: Decision,
        now: i64,
    ) -> Result<Decision, UsageError> {
        let meter = Meter::parse(&request.meter)?;
        let entry = LedgerEntry {
            user: request.user_id.into(),
            idempotency_key: request.idempotency_key.clone(),
            meter: meter.clone(),
            amount: request.amount,
            period_start_ms: periods::month(now).start_ms,
            recorded_at_ms: now,
        };
        let refund = || self.limiter.refund(request, decision.counter);
        match self.ledger.append(entry).await {
            Ok(LedgerWrite::Inserted) => {
                if decision.replayed {
                    tracing::info!(
                        meter = meter.as_str(),
                        "a replayed key had no ledger row; written now"
                    );
                }
                self.metrics.consumed(meter.as_str(), request.amount);
                Ok(decision)
            }
            // The row was there: a replay, counted once.
            Ok(LedgerWrite::Duplicate) if decision.replayed => Ok(decision),
            Ok(LedgerWrite::Duplicate) => {
                // The ledger knew the key (the limiter had forgotten it): a retry, counted once.
                refund().await;
                Ok(Decision {
                    replayed: true,
                    ..decision
                })
            }
            Ok(LedgerWrite::Conflict) => {
                refund().await;
                Err(UsageError::IdempotencyConflict)
            }
            Err(err) => {
                refund().await;
                Err(err.into())
            }
        }
    }

    /// The billing counters of the period containing `at_ms`, from the ledger.
    pub async fn usage(
        &self,
        user: UserId,
        at_ms: i64,
    ) -> Result<(Window, Vec<MeterUsage>), UsageError> {
        let period = periods::month(at_ms);
        let context = self.context(user).await?;
        let recorded = self.store.usage(user, period.start_ms).await?;
        let meters = self
            .catalogue
            .meters()
            .iter()
            .map(|MeterSpec { name, .. }| MeterUsage {
                meter: name.clone(),
                used: recorded.get(name).copied().unwrap_or(0),
                limit: context.plan.limits_of(name).headline(),
            })
            .collect();
        Ok((period, meters))
    }

    /// Grants (or renews) a connection slot within the plan's limit.
    pub async fn acquire_connection(
        &self,
        user: UserId,
        connection_id: &str,
        ttl: Duration,
    ) -> Result<LeaseDecision, UsageError> {
        let mut decisions = self
            .acquire_connections(&[(user, connection_id, ttl)])
            .await?;
        Ok(decisions.remove(0))
    }

    /// [`Self::acquire_connection`] for each `(user, connection id, ttl)`, in order; all or none
    /// are valid, and the leases are taken in one round trip to the limiter's store.
    pub async fn acquire_connections(
        &self,
        leases: &[(UserId, &str, Duration)],
    ) -> Result<Vec<LeaseDecision>, UsageError> {
        self.update_connections(&[], leases).await
    }

    /// Gives up each `(user, connection id)` lease; all or none are valid.
    pub async fn release_connections(&self, leases: &[(UserId, &str)]) -> Result<(), UsageError> {
        self.update_connections(leases, &[]).await.map(drop)
    }

    /// Gives up `released`, then takes `acquired` (answered in order): what a gateway's
    /// connections closed and opened since its last call, in one call. All or none are valid;
    /// nothing is applied until all are checked.
    pub async fn update_connections(
        &self,
        released: &[(UserId, &str)],
        acquired: &[(UserId, &str, Duration)],
    ) -> Result<Vec<LeaseDecision>, UsageError> {
        check_batch(released.len())?;
        check_batch(acquired.len())?;
        let mut releases = Vec::with_capacity(released.len());
        for &(user, connection_id) in released {
            validate_connection_id(connection_id)?;
            releases.push((user.as_uuid(), connection_id));
        }
        let mut contexts = Vec::with_capacity(acquired.len());
        let mut requested = Vec::with_capacity(acquired.len());
        for &(user, connection_id, ttl) in acquired {
            validate_connection_id(connection_id)?;
            if !LEASE_TTL.contains(&ttl) {
                return Err(UsageError::InvalidInput(
                    "ttl_seconds must be between 5 and 3600".into(),
                ));
            }
            let context = self.context(user).await?;
            requested.push((
                user.as_uuid(),
                connection_id,
                context.plan.max_connections,
                ttl,
            ));
            contexts.push(context);
        }
        if !releases.is_empty() {
            self.limiter.release_leases(&releases).await?;
        }
        if requested.is_empty() {
            return Ok(Vec::new());
        }
        let answers = self.limiter.acquire_leases(&requested).await?;
        Ok(answers
            .into_iter()
            .zip(contexts)
            .map(|((granted, active), context)| {
                self.metrics.decision(
                    "connection",
                    if granted { "allowed" } else { "LIMIT_REACHED" },
                );
                LeaseDecision {
                    granted,
                    active,
                    limit: context.plan.max_connections,
                    context,
                }
            })
            .collect())
    }
}

fn check_batch(len: usize) -> Result<(), UsageError> {
    if len > MAX_LEASES {
        return Err(UsageError::InvalidInput(format!(
            "at most {MAX_LEASES} leases per call"
        )));
    }
    Ok(())
}

fn validate_connection_id(id: &str) -> Result<(), UsageError> {
    let valid = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(UsageError::InvalidInput(
            "connection_id must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'".into(),
        ))
    }
}

/// The limits a plan sets on one meter: its rate per minute, and its quota in the UTC day or
/// the billing month containing `now`.
fn limit_request(
    plan: &Plan,
    user: UserId,
    meter: &Meter,
    amount: u64,
    key: &IdempotencyKey,
    now: i64,
) -> ConsumeRequest {
    let limits = plan.limits_of(meter);
    let quota = |limit: u64, window: Window| Quota {
        limit,
        window_start_ms: window.start_ms,
        window_end_ms: window.end_ms,
    };
    ConsumeRequest {
        user_id: user.as_uuid(),
        meter: meter.as_str().to_owned(),
        amount,
        idempotency_key: key.as_str().to_owned(),
        rate: limits.per_minute.map(|limit| Rate {
            limit,
            period: Duration::from_secs(60),
        }),
        quota: limits
            .per_day
            .map(|limit| quota(limit, periods::day(now)))
            .or_else(|| {
                limits
                    .per_month
                    .map(|limit| quota(limit, periods::month(now)))
            }),
    }
}
