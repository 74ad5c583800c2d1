//! Connection leases on the limiter: a slot per connection among the user's plan limit,
//! shared by every gateway node through Redis (or this process's store without it).

use std::time::Duration;

use uuid::Uuid;

use super::{LimitError, Limiter, Route, keys, redis_store};

impl Limiter {
    /// Connection leases: grants `connection_id` a slot among the user's at most `limit` live
    /// leases, each expiring `ttl` after its last acquire (re-acquiring the same id renews it and
    /// never counts twice). Returns (granted, active_after).
    ///
    /// A renewal is refused, and the lease dropped, when `limit` older leases are live (the
    /// limit was lowered): the newest leases beyond a limit are the ones refused. A limit of 0
    /// grants nothing; leases expire on the store's clock (Redis `TIME`).
    pub async fn acquire_lease(
        &self,
        user_id: Uuid,
        connection_id: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<(bool, u32), LimitError> {
        let answers = self
            .acquire_leases(&[(user_id, connection_id, limit, ttl)])
            .await?;
        Ok(answers[0])
    }

    /// [`Self::acquire_lease`] for each `(user, connection id, limit, ttl)`, in order, in one
    /// round trip to Redis.
    pub async fn acquire_leases(
        &self,
        leases: &[(Uuid, &str, u32, Duration)],
    ) -> Result<Vec<(bool, u32)>, LimitError> {
        let keyed: Vec<(redis_store::LeaseKeys, &str, u32, u64)> = leases
            .iter()
            .map(|&(user, id, limit, ttl)| {
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                (self.lease_keys(user), id, limit, ttl_ms)
            })
            .collect();
        let routed = self
            .on_redis(async |conn| redis_store::acquire_leases(conn, &keyed).await)
            .await;
        match routed {
            Route::Redis(answers) => Ok(answers),
            Route::Local => Ok(leases
                .iter()
                .map(|&(user, id, limit, ttl)| self.inner.local.acquire_lease(user, id, limit, ttl))
                .collect()),
            Route::Unavailable => Err(LimitError::Unavailable),
        }
    }

    /// Gives up each `(user, connection id)` lease, freeing its slot at once.
    pub async fn release_leases(&self, leases: &[(Uuid, &str)]) -> Result<(), LimitError> {
        let keyed: Vec<(redis_store::LeaseKeys, &str)> = leases
            .iter()
            .map(|&(user, id)| (self.lease_keys(user), id))
            .collect();
        let routed = self
            .on_redis(async |conn| redis_store::release_leases(conn, &keyed).await)
            .await;
        match routed {
            Route::Redis(()) => Ok(()),
            Route::Local => {
                for &(user, id) in leases {
                    self.inner.local.release_lease(user, id);
                }
                Ok(())
            }
            Route::Unavailable => Err(LimitError::Unavailable),
        }
    }

    fn lease_keys(&self, user: Uuid) -> redis_store::LeaseKeys {
        redis_store::LeaseKeys {
            expiries: self.inner.engine.key(&keys::leases(user)),
            order: self.inner.engine.key(&keys::lease_order(user)),
        }
    }
}
