//! Login throttling: attempts per client address, and failures per account.
//!
//! Account keys are a hash of the normalised email, so Redis never holds addresses. An
//! account that reaches its failure limit is refused before its password is checked, and the
//! refusal looks the same whether or not the account exists.

use std::{net::IpAddr, time::Duration};

use sha2::{Digest, Sha256};

use tollgate_shared::engine::Engine;

use crate::{domain::Email, error::AuthError};

#[derive(Clone, Debug)]
pub struct ThrottleSettings {
    pub max_failures: u64,
    pub failure_window: Duration,
    pub max_per_address: u64,
    pub address_window: Duration,
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

    /// Counts an attempt from `address`; refuses it past the limit.
    pub async fn attempt_from(&self, address: Option<IpAddr>) -> Result<(), AuthError> {
        let Some(address) = address else {
            return Ok(());
        };
        let count = self
            .engine
            .hit(
                &format!("throttle:addr:{address}"),
                self.settings.address_window,
            )
            .await;
        if count.value > self.settings.max_per_address {
            return Err(AuthError::Throttled {
                retry_after: count.resets_in,
            });
        }
        Ok(())
    }

    /// Refuses an account that has failed too often recently.
    pub async fn check_account(&self, email: &Email) -> Result<(), AuthError> {
        let count = self.engine.peek(&account_key(email)).await;
        if count.value >= self.settings.max_failures {
            return Err(AuthError::Throttled {
                retry_after: count.resets_in,
            });
        }
        Ok(())
    }

    pub async fn record_failure(&self, email: &Email) {
        self.engine
            .hit(&account_key(email), self.settings.failure_window)
            .await;
    }

    pub async fn clear(&self, email: &Email) {
        self.engine.reset(&account_key(email)).await;
    }
}

fn account_key(email: &Email) -> String {
    format!(
        "throttle:acct:{}",
        hex::encode(&Sha256::digest(email.as_str().as_bytes())[..16])
    )
}
