//! An authenticated user admitted to connect: the lease that admits it, taken the same way
//! whether the token came with the upgrade request ([`crate::handshake`]) or in-band
//! ([`crate::connection`]).

use std::sync::Arc;

use crate::{error::Refusal, limits::Lease, state::Shared, usage::Profile, validation::Identity};

/// An authenticated user, admitted to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub identity: Identity,
    pub profile: Profile,
    /// Whether usage-service granted a lease (false: admitted under the emergency limit
    /// while usage-service was unreachable; the connection keeps asking).
    pub lease_held: bool,
}

/// Takes the connection's lease, which also tells the user's plan and roles.
pub async fn open_session(
    shared: &Shared,
    identity: Identity,
    connection_id: &Arc<str>,
) -> Result<Session, Refusal> {
    let user = identity.user_id;
    let lease = shared
        .limits
        .lease(user, connection_id, shared.config.lease_ttl)
        .await;
    let (lease_held, profile) = match lease {
        Lease::Granted(profile) => (true, profile),
        Lease::Denied { .. } => return Err(Refusal::TooManyConnections),
        Lease::Unavailable
            if (shared.hub.connections_of(user) as u64) < shared.limits.emergency_limit() =>
        {
            tracing::warn!("usage-service unreachable; admitting under the emergency limit");
            (false, Profile::unknown())
        }
        Lease::Unavailable => return Err(Refusal::Unavailable),
    };
    let span = tracing::Span::current();
    span.record("user_id", tracing::field::display(user));
    span.record("session_id", tracing::field::display(identity.session_id));
    Ok(Session {
        identity,
        profile,
        lease_held,
    })
}
