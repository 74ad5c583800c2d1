//! "Skip for a while, then let one probe through", written once: the gate under the gateway's
//! circuit breaker, usage-service's Redis health and the JWKS refresh limit.
//!
//! A gate is shut until an instant. While it is shut, callers skip the guarded call (and take
//! their fallback). Once the instant has passed, exactly one caller claims the gate, which shuts
//! it again for one interval: that caller makes the call (the probe), the others keep skipping.
//! A failure (of the probe or of anything else) shuts the gate for an interval from then with
//! [`ProbeGate::hold`]; a probe that never ran gives its claim back with
//! [`ProbeGate::release`], so the next caller probes at once. A claim is only a lease: a probe
//! that hangs never keeps the others out for more than one interval.
//!
//! The deadline is one atomic, claimed by compare-and-swap: no lock, nothing to poison. Time is
//! tokio's, so tests run on paused time.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

#[derive(Debug)]
pub struct ProbeGate {
    epoch: Instant,
    /// Nanoseconds since `epoch` before which callers skip.
    open_at: AtomicU64,
    interval: Duration,
}

/// The right to make one probe call, until the gate's interval has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The deadline this claim set.
    until: u64,
}

impl ProbeGate {
    /// An open gate that shuts for `interval` after each claim or hold.
    pub fn new(interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            open_at: AtomicU64::new(0),
            interval,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn now(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// Whether a caller could claim the gate now.
    pub fn is_open(&self) -> bool {
        self.now() >= self.open_at.load(Ordering::Acquire)
    }

    /// How long until the gate opens (zero if it is open).
    pub fn until_open(&self) -> Duration {
        let open_at = self.open_at.load(Ordering::Acquire);
        Duration::from_nanos(open_at.saturating_sub(self.now()))
    }

    /// Claims the gate if it is open, shutting it for one interval; `None` if it is shut or
    /// another caller claimed it first.
    pub fn try_claim(&self) -> Option<Claim> {
        let now = self.now();
        let open_at = self.open_at.load(Ordering::Acquire);
        if now < open_at {
            return None;
        }
        let until = now.saturating_add(nanos(self.interval));
        self.open_at
            .compare_exchange(open_at, until, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Claim { until })
    }

    /// Shuts the gate for one interval from now: after a failure, or after the guarded work
    /// was done anyway (a scheduled refresh).
    pub fn hold(&self) {
        let until = self.now().saturating_add(nanos(self.interval));
        self.open_at.fetch_max(until, Ordering::AcqRel);
    }

    /// Gives back a claim whose probe never happened (its caller went away), so the next caller
    /// may probe at once. Nothing changes if the gate was held again since the claim.
    pub fn release(&self, claim: Claim) {
        let _ = self.open_at.compare_exchange(
            claim.until,
            self.now(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_lets_exactly_one_caller_through_per_interval() {
        let gate = ProbeGate::new(INTERVAL);
        assert!(gate.is_open());
        assert!(gate.try_claim().is_some());
        assert!(gate.try_claim().is_none(), "one probe at a time");
        assert_eq!(gate.until_open(), INTERVAL);

        tokio::time::advance(INTERVAL - Duration::from_millis(1)).await;
        assert!(gate.try_claim().is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            gate.try_claim().is_some(),
            "a hung probe holds the gate one interval at most"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_shuts_it_for_an_interval_from_then() {
        let gate = ProbeGate::new(INTERVAL);
        gate.hold();
        assert!(!gate.is_open());
        tokio::time::advance(Duration::from_secs(3)).await;
        gate.hold();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            gate.try_claim().is_none(),
            "the second hold counts from then"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(gate.try_claim().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_claim_lets_the_next_caller_probe_at_once() {
        let gate = ProbeGate::new(INTERVAL);
        let claim = gate.try_claim().unwrap();
        gate.release(claim);
        assert!(gate.is_open());
        let again = gate.try_claim().expect("the slot was given back");

        // A release after the gate was held again (the probe failed meanwhile) changes nothing.
        tokio::time::advance(Duration::from_secs(1)).await;
        gate.hold();
        gate.release(again);
        assert_eq!(gate.until_open(), INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_claim_an_open_gate_once() {
        let gate = std::sync::Arc::new(ProbeGate::new(INTERVAL));
        let claims = futures::future::join_all((0..64).map(|_| {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move { gate.try_claim().is_some() })
        }))
        .await;
        let claimed = claims
            .into_iter()
            .filter(|won| *won.as_ref().unwrap())
            .count();
        assert_eq!(claimed, 1);
    }
}
