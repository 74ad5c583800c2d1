//! Validated domain types: handlers only see these, so a malformed meter or tool name, a
//! malformed idempotency key or a bad amount cannot reach the limiter, the ledger or the store.

mod action;
mod ids;
mod names;

pub use action::{Action, Permission, Role};
pub use ids::{IdempotencyKey, PlanId, UserId};
pub use names::{Meter, ToolName};

/// Why input was refused; the message is safe to show the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl InvalidInput {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Echo at most a short, printable prefix of caller input in error messages.
fn printable(raw: &str) -> String {
    raw.chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}
