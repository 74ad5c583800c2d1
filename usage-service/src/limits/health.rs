//! Redis health as the limiter sees it: whether the last call failed, and when to try again.
//!
//! After a failure Redis is skipped for [`RETRY_AFTER`]; then exactly one call (whichever
//! claims the shared [`ProbeGate`]) probes it while the others keep skipping, so an outage
//! costs one timeout per second instead of one per call, and a success clears the degraded
//! state by itself.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tollgate_shared::probe_gate::ProbeGate;

/// The bound on one Redis call, pool checkout included.
pub(super) const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How long Redis is skipped after a failure.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Health {
    degraded: AtomicBool,
    gate: ProbeGate,
}

impl Health {
    pub(super) fn new() -> Self {
        Self {
            degraded: AtomicBool::new(false),
            gate: ProbeGate::new(RETRY_AFTER),
        }
    }

    pub(super) fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Whether this call should go to Redis: always while healthy; while degraded, only the
    /// one call that claims the next probe.
    pub(super) fn should_try(&self) -> bool {
        !self.degraded() || self.gate.try_claim().is_some()
    }

    pub(super) fn failed(&self, error: &str) {
        self.gate.hold();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failure_skips_redis_then_lets_one_probe_through_a_second() {
        let health = Health::new();
        assert!(
            health.should_try() && health.should_try(),
            "healthy: every call"
        );
        health.failed("connection refused");
        assert!(health.degraded());
        assert!(!health.should_try(), "skipped right after the failure");
        tokio::time::advance(RETRY_AFTER).await;
        assert!(health.should_try(), "one probe");
        assert!(!health.should_try(), "only one");
        health.failed("still down");
        tokio::time::advance(RETRY_AFTER).await;
        assert!(health.should_try());
        health.succeeded();
        assert!(!health.degraded());
        assert!(health.should_try() && health.should_try());
    }
}
