//! Hearing session revocations and acting on them within a second (CONTRACT §2): every open
//! connection of a revoked session closes with 4004, on every gateway node.
//!
//! Three sources of news, because no one of them covers every deployment and every order:
//!
//! - auth-service's `WatchRevocations` stream, always. It is the only way to hear auth-service
//!   when the two share no Redis (the embedded default runs each service as its own process).
//!   The watcher reconnects with backoff, asking for the revocations since the last one it
//!   saw, so a dropped stream or a lagging watcher (which auth-service cuts off with
//!   DATA_LOSS) misses nothing that auth-service still remembers.
//! - with Redis, the engine bus (`auth:revocations`), which reaches every node even while the
//!   watch stream is reconnecting.
//! - auth-service refusing a token in `ValidateToken` because its session is revoked, which
//!   may reach the gateway before either event.
//!
//! Each piece of news closes the session's connections on this node, whatever came before:
//! a session already on the list may still have connections open (the list was written by a
//! `ValidateToken` refusal, or a connection registered in between). The bounded
//! [`RevocationList`] of recently revoked sessions deduplicates only the log. That list is
//! also what validation consults first, and all it has while auth-service is unreachable in
//! `degraded` mode.
//!
//! A watcher that cannot reach auth-service yet at startup (the services start together, and
//! it needs a service token first) retries quietly until auth-service first answers or the
//! startup grace is over; from then on every failure is a warning.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use quick_cache::sync::Cache;
use tokio::task::JoinHandle;
use tollgate_proto::auth::v1::{WatchRevocationsRequest, auth_service_client::AuthServiceClient};
use tollgate_shared::{
    backoff::{ExponentialBackoff, STARTUP_GRACE, StartupGrace},
    engine::{Engine, Heard},
    events::{REVOCATIONS_CHANNEL, Revocation},
    grpc::TracedChannel,
    service_auth::ServiceAuthInterceptor,
    shutdown::Shutdown,
};
use uuid::Uuid;

use crate::{error::CloseCode, hub::Hub, metrics::GatewayMetrics};

/// Sessions remembered as revoked. Access tokens live minutes, so a few hundred thousand
/// recent revocations cover every token that could still be presented at any realistic rate.
const REMEMBERED: usize = 200_000;

/// How far back a reconnecting watcher asks, to allow for clock skew between replicas.
const REPLAY_SLACK_MS: i64 = 5_000;

/// Recently revoked session ids, bounded.
#[derive(Debug)]
pub struct RevocationList {
    sessions: Cache<Uuid, ()>,
}

impl Default for RevocationList {
    fn default() -> Self {
        Self {
            sessions: Cache::new(REMEMBERED),
        }
    }
}

impl RevocationList {
    pub fn is_revoked(&self, session: Uuid) -> bool {
        self.sessions.get(&session).is_some()
    }

    /// Records a revocation; true when it was not known yet.
    pub fn record(&self, session: Uuid) -> bool {
        if self.is_revoked(session) {
            return false;
        }
        self.sessions.insert(session, ());
        true
    }
}

/// Applies revocations to the list and the hub.
#[derive(Clone, Debug)]
pub struct Revocations {
    list: Arc<RevocationList>,
    hub: Arc<Hub>,
    metrics: GatewayMetrics,
}

impl Revocations {
    pub fn new(list: Arc<RevocationList>, hub: Arc<Hub>, metrics: GatewayMetrics) -> Self {
        Self { list, hub, metrics }
    }

    pub fn list(&self) -> &Arc<RevocationList> {
        &self.list
    }

    /// Records a revocation event and closes the session's connections on this node.
    pub fn apply(&self, revocation: &Revocation, source: &'static str) {
        self.revoke(
            revocation.user_id,
            revocation.session_id,
            source,
            &revocation.reason,
        );
    }

    /// auth-service refused a token of `session` because the session is revoked.
    pub fn refused(&self, user: Uuid, session: Uuid) {
        self.revoke(user, session, "validate", "session_revoked");
    }

    /// Every piece of news closes; only the first (or one that closed something) is logged.
    fn revoke(&self, user: Uuid, session: Uuid, source: &'static str, reason: &str) {
        self.metrics.revocation(source);
        let first = self.list.record(session);
        let closed = self
            .hub
            .close_session(user, session, CloseCode::SessionRevoked);
        if first || closed > 0 {
            tracing::info!(
                session_id = %session,
                user_id = %user,
                reason,
                source,
                closed,
                "session revoked"
            );
        }
    }

    /// Follows auth-service's `WatchRevocations` until shutdown, reconnecting with backoff.
    pub fn spawn_watcher(
        &self,
        channel: TracedChannel,
        interceptor: ServiceAuthInterceptor,
        shutdown: Shutdown,
    ) -> JoinHandle<()> {
        let this = self.clone();
        let client = AuthServiceClient::with_interceptor(channel, interceptor);
        tokio::spawn(async move {
            let mut since_ms = 0;
            let mut backoff =
                ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.5)
                    .start();
            let mut grace = StartupGrace::new(STARTUP_GRACE);
            loop {
                let mut client = client.clone();
                let request = WatchRevocationsRequest { since_ms };
                let opened = tokio::select! {
                    opened = client.watch_revocations(request) => opened,
                    () = shutdown.wait() => return,
                };
                match opened {
                    Ok(response) => {
                        grace.answered();
                        tracing::debug!(since_ms, "watching revocations");
                        this.metrics.revocation_watch_up.set(1);
                        let mut stream = response.into_inner();
                        loop {
                            let item = tokio::select! {
                                item = stream.next() => item,
                                () = shutdown.wait() => return,
                            };
                            match item {
                                Some(Ok(message)) => {
                                    backoff.reset();
                                    match parse(message) {
                                        Some(revocation) => {
                                            since_ms = since_ms
                                                .max(revocation.revoked_at_ms - REPLAY_SLACK_MS);
                                            this.apply(&revocation, "watch");
                                        }
                                        None => tracing::warn!("ignoring a malformed revocation"),
                                    }
                                }
                                Some(Err(status)) => {
                                    tracing::warn!(code = ?status.code(), message = status.message(), "revocation stream failed; reconnecting");
                                    break;
                                }
                                None => {
                                    tracing::info!("revocation stream ended; reconnecting");
                                    break;
                                }
                            }
                        }
                        this.metrics.revocation_watch_up.set(0);
                    }
                    // Services start together: auth-service may not listen yet, and the first
                    // service token may still be on its way.
                    Err(status)
                        if grace.is_quiet() && status.code() == tonic::Code::Unavailable =>
                    {
                        tracing::debug!(
                            "auth-service not reachable yet; watching revocations again"
                        );
                    }
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), "watching revocations failed; retrying");
                    }
                }
                if !shutdown.sleep(backoff.next_delay()).await {
                    return;
                }
            }
        })
    }

    /// Applies revocations from the engine bus (with Redis: from every auth-service replica)
    /// until shutdown.
    pub fn spawn_bus_listener(&self, engine: &Engine, shutdown: Shutdown) -> JoinHandle<()> {
        let this = self.clone();
        let malformed = self.metrics.bus_drops("malformed");
        engine.spawn_listener(shutdown, move |heard| {
            match heard {
                Heard::Message(message) if message.channel == REVOCATIONS_CHANNEL => {
                    match serde_json::from_str::<Revocation>(&message.payload) {
                        Ok(revocation) => this.apply(&revocation, "bus"),
                        Err(err) => {
                            malformed.inc();
                            tracing::warn!(error = %err, "ignoring a malformed revocation");
                        }
                    }
                }
                Heard::Message(_) => {}
                Heard::Lagged(missed) => {
                    tracing::warn!(
                        missed,
                        "revocation listener lagged; the watch stream covers"
                    )
                }
            }
            std::future::ready(())
        })
    }
}

fn parse(message: tollgate_proto::auth::v1::Revocation) -> Option<Revocation> {
    let tollgate_proto::auth::v1::Revocation {
        session_id,
        user_id,
        revoked_at_ms,
        reason,
    } = message;
    Some(Revocation {
        session_id: session_id.parse().ok()?,
        user_id: user_id.parse().ok()?,
        revoked_at_ms,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;

    use super::*;
    use crate::hub::{ConnectionHandle, Registration};

    /// Revocations over a hub holding one connection of one session.
    struct Fixture {
        revocations: Revocations,
        revocation: Revocation,
        closed: watch::Receiver<Option<CloseCode>>,
        _registration: Registration,
    }

    fn one_open_connection() -> Fixture {
        let metrics = GatewayMetrics::default();
        let hub = Hub::new(metrics.clone());
        let revocations = Revocations::new(Arc::default(), hub.clone(), metrics);
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (handle, mailbox) = ConnectionHandle::new("c1".into(), 4);
        let registration = hub.register(user, session, handle);
        let revocation = Revocation {
            session_id: session,
            user_id: user,
            revoked_at_ms: 1,
            reason: "logout".into(),
        };
        Fixture {
            revocations,
            revocation,
            closed: mailbox.close,
            _registration: registration,
        }
    }

    #[test]
    fn revocations_close_the_session_once_and_are_remembered() {
        let fixture = one_open_connection();
        let session = fixture.revocation.session_id;
        fixture.revocations.apply(&fixture.revocation, "watch");
        assert_eq!(*fixture.closed.borrow(), Some(CloseCode::SessionRevoked));
        assert!(fixture.revocations.list().is_revoked(session));
        assert!(!fixture.revocations.list().record(session), "deduplicated");
    }

    #[test]
    fn a_session_already_listed_still_has_its_connections_closed() {
        let fixture = one_open_connection();
        // A `ValidateToken` refusal for another token of the session was heard first.
        fixture
            .revocations
            .list()
            .record(fixture.revocation.session_id);
        fixture.revocations.apply(&fixture.revocation, "bus");
        assert_eq!(*fixture.closed.borrow(), Some(CloseCode::SessionRevoked));
    }
}
