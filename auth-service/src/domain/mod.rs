//! Validated domain types. Handlers only ever see these, so an invalid email, a weak password
//! or a malformed refresh token cannot reach the storage or token code.

mod email;
mod password;
mod refresh_token;

pub use email::Email;
pub use password::Password;
pub use refresh_token::{RefreshToken, RefreshTokenError, RefreshTokenHash};

/// Why user input was refused; the message is safe to show the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub &'static str);
