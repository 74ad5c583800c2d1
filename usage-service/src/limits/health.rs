//! Redis health as the limiter sees it: whether the last call failed, and when to try again.
//!
//! After a failure Redis is skipped for [`RETRY_AFTER`]; then exactly one call (whichever wins
//! a compare-and-swap) probes it while the others keep skipping, so an outage costs one timeout
//! per second instead of one per call, and a success clears the degraded state by itself.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// The bound on one Redis call, pool checkout included.
pub(super) const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How long Redis is skipped after a failure.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Health {
    epoch: Instant,
    degraded: AtomicBool,
    /// Milliseconds since `epoch` before which Redis is skipped.
    retry_at_ms: AtomicU64,
}

impl Health {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            degraded: AtomicBool::new(false),
            retry_at_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Whether this call should go to Redis: always while healthy; while degraded, only the
    /// one call that claims the next probe slot.
    pub(super) fn should_try(&self) -> bool {
        if !self.degraded() {
            return true;
        }
        let now = self.now_ms();
        let retry_at = self.retry_at_ms.load(Ordering::Acquire);
        now >= retry_at
            && self
                .retry_at_ms
                .compare_exchange(
                    retry_at,
                    now + retry_after_ms(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    pub(super) fn failed(&self, error: &str) {
        self.retry_at_ms
            .store(self.now_ms() + retry_after_ms(), Ordering::Release);
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error,
                "redis limiter call failed; degraded until redis answers"
            );
        } else {
            tracing::debug!(error, "redis limiter probe failed");
        }
    }

    pub(super) fn succeeded(&self) {
        if self.degraded.swap(false, Ordering::AcqRel) {
            tracing::info!("redis limiter recovered");
        }
    }
}

fn retry_after_ms() -> u64 {
    u64::try_from(RETRY_AFTER.as_millis()).unwrap_or(u64::MAX)
}
