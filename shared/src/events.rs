//! Events that auth-service publishes for other services (on Redis, or in-process when there is
//! no Redis). Their JSON form and channel names are part of the wire contract between services.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Channel (after the deployment's `REDIS_PREFIX` and a colon) of session revocations.
pub const REVOCATIONS_CHANNEL: &str = "auth:revocations";

/// Channel of signing-key changes: listeners reload the JWKS.
pub const KEYS_CHANNEL: &str = "auth:keys";

/// A session was revoked: its tokens are invalid and its connections must close.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub revoked_at_ms: i64,
    /// Why: `logout`, `logout_all`, `refresh_token_reuse`.
    pub reason: String,
}

/// Bus messages on Redis carry the id of the node that published them, so a node can skip its
/// own echo: `<node id>|<payload>`.
pub fn seal(node: &str, payload: &str) -> String {
    format!("{node}|{payload}")
}

/// Splits a bus message into the publishing node's id and the payload.
pub fn open(message: &str) -> Option<(&str, &str)> {
    message.split_once('|')
}

#[cfg(test)]
mod tests {
    #[test]
    fn envelopes_round_trip_payloads_containing_the_separator() {
        let sealed = super::seal("node-1", r#"{"reason":"a|b"}"#);
        assert_eq!(
            super::open(&sealed),
            Some(("node-1", r#"{"reason":"a|b"}"#))
        );
        assert_eq!(super::open("no separator"), None);
    }
}
