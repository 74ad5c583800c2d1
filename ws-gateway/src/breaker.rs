//! A circuit breaker in front of auth-service's `ValidateToken`.
//!
//! - **closed**: calls go through; `failure_threshold` consecutive failures open it.
//! - **open**: calls are refused at once (the caller falls back) until `cool_down` has passed.
//! - **half-open**: one probe call goes through; its success closes the breaker, its failure
//!   opens it for another cool-down. Other callers are refused while the probe is in flight.
//!
//! A call is a [`Permit`]: it records its outcome with [`Permit::success`] or
//! [`Permit::failure`], and a permit dropped without either (a cancelled future) counts as a
//! failure, so a lost probe can never wedge the breaker half-open. The state is published as
//! a gauge (0 closed, 1 open, 2 half-open). The lock is a plain mutex held for a few
//! instructions, never across an `.await`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    failure_threshold: u32,
    cool_down: Duration,
    gauge: Gauge,
}

/// Cloning shares the breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    inner: Arc<Inner>,
}

impl Breaker {
    pub fn new(failure_threshold: u32, cool_down: Duration, gauge: Gauge) -> Self {
        gauge.set(BreakerState::Closed.gauge_value());
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::Closed { failures: 0 }),
                failure_threshold: failure_threshold.max(1),
                cool_down,
                gauge,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// A permit to make one call, or `None` while the breaker is open (or a probe is out).
    pub fn try_call(&self) -> Option<Permit> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => {}
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                self.inner.gauge.set(BreakerState::HalfOpen.gauge_value());
            }
            State::Open { .. } | State::HalfOpen => return None,
        }
        Some(Permit {
            breaker: self.clone(),
            settled: false,
        })
    }

    fn settle(&self, success: bool) {
        let mut state = self.lock();
        let next = match (&*state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.inner.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            // A stale failure from before the breaker opened does not extend the cool-down.
            (State::Open { until }, false) => State::Open { until: *until },
            (State::Closed { .. } | State::HalfOpen, false) => State::Open {
                until: Instant::now() + self.inner.cool_down,
            },
        };
        let changed = std::mem::discriminant(&*state) != std::mem::discriminant(&next);
        *state = next;
        if changed {
            let now = match *state {
                State::Closed { .. } => BreakerState::Closed,
                State::Open { .. } => BreakerState::Open,
                State::HalfOpen => BreakerState::HalfOpen,
            };
            self.inner.gauge.set(now.gauge_value());
            tracing::warn!(state = ?now, "auth-service circuit breaker changed state");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// One call through the breaker; report how it went.
#[derive(Debug)]
#[must_use = "a permit counts as a failure unless settled"]
pub struct Permit {
    breaker: Breaker,
    settled: bool,
}

impl Permit {
    /// The dependency answered (even with a refusal: a refusal is an answer).
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.settle(true);
    }

    /// The dependency did not answer in time, or the transport failed.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.settle(false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(3, Duration::from_secs(5), Gauge::default())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recloses_after_a_good_probe() {
        let breaker = breaker();
        for _ in 0..2 {
            breaker.try_call().unwrap().failure();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        // A success in between resets the count.
        breaker.try_call().unwrap().success();
        for _ in 0..3 {
            breaker.try_call().unwrap().failure();
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_call().is_none());

        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = breaker.try_call().expect("a probe after the cool-down");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.try_call().is_none(), "one probe at a time");
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_or_lost_probe_reopens_it() {
        let breaker = breaker();
        for _ in 0..3 {
            breaker.try_call().unwrap().failure();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        breaker.try_call().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(breaker.try_call().unwrap());
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_call().is_none());
    }

    #[test]
    fn the_gauge_follows_the_state() {
        let gauge = Gauge::default();
        let breaker = Breaker::new(1, Duration::from_secs(60), gauge.clone());
        assert_eq!(gauge.get(), 0);
        breaker.try_call().unwrap().failure();
        assert_eq!(gauge.get(), 1);
    }
}
