//! The arithmetic both stores share: one GCRA step and the rule that folds a rate verdict and a
//! quota verdict into one [`Decision`].
//!
//! The Redis store runs the same GCRA step in Lua (it has to, to stay atomic) and hands back the
//! raw per-limit verdicts, so the folding rule lives in exactly one place and the two stores
//! cannot disagree on what a caller sees.

use super::{Counter, Decision, Denial};

/// Largest count handled exactly: Lua numbers are doubles, so limits are clamped to 2^53.
pub(super) const MAX_EXACT: u64 = 1 << 53;

/// Slack, as a fraction of the period, for floating-point error in the GCRA comparison.
/// For a one-minute period it is 60 ns, far below any clock the callers can observe.
const TOLERANCE_SLACK: f64 = 1e-9;

/// One limit's verdict on one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Whether this limit lets the call through.
    pub allowed: bool,
    /// Units left after the call (nothing was counted if the call was denied).
    pub remaining: u64,
    /// The limit's size.
    pub limit: u64,
    /// When this limit is fully available again (rate) or its window ends (quota), Unix ms.
    pub reset_at_ms: i64,
    /// How long until the call could pass, when denied.
    pub retry_after_ms: u64,
}

/// One GCRA check: `debt_us` is `max(tat - now, 0)` before the call; returns whether the
/// units fit and the debt to store if they are counted.
///
/// With emission interval `T = period / limit` and tolerance `period`, `amount` units move the
/// theoretical arrival time to `max(tat, now) + amount * T`; the call passes iff that is at most
/// `period` ahead of now. A limit of 0 lets nothing but probes through.
pub(super) fn gcra_check(debt_us: f64, amount: u64, limit: u64, period_us: f64) -> (bool, f64) {
    if limit == 0 {
        return (amount == 0, 0.0);
    }
    let new_debt_us = debt_us + amount as f64 * (period_us / limit as f64);
    (
        new_debt_us <= period_us * (1.0 + TOLERANCE_SLACK),
        new_debt_us,
    )
}

/// The rate verdict after a [`gcra_check`]: `debt_after_us` is the new debt if the call was
/// counted and the old one otherwise.
pub(super) fn rate_verdict(
    rate_allowed: bool,
    debt_after_us: f64,
    new_debt_us: f64,
    limit: u64,
    period_us: f64,
    now_ms: i64,
) -> Verdict {
    if limit == 0 {
        return Verdict {
            allowed: rate_allowed,
            remaining: 0,
            limit: 0,
            reset_at_ms: now_ms,
            retry_after_ms: if rate_allowed { 0 } else { ceil_ms(period_us) },
        };
    }
    let interval = period_us / limit as f64;
    let remaining = ((period_us - debt_after_us) / interval + 1e-9)
        .floor()
        .max(0.0) as u64;
    Verdict {
        allowed: rate_allowed,
        remaining: remaining.min(limit),
        limit,
        reset_at_ms: now_ms.saturating_add(i64::try_from(ceil_ms(debt_after_us)).unwrap_or(0)),
        retry_after_ms: if rate_allowed {
            0
        } else {
            ceil_ms(new_debt_us - period_us)
        },
    }
}

/// The quota verdict for a counter at `used` (after the call if it was counted).
pub(super) fn quota_verdict(
    allowed: bool,
    used_after: u64,
    limit: u64,
    window_end_ms: i64,
    now_ms: i64,
) -> Verdict {
    Verdict {
        allowed,
        remaining: limit.saturating_sub(used_after),
        limit,
        reset_at_ms: window_end_ms,
        retry_after_ms: if allowed {
            0
        } else {
            u64::try_from(window_end_ms.saturating_sub(now_ms)).unwrap_or(0)
        },
    }
}

/// Folds the per-limit verdicts into the caller's decision, made by `counter`.
///
/// A quota denial wins over a rate denial: retrying after the rate limit's hint would only hit
/// the quota again. When allowed, the binding limit is the one with less headroom (on a tie, the
/// one that resets later).
pub(super) fn combine(
    counter: Counter,
    now_ms: i64,
    replayed: bool,
    rate: Option<Verdict>,
    quota: Option<Verdict>,
) -> Decision {
    let remaining = [rate, quota]
        .iter()
        .flatten()
        .map(|verdict| verdict.remaining)
        .min()
        .unwrap_or(u64::MAX);
    let denial = if replayed {
        None
    } else if quota.is_some_and(|verdict| !verdict.allowed) {
        Some(Denial::QuotaExceeded)
    } else if rate.is_some_and(|verdict| !verdict.allowed) {
        Some(Denial::RateLimited)
    } else {
        None
    };
    let binding = match denial {
        Some(Denial::QuotaExceeded) => quota,
        Some(Denial::RateLimited) => rate,
        None => match (rate, quota) {
            (Some(rate), Some(quota)) => {
                let rate_binds = rate.remaining < quota.remaining
                    || (rate.remaining == quota.remaining && rate.reset_at_ms > quota.reset_at_ms);
                Some(if rate_binds { rate } else { quota })
            }
            (rate, quota) => rate.or(quota),
        },
    };
    match binding {
        Some(binding) => Decision {
            allowed: denial.is_none(),
            denial,
            remaining,
            limit: binding.limit,
            reset_at_ms: binding.reset_at_ms,
            retry_after_ms: if denial.is_some() {
                binding.retry_after_ms
            } else {
                0
            },
            replayed,
            counter,
        },
        None => Decision {
            allowed: true,
            denial: None,
            remaining,
            limit: 0,
            reset_at_ms: now_ms,
            retry_after_ms: 0,
            replayed,
            counter,
        },
    }
}

/// Microseconds to whole milliseconds, rounded up (a caller told to wait must not be early).
pub(super) fn ceil_ms(us: f64) -> u64 {
    if us <= 0.0 {
        0
    } else {
        (us / 1000.0).ceil() as u64
    }
}
