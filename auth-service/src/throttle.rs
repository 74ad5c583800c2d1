//! Throttling of the credential endpoints, per client address (`crate::http` and `crate::grpc`
//! resolve it through `TRUSTED_PROXIES`).
//!
//! - Login and register attempts per address, across accounts (credential stuffing).
//! - Failed logins per account *and* address: after `AUTH_LOGIN_MAX_FAILURES` of them, each
//!   further failure makes that address wait before its next attempt on that account, twice as
//!   long each time up to a cap. Nobody else is affected, so a stranger failing on purpose can
//!   never lock the owner out; it only slows the stranger down. A success clears the count.
//! - Refresh and client-credentials requests per address.
//!
//! Counts live on the engine (Redis when set, so replicas share them). Keys hold a hash of the
//! normalised email and of the address, never either in the clear. IPv6 addresses count by
//! their /64, the block one subscriber gets. Unknown accounts are throttled like known ones, so
//! a refusal reveals nothing.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use sha2::{Digest, Sha256};

use tollgate_shared::engine::Engine;

use crate::{domain::Email, error::AuthError};

#[derive(Clone, Debug)]
pub struct ThrottleSettings {
    /// Failures of one account from one address before attempts from there must wait.
    pub max_failures: u64,
    /// How long those failures are counted.
    pub failure_window: Duration,
    /// The first wait; it doubles with each further failure.
    pub failure_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    pub max_per_address: u64,
    pub address_window: Duration,
    /// Refresh and client-credentials requests per address per `token_window`.
    pub token_max_per_address: u64,
    pub token_window: Duration,
}

/// The token endpoints throttled per address, each counted on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenEndpoint {
    Refresh,
    ClientCredentials,
}

#[derive(Clone, Debug)]
pub struct Throttle {
    engine: Engine,
    settings: ThrottleSettings,
}

impl Throttle {
    pub fn new(engine: Engine, settings: ThrottleSettings) -> Self {
        Self { engine, settings }
    }

    /// Counts a login or register attempt from `address`; refuses it past the limit.
    pub async fn attempt_from(&self, address: Option<IpAddr>) -> Result<(), AuthError> {
        let Some(address) = address else {
            return Ok(());
        };
        let key = format!("throttle:addr:{}", bucket(address));
        self.limit(
            &key,
            self.settings.max_per_address,
            self.settings.address_window,
        )
        .await
    }

    /// Counts a refresh or client-credentials request from `address`; refuses it past the
    /// limit.
    pub async fn token_request_from(
        &self,
        address: Option<IpAddr>,
        endpoint: TokenEndpoint,
    ) -> Result<(), AuthError> {
        let Some(address) = address else {
            return Ok(());
        };
        let kind = match endpoint {
            TokenEndpoint::Refresh => "refresh",
            TokenEndpoint::ClientCredentials => "client",
        };
        let key = format!("throttle:{kind}:{}", bucket(address));
        self.limit(
            &key,
            self.settings.token_max_per_address,
            self.settings.token_window,
        )
        .await
    }

    async fn limit(&self, key: &str, max: u64, window: Duration) -> Result<(), AuthError> {
        let count = self.engine.hit(key, window).await;
        if count.value > max {
            return Err(AuthError::Throttled {
                retry_after: count.resets_in,
            });
        }
        Ok(())
    }

    /// Refuses an attempt on `email` from `address` while that pair must wait.
    pub async fn check_account(
        &self,
        email: &Email,
        address: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        let wait = self.engine.peek(&pair_key("wait", email, address)).await;
        if wait.value > 0 && !wait.resets_in.is_zero() {
            return Err(AuthError::Throttled {
                retry_after: wait.resets_in,
            });
        }
        Ok(())
    }

    /// Counts a failed login on `email` from `address`, and makes that pair wait once it has
    /// failed too often.
    pub async fn record_failure(&self, email: &Email, address: Option<IpAddr>) {
        let failures = self
            .engine
            .hit(
                &pair_key("fail", email, address),
                self.settings.failure_window,
            )
            .await
            .value;
        if let Some(delay) = self.delay_after(failures) {
            // A fresh key (the previous wait is over, or this attempt would have been
            // refused), so its window is exactly the delay.
            self.engine
                .hit(&pair_key("wait", email, address), delay)
                .await;
        }
    }

    /// A successful login clears that pair's count.
    pub async fn clear(&self, email: &Email, address: Option<IpAddr>) {
        self.engine.reset(&pair_key("fail", email, address)).await;
        self.engine.reset(&pair_key("wait", email, address)).await;
    }

    /// The wait after the `failures`-th failure: none within the allowance, then the first
    /// delay doubled with each further failure, capped.
    fn delay_after(&self, failures: u64) -> Option<Duration> {
        let beyond = failures.checked_sub(self.settings.max_failures)?;
        let factor = 2u32.saturating_pow(beyond.min(32) as u32);
        Some(
            self.settings
                .failure_delay
                .saturating_mul(factor)
                .min(self.settings.max_delay),
        )
    }
}

/// The address a count is kept for: an IPv4 address, or the /64 of an IPv6 one.
fn bucket(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

fn pair_key(kind: &str, email: &Email, address: Option<IpAddr>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(email.as_str().as_bytes());
    hasher.update([0]);
    match address {
        Some(address) => hasher.update(bucket(address).to_string().as_bytes()),
        None => hasher.update(b"unknown"),
    }
    format!("throttle:{kind}:{}", hex::encode(&hasher.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max_failures: u64) -> Throttle {
        Throttle::new(
            Engine::local(),
            ThrottleSettings {
                max_failures,
                failure_window: Duration::from_secs(900),
                failure_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(60),
                max_per_address: 100,
                address_window: Duration::from_secs(60),
                token_max_per_address: 2,
                token_window: Duration::from_secs(60),
            },
        )
    }

    #[test]
    fn the_wait_doubles_after_the_allowance_up_to_the_cap() {
        let throttle = throttle(3);
        let delays: Vec<_> = (1..=10).map(|n| throttle.delay_after(n)).collect();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            delays,
            [
                None,
                None,
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(32),
                secs(60),
                secs(60)
            ]
        );
        assert_eq!(throttle.delay_after(u64::MAX), secs(60));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_ipv4_ones_alone() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        assert_ne!(bucket(a), bucket(other));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(bucket(v4), v4);
        assert_eq!(bucket("::ffff:192.0.2.1".parse().unwrap()), v4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pair_waits_after_its_failures_while_other_addresses_do_not() {
        let throttle = throttle(2);
        let email = Email::parse("owner@example.com").unwrap();
        let attacker = Some("198.51.100.1".parse().unwrap());
        let owner = Some("203.0.113.5".parse().unwrap());
        for _ in 0..2 {
            throttle.check_account(&email, attacker).await.unwrap();
            throttle.record_failure(&email, attacker).await;
        }
        let Err(AuthError::Throttled { retry_after }) =
            throttle.check_account(&email, attacker).await
        else {
            panic!("the attacker's address should wait");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        throttle.check_account(&email, owner).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        throttle.check_account(&email, attacker).await.unwrap();
        throttle.record_failure(&email, attacker).await;
        let Err(AuthError::Throttled { retry_after }) =
            throttle.check_account(&email, attacker).await
        else {
            panic!("the attacker's address should wait longer");
        };
        assert_eq!(retry_after, Duration::from_secs(2));
        throttle.clear(&email, attacker).await;
        throttle.check_account(&email, attacker).await.unwrap();
    }

    #[tokio::test]
    async fn token_endpoints_count_per_address_and_endpoint() {
        let throttle = throttle(2);
        let one = Some("198.51.100.1".parse().unwrap());
        let two = Some("198.51.100.2".parse().unwrap());
        for _ in 0..2 {
            throttle
                .token_request_from(one, TokenEndpoint::Refresh)
                .await
                .unwrap();
        }
        assert!(matches!(
            throttle
                .token_request_from(one, TokenEndpoint::Refresh)
                .await,
            Err(AuthError::Throttled { .. })
        ));
        throttle
            .token_request_from(two, TokenEndpoint::Refresh)
            .await
            .unwrap();
        throttle
            .token_request_from(one, TokenEndpoint::ClientCredentials)
            .await
            .unwrap();
    }
}
