//! A circuit breaker in front of auth-service's `ValidateToken`, built on the shared
//! [`ProbeGate`] ("skip for a while, then let one probe through").
//!
//! - **closed**: calls go through; `failure_threshold` consecutive failures open it.
//! - **open**: calls are refused at once (the caller falls back) until `cool_down` has passed.
//! - **half-open**: one probe call goes through; its success closes the breaker, its failure
//!   opens it for another cool-down. Other callers are refused while the probe is in flight,
//!   for one cool-down at most (a probe that hangs longer lets another one through).
//!
//! A call is a [`Permit`]: it records its outcome with [`Permit::success`] or
//! [`Permit::failure`]. Only an outcome says anything about auth-service: a permit dropped
//! without one (its caller went away: a client that abandoned its upgrade request) counts as
//! nothing, so no client can open the breaker by giving up on requests. A dropped probe gives
//! its slot back, so the next caller probes at once and the breaker never stays half-open.
//! The state is published as a gauge (0 closed, 1 open, 2 half-open). The lock is a plain
//! mutex held for a few instructions, never across an `.await`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::metrics::gauge::Gauge;
use tollgate_shared::probe_gate::{Claim, ProbeGate};

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
    Open,
    HalfOpen,
}

impl State {
    fn public(&self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open => BreakerState::Open,
            Self::HalfOpen => BreakerState::HalfOpen,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Shut for a cool-down whenever the breaker opens; claimed by each probe.
    gate: ProbeGate,
    failure_threshold: u32,
    gauge: Gauge,
}

/// Cloning shares the breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    inner: Arc<Inner>,
}

/// What a permit was for.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A call while the breaker is closed.
    Call,
    /// The probe of a half-open breaker.
    Probe(Claim),
}

impl Breaker {
    pub fn new(failure_threshold: u32, cool_down: Duration, gauge: Gauge) -> Self {
        gauge.set(BreakerState::Closed.gauge_value());
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::Closed { failures: 0 }),
                gate: ProbeGate::new(cool_down),
                failure_threshold: failure_threshold.max(1),
                gauge,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().public()
    }

    /// A permit to make one call, or `None` while the breaker is open (or a probe is out).
    pub fn try_call(&self) -> Option<Permit> {
        let mut state = self.lock();
        let kind = match *state {
            State::Closed { .. } => Kind::Call,
            State::Open | State::HalfOpen => {
                let claim = self.inner.gate.try_claim()?;
                let _ = self.set(&mut state, State::HalfOpen);
                Kind::Probe(claim)
            }
        };
        Some(Permit {
            breaker: self.clone(),
            kind,
            settled: false,
        })
    }

    fn settle(&self, kind: Kind, success: bool) {
        let mut state = self.lock();
        let next = match (&*state, kind, success) {
            (_, _, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, _, false)
                if failures + 1 < self.inner.failure_threshold =>
            {
                State::Closed {
                    failures: failures + 1,
                }
            }
            (State::Closed { .. }, _, false) | (State::HalfOpen, Kind::Probe(_), false) => {
                self.inner.gate.hold();
                State::Open
            }
            // A late failure of a call made before the breaker opened (or of a probe that hung
            // while another one decided) does not extend the cool-down.
            (State::HalfOpen, Kind::Call, false) | (State::Open, _, false) => return,
        };
        if let Some(now) = self.set(&mut state, next) {
            tracing::warn!(state = ?now, "auth-service circuit breaker changed state");
        }
    }

    /// A permit dropped without an outcome.
    fn abandon(&self, kind: Kind) {
        let Kind::Probe(claim) = kind else { return };
        let mut state = self.lock();
        self.inner.gate.release(claim);
        if matches!(*state, State::HalfOpen) {
            let _ = self.set(&mut state, State::Open);
        }
    }

    /// Moves to `next`; the new state if that is a change.
    fn set(&self, state: &mut State, next: State) -> Option<BreakerState> {
        let (before, after) = (state.public(), next.public());
        *state = next;
        (before != after).then(|| {
            self.inner.gauge.set(after.gauge_value());
            after
        })
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
#[must_use = "a permit counts for nothing unless settled"]
pub struct Permit {
    breaker: Breaker,
    kind: Kind,
    settled: bool,
}

impl Permit {
    /// The dependency answered (even with a refusal: a refusal is an answer).
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.settle(self.kind, true);
    }

    /// The dependency did not answer in time, or the transport failed.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.settle(self.kind, false);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.abandon(self.kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_DOWN: Duration = Duration::from_secs(5);

    fn breaker() -> Breaker {
        Breaker::new(3, COOL_DOWN, Gauge::default())
    }

    fn open(breaker: &Breaker) {
        for _ in 0..3 {
            breaker.try_call().unwrap().failure();
        }
        assert_eq!(breaker.state(), BreakerState::Open);
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
        open(&breaker);
        assert!(breaker.try_call().is_none());

        tokio::time::advance(COOL_DOWN).await;
        let probe = breaker.try_call().expect("a probe after the cool-down");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.try_call().is_none(), "one probe at a time");
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_it_for_another_cool_down() {
        let breaker = breaker();
        open(&breaker);
        tokio::time::advance(COOL_DOWN).await;
        breaker.try_call().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(COOL_DOWN - Duration::from_millis(1)).await;
        assert!(breaker.try_call().is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(breaker.try_call().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_calls_count_for_nothing() {
        let breaker = breaker();
        for _ in 0..100 {
            drop(breaker.try_call().unwrap());
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        // Nor do they reset a run of real failures.
        breaker.try_call().unwrap().failure();
        breaker.try_call().unwrap().failure();
        drop(breaker.try_call().unwrap());
        breaker.try_call().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_gives_its_slot_to_the_next_caller() {
        let breaker = breaker();
        open(&breaker);
        tokio::time::advance(COOL_DOWN).await;
        drop(breaker.try_call().expect("a probe"));
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "not counted either way"
        );
        let probe = breaker.try_call().expect("the next caller probes at once");
        probe.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_probe_holds_the_breaker_for_one_cool_down_at_most() {
        let breaker = breaker();
        open(&breaker);
        tokio::time::advance(COOL_DOWN).await;
        let hung = breaker.try_call().expect("a probe");
        tokio::time::advance(COOL_DOWN).await;
        let second = breaker.try_call().expect("another probe");
        second.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        // The first one's late failure is one failure like any other now.
        hung.failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_failure_does_not_extend_the_cool_down() {
        let breaker = breaker();
        let late = breaker.try_call().unwrap();
        open(&breaker);
        tokio::time::advance(COOL_DOWN - Duration::from_secs(1)).await;
        late.failure();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.try_call().is_some());
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
