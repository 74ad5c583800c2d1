//! Application-level keepalive: the `ping` message.
//!
//! A `ping` is answered by the gateway itself and never metered. Keepalive must not depend on
//! billing: while usage-service is down, a `ping` answered `dependency_unavailable` makes
//! clients believe the connection is dead, and they all reconnect at once. A user's
//! messages-per-minute limit is for real messages.
//!
//! Pings are limited per connection instead, locally, by a small token bucket: a burst of
//! [`PING_BURST`], then one every [`PING_EVERY`]. Beyond that a ping is answered
//! `rate_limited {retry_after_ms}` and counts as a rate violation like a refused message, so a
//! flood of pings ends with 4008 after `GATEWAY_MAX_RATE_VIOLATIONS` in a row.

use std::time::Duration;

use tokio::time::Instant;

/// Pings a connection may send at once.
pub const PING_BURST: f64 = 10.0;
/// How often the budget grows by one ping, up to the burst.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// One connection's ping budget.
#[derive(Debug)]
pub struct PingBudget {
    available: f64,
    updated: Instant,
}

impl Default for PingBudget {
    fn default() -> Self {
        Self {
            available: PING_BURST,
            updated: Instant::now(),
        }
    }
}

impl PingBudget {
    /// Spends one ping; `Err(retry_after)` when the budget is spent.
    pub fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let earned = now.duration_since(self.updated).as_secs_f64() / PING_EVERY.as_secs_f64();
        self.available = (self.available + earned).min(PING_BURST);
        self.updated = now;
        if self.available >= 1.0 {
            self.available -= 1.0;
            Ok(())
        } else {
            Err(PING_EVERY.mul_f64(1.0 - self.available))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_a_second() {
        let mut budget = PingBudget::default();
        for _ in 0..10 {
            assert_eq!(budget.take(), Ok(()));
        }
        assert_eq!(budget.take(), Err(PING_EVERY), "spent");
        tokio::time::advance(Duration::from_millis(400)).await;
        let retry_after = budget.take().unwrap_err();
        assert_eq!(retry_after.as_millis().div_ceil(10), 60, "{retry_after:?}");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(budget.take(), Ok(()));
        assert!(budget.take().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_earns_back_the_burst_and_no_more() {
        let mut budget = PingBudget::default();
        while budget.take().is_ok() {}
        tokio::time::advance(Duration::from_secs(3600)).await;
        let allowed = std::iter::from_fn(|| budget.take().ok()).take(100).count();
        assert_eq!(allowed, 10);
    }
}
