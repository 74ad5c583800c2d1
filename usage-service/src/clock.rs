//! The wall clock usage-service decides by.
//!
//! Quota windows (a billing month, a UTC day) and ledger periods are chosen from "now", and two
//! replicas whose clocks disagree near a window boundary would count one user's usage into two
//! different windows, each with the full quota. So the replicas agree on one clock: Redis's.
//! Every limiter script reads Redis `TIME` and returns it; the clock keeps the offset between
//! Redis's time and this host's, and [`Clock::now_ms`] is the host's time corrected by it. The
//! scripts also refuse a quota window that does not contain Redis's now, so even the first call
//! after a jump is judged in the right window (the caller retries with the server's time).
//! Without Redis there is a single process and its own clock is the only one.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use tollgate_shared::time::unix_now_ms;

#[derive(Clone, Debug, Default)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// How far this host's clock is off (tests give a replica a wrong clock this way).
    host_skew_ms: i64,
    /// Shared clock minus host clock, as last observed.
    offset_ms: AtomicI64,
}

impl Clock {
    /// This host's clock, until a shared clock is observed.
    pub fn system() -> Self {
        Self::default()
    }

    /// A host clock that is `skew_ms` ahead (negative: behind) of the real time: what a replica
    /// with a badly set clock reads.
    pub fn skewed(skew_ms: i64) -> Self {
        Self {
            inner: Arc::new(Inner {
                host_skew_ms: skew_ms,
                offset_ms: AtomicI64::new(0),
            }),
        }
    }

    /// This host's own reading, uncorrected.
    pub fn host_ms(&self) -> i64 {
        unix_now_ms() + self.inner.host_skew_ms
    }

    /// Now, Unix ms, on the shared clock.
    pub fn now_ms(&self) -> i64 {
        self.host_ms() + self.inner.offset_ms.load(Ordering::Relaxed)
    }

    /// Records a reading of the shared clock taken between the host readings `sent_ms` and
    /// `received_ms`; it is assumed to be taken halfway, so the error is at most half the round
    /// trip.
    pub fn observe(&self, shared_ms: i64, sent_ms: i64, received_ms: i64) {
        let midpoint = sent_ms + (received_ms - sent_ms) / 2;
        self.inner
            .offset_ms
            .store(shared_ms - midpoint, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;

    #[test]
    fn a_skewed_host_clock_is_corrected_by_the_shared_clock() {
        let clock = Clock::skewed(40 * 24 * 3600 * 1000);
        let real = tollgate_shared::time::unix_now_ms();
        assert!(clock.now_ms() - real > 39 * 24 * 3600 * 1000);
        let sent = clock.host_ms();
        clock.observe(real, sent, sent + 2);
        assert!((clock.now_ms() - tollgate_shared::time::unix_now_ms()).abs() < 1_000);
    }
}
