//! Key names, without the deployment prefix, shared by both stores so a key means the same
//! thing in each. The braces are literal: the user id is a Redis Cluster hash tag, so all keys
//! one script touches live in one slot.

use uuid::Uuid;

/// A GCRA bucket: `usage:gcra:{user}:{meter}`.
pub(super) fn gcra(user: Uuid, meter: &str) -> String {
    format!("usage:gcra:{{{user}}}:{meter}")
}

/// A quota window's counter: `usage:quota:{user}:{meter}:{window_start_ms}`.
pub(super) fn quota(user: Uuid, meter: &str, window_start_ms: i64) -> String {
    format!("usage:quota:{{{user}}}:{meter}:{window_start_ms}")
}

/// An idempotency record: `usage:idem:{user}:{key}`.
pub(super) fn idempotency(user: Uuid, key: &str) -> String {
    format!("usage:idem:{{{user}}}:{key}")
}

/// A user's connection leases: `usage:leases:{user}`.
pub(super) fn leases(user: Uuid) -> String {
    format!("usage:leases:{{{user}}}")
}

/// The order in which a user's live leases were acquired: `usage:lease-order:{user}`.
pub(super) fn lease_order(user: Uuid) -> String {
    format!("usage:lease-order:{{{user}}}")
}
