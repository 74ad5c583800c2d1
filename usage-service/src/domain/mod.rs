//! Validated domain types: handlers only see these, so an unknown meter, a malformed
//! idempotency key or a bad amount cannot reach the limiter, the ledger or the store.

mod action;
mod ids;

pub use action::{Action, Permission, Role, Tool};
pub use ids::{IdempotencyKey, Meter, PlanId, UserId};

/// Why input was refused; the message is safe to show the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl InvalidInput {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}
