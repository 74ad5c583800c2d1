//! Retrying a dependency, written once for every loop that does it: the Redis subscription,
//! the JWKS refresher, the service-token source, the gateway's revocation watcher.
//!
//! - **How long to wait.** A retry loop asks its [`Backoff`] how long to wait after each
//!   failure (`min`, doubling up to `max`) and resets it after a success. Each wait is
//!   shortened by a random fraction of up to `jitter`, so replicas that lost a dependency
//!   together do not all come back at the same instant, and a wait never exceeds `max`. (The
//!   shape of linkerd's `exp-backoff`, without the stream: the loops here interleave their
//!   waits with shutdown and with success sleeps of their own.)
//! - **How loudly to say so.** Services start together, so the first attempts of a normal
//!   start may find a dependency not listening yet. [`StartupGrace`] keeps those failures
//!   quiet (DEBUG) until the dependency first answers or the grace period is over; after that
//!   every failure is a warning, so a WARN in the logs always means something.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// How long after a start a dependency that has never answered may stay unreachable before
/// its failures are warnings: time for the services of a deployment to start together.
pub const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// How a retry loop waits: the policy, shared by every loop that uses it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    jitter: f64,
}

impl ExponentialBackoff {
    /// Waits from `min` doubling up to `max` (raised to `min` if below it), each shortened by
    /// up to `jitter` (clamped to 0..=1) of itself.
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Self {
        Self {
            min,
            max: max.max(min),
            jitter: if jitter.is_finite() {
                jitter.clamp(0.0, 1.0)
            } else {
                0.0
            },
        }
    }

    /// The progress of one retry loop, starting at `min`.
    pub fn start(&self) -> Backoff {
        Backoff {
            policy: *self,
            failures: 0,
        }
    }
}

/// One retry loop's place in its [`ExponentialBackoff`].
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: ExponentialBackoff,
    /// Failures since the last success (the exponent).
    failures: u32,
}

impl Backoff {
    /// How long to wait after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ExponentialBackoff { min, max, jitter } = self.policy;
        let ceiling = min
            .checked_mul(1u32.checked_shl(self.failures).unwrap_or(u32::MAX))
            .unwrap_or(max)
            .min(max);
        self.failures = self.failures.saturating_add(1);
        let shortened = jitter * rand::thread_rng().gen_range(0.0..=1.0);
        ceiling.mul_f64(1.0 - shortened)
    }

    /// After a success: the next failure waits about `min` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Whether a retry loop's failure is news: not while the dependency has never answered and the
/// loop is still within its startup grace.
#[derive(Clone, Debug)]
pub struct StartupGrace {
    until: Instant,
    answered: bool,
}

impl StartupGrace {
    /// A grace of `grace` from now.
    pub fn new(grace: Duration) -> Self {
        Self {
            until: Instant::now() + grace,
            answered: false,
        }
    }

    /// The dependency answered: from now on every failure is news.
    pub fn answered(&mut self) {
        self.answered = true;
    }

    /// Whether a failure to reach the dependency should be logged quietly.
    pub fn is_quiet(&self) -> bool {
        !self.answered && Instant::now() < self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_are_quiet_only_before_the_first_answer_and_within_the_grace() {
        let grace = StartupGrace::new(Duration::from_secs(30));
        assert!(grace.is_quiet());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(grace.is_quiet());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!grace.is_quiet(), "still unreachable after the grace");

        let mut grace = StartupGrace::new(Duration::from_secs(30));
        grace.answered();
        assert!(!grace.is_quiet(), "it had answered: a failure is news");
    }

    fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn waits_double_up_to_the_maximum_and_reset_after_a_success() {
        let mut backoff = ExponentialBackoff::new(millis(100), millis(1_000), 0.0).start();
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1_000, 1_000].map(millis).to_vec()
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), millis(100));
    }

    #[test]
    fn jitter_only_shortens_a_wait_and_spreads_them() {
        let policy = ExponentialBackoff::new(millis(1_000), millis(1_000), 0.5);
        let waits: Vec<Duration> = (0..200).map(|_| policy.start().next_delay()).collect();
        assert!(
            waits
                .iter()
                .all(|wait| (millis(500)..=millis(1_000)).contains(wait)),
            "{waits:?}"
        );
        let first = waits[0];
        assert!(
            waits.iter().any(|wait| *wait != first),
            "every replica would retry at the same instant"
        );
    }

    #[test]
    fn thousands_of_failures_neither_overflow_nor_exceed_the_maximum() {
        let mut backoff =
            ExponentialBackoff::new(millis(250), Duration::from_secs(60), 1.0).start();
        for _ in 0..10_000 {
            assert!(backoff.next_delay() <= Duration::from_secs(60));
        }
    }

    #[test]
    fn nonsense_settings_are_made_safe() {
        let mut backoff = ExponentialBackoff::new(millis(500), millis(100), f64::NAN).start();
        assert_eq!(backoff.next_delay(), millis(500));
        assert_eq!(backoff.next_delay(), millis(500));
        let mut backoff = ExponentialBackoff::new(millis(100), millis(100), 7.0).start();
        assert!(backoff.next_delay() <= millis(100));
    }
}
