//! The service core: every operation of CONTRACT §4 as a method on [`Usage`], taking validated
//! domain types. A user's context (plan, roles, delegations) is cached per replica and evicted
//! at once on every replica when it changes, through the invalidation event.

use std::{sync::Arc, time::Duration};

use quick_cache::sync::Cache;
use tokio::time::Instant;
use tollgate_shared::{
    engine::{Engine, Heard},
    shutdown::Shutdown,
};

use crate::{
    catalogue::{Catalogue, Plan},
    domain::{Role, UserId},
    error::UsageError,
    ledger::Ledger,
    limits::Limiter,
    metrics::UsageMetrics,
    store::{DelegationRow, Store},
};

/// Channel on which replicas announce that a user's context changed.
pub const INVALIDATE_CHANNEL: &str = "usage:invalidate";
/// Longest a cached context is trusted if an invalidation is missed (Redis down).
const CONTEXT_TTL: Duration = Duration::from_secs(10);

/// What decisions about a user depend on.
#[derive(Clone, Debug)]
pub struct UserContext {
    pub plan: Plan,
    /// The roles the user holds (none: no role permission at all).
    pub roles: Vec<Role>,
    pub delegations: Vec<DelegationRow>,
}

#[derive(Debug)]
pub struct Usage {
    pub(crate) store: Store,
    pub(crate) catalogue: Catalogue,
    pub(crate) limiter: Limiter,
    pub(crate) ledger: Ledger,
    pub(crate) engine: Engine,
    pub(crate) metrics: UsageMetrics,
    contexts: Cache<UserId, (Arc<UserContext>, Instant)>,
}

impl Usage {
    pub fn new(
        store: Store,
        catalogue: Catalogue,
        limiter: Limiter,
        ledger: Ledger,
        engine: Engine,
        metrics: UsageMetrics,
    ) -> Self {
        Self {
            store,
            catalogue,
            limiter,
            ledger,
            engine,
            metrics,
            contexts: Cache::new(100_000),
        }
    }

    /// Now, Unix ms, on the clock every replica agrees on (see [`crate::clock`]).
    pub fn now_ms(&self) -> i64 {
        self.limiter.clock().now_ms()
    }

    /// Whether the limiter is serving from its local fallback because Redis failed.
    pub fn limiter_degraded(&self) -> bool {
        self.limiter.redis_degraded()
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The user's context, from the cache when fresh.
    pub async fn context(&self, user: UserId) -> Result<Arc<UserContext>, UsageError> {
        if let Some((context, at)) = self.contexts.get(&user)
            && at.elapsed() < CONTEXT_TTL
        {
            return Ok(context);
        }
        let now = self.now_ms();
        let subscription = self.subscription(user).await?;
        let plan = self
            .catalogue
            .get(&subscription.plan)
            .cloned()
            .unwrap_or_else(|| self.catalogue.default_plan().clone());
        let roles = self.roles(user).await?;
        let delegations = self.store.live_delegations(user, now).await?;
        let context = Arc::new(UserContext {
            plan,
            roles,
            delegations,
        });
        self.contexts
            .insert(user, (Arc::clone(&context), Instant::now()));
        Ok(context)
    }

    /// The roles a user holds, granting the default role if this is the first time
    /// usage-service sees the user.
    pub(crate) async fn roles(&self, user: UserId) -> Result<Vec<Role>, UsageError> {
        if let Some(roles) = self.store.roles(user).await? {
            return Ok(roles);
        }
        self.store
            .first_sight(user, Role::DEFAULT, self.now_ms())
            .await?;
        // This call's grant, or that of another replica which saw the user at the same moment.
        Ok(self.store.roles(user).await?.unwrap_or_default())
    }

    /// Forgets a user's cached context here and on every other replica.
    pub(crate) async fn invalidate(&self, user: UserId) {
        self.contexts.remove(&user);
        self.engine
            .publish(INVALIDATE_CHANNEL, user.to_string())
            .await;
    }

    /// Applies other replicas' invalidations until shutdown.
    pub(crate) fn spawn_invalidation_listener(
        self: &Arc<Self>,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        self.engine.spawn_listener(shutdown, move |heard| {
            match heard {
                Heard::Message(message) if message.channel == INVALIDATE_CHANNEL => {
                    if let Ok(user) = UserId::parse(&message.payload) {
                        this.contexts.remove(&user);
                    }
                }
                Heard::Message(_) => {}
                Heard::Lagged(_) => this.contexts.clear(),
            }
            std::future::ready(())
        })
    }
}
