//! The fast shared state of a service: windowed counters (login throttling) and a publish/subscribe bus
//! (revocations, key changes), on Redis when `REDIS_URL` is set and in-process otherwise.
//!
//! Redis is never a single point of failure: a counter that cannot reach Redis falls back to
//! this process's own counter, and every published event is also delivered to this process's
//! subscribers directly, so a replica always sees its own revocations at once. The subscriber
//! task reconnects on its own when Redis returns.
//!
//! Redis is one node, or a Redis Cluster (`redis+cluster://…`, `engine_redis.rs`). Every key
//! and channel that a script, transaction or subscription batch touches together carries one
//! hash tag, so the cluster keeps them on one shard. Broadcasts (`publish`) use classic
//! `PUBLISH`, which a cluster forwards to every node; per-user traffic uses `publish_to` and
//! dynamic, interest-based subscriptions (`engine_interest.rs`), sharded on a cluster.
//!
//! Whatever arrives from Redis is untrusted input: the relay (`engine_relay.rs`) drops and
//! counts messages over a size limit before any subscriber sees them.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{events, shutdown::Shutdown};
use deadpool_redis::Pool;
use redis::AsyncCommands;
use tokio::{sync::broadcast, time::Instant};
use uuid::Uuid;

const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

#[path = "engine_interest.rs"]
mod interest;
#[path = "engine_redis.rs"]
mod redis_conn;
#[path = "engine_relay.rs"]
mod relay;
#[path = "engine_subscriber.rs"]
mod subscriber;
#[path = "engine_topology.rs"]
pub(crate) mod topology;
pub use interest::{Held, Interest, InterestError, InterestStatus, MAX_CHANNEL_BYTES};
use redis_conn::Redis;
pub use redis_conn::{RedisConnection, SLOTS, cluster_seeds, slot, slot_groups};
pub use relay::{MAX_RELAYED_BYTES, RelayLimit};

/// A deployment prefix with a brace would become the cluster hash tag of every key, putting
/// them all on one shard (or none where the tag is left open), so it is refused.
#[derive(Debug, thiserror::Error)]
#[error("must not contain '{{' or '}}': keys carry their own cluster hash tags")]
struct PrefixError;

/// A message on one of the bus channels (channel names without the deployment prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusMessage {
    pub channel: String,
    pub payload: String,
}

/// What a bus listener hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    Message(BusMessage),
    /// The listener fell behind and this many messages were dropped before it read them.
    Lagged(u64),
}

/// A counter's value after a hit, and when its window ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub value: u64,
    pub resets_in: Duration,
}

#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    prefix: String,
    node: String,
    redis: Option<Redis>,
    counters: Mutex<HashMap<String, (u64, Instant)>>,
    bus: broadcast::Sender<BusMessage>,
}

impl Engine {
    /// The in-process engine.
    pub fn local() -> Self {
        Self::with_redis(None, "tollgate")
    }

    /// The engine a service's configuration asks for: Redis when `url` is set (failing with one
    /// line naming `REDIS_URL`), the in-process engine otherwise. `redis+cluster://h:p,h:p,…`
    /// selects a Redis Cluster.
    pub async fn from_url(url: Option<&str>, prefix: &str) -> anyhow::Result<Self> {
        match url {
            Some(url) => Self::redis(url, prefix).await.map_err(|err| {
                if err.is::<PrefixError>() {
                    anyhow::anyhow!("REDIS_PREFIX: {err}")
                } else {
                    anyhow::anyhow!("REDIS_URL: cannot connect to Redis: {err}")
                }
            }),
            None => Ok(Self::local()),
        }
    }

    /// A Redis-backed engine, on one node or (`redis+cluster://…`) a cluster; fails fast if
    /// Redis does not answer.
    pub async fn redis(url: &str, prefix: &str) -> anyhow::Result<Self> {
        if prefix.contains(['{', '}']) {
            return Err(PrefixError.into());
        }
        let redis = match redis_conn::cluster_seeds(url) {
            Some(seeds) => Redis::cluster(seeds?, REDIS_TIMEOUT).await?,
            None => Redis::single(url, REDIS_TIMEOUT).await?,
        };
        Ok(Self::with_redis(Some(redis), prefix))
    }

    fn with_redis(redis: Option<Redis>, prefix: &str) -> Self {
        let (bus, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                prefix: prefix.to_owned(),
                node: Uuid::new_v4().simple().to_string(),
                redis,
                counters: Mutex::new(HashMap::new()),
                bus,
            }),
        }
    }

    pub fn is_redis(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// This process's id on the bus: what [`crate::events::seal`] stamps on what it publishes,
    /// so that its own echo is ignored.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether the engine stands on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.redis, Some(Redis::Cluster { .. }))
    }

    /// The single node's Redis pool, for callers with atomic operations of their own (Lua
    /// scripts); `None` without Redis and on a cluster (use [`Engine::redis_multiplexed`]).
    pub fn redis_pool(&self) -> Option<&Pool> {
        match &self.inner.redis {
            Some(Redis::Single { pool, .. }) => Some(pool),
            _ => None,
        }
    }

    /// The shared multiplexed Redis connection (cheap to [`RedisConnection::try_clone`]), for
    /// hot paths where many concurrent callers each send one command: they are pipelined on
    /// one socket per node. It reconnects by itself after a failure. On a cluster, each
    /// command, script or pipeline must keep its keys in one slot (see [`slot_groups`]).
    pub fn redis_multiplexed(&self) -> Option<RedisConnection> {
        self.inner.redis.as_ref().map(Redis::shared)
    }

    /// `key` under this deployment's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.inner.prefix)
    }

    /// Counts one hit on `key` in a fixed window of `window` starting at its first hit.
    pub async fn hit(&self, key: &str, window: Duration) -> Count {
        if let Some(redis) = &self.inner.redis {
            let full = self.key(key);
            let window_ms = window.as_millis() as u64;
            let result = tokio::time::timeout(REDIS_TIMEOUT, async {
                let mut conn = redis.connection().await?;
                let (value, ttl): (u64, i64) = redis::pipe()
                    .atomic()
                    .incr(&full, 1u64)
                    .cmd("PEXPIRE")
                    .arg(&full)
                    .arg(window_ms)
                    .arg("NX")
                    .ignore()
                    .cmd("PTTL")
                    .arg(&full)
                    .query_async(&mut conn)
                    .await?;
                anyhow::Ok(Count {
                    value,
                    resets_in: Duration::from_millis(ttl.max(0) as u64),
                })
            })
            .await;
            match result {
                Ok(Ok(count)) => return count,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "redis counter failed; counting locally")
                }
                Err(_) => tracing::warn!("redis counter timed out; counting locally"),
            }
        }
        self.local_hit(key, window, 1)
    }

    /// The current value of `key` without counting a hit.
    pub async fn peek(&self, key: &str) -> Count {
        if let Some(redis) = &self.inner.redis {
            let full = self.key(key);
            let result = tokio::time::timeout(REDIS_TIMEOUT, async {
                let mut conn = redis.connection().await?;
                let (value, ttl): (Option<u64>, i64) = redis::pipe()
                    .get(&full)
                    .cmd("PTTL")
                    .arg(&full)
                    .query_async(&mut conn)
                    .await?;
                anyhow::Ok(Count {
                    value: value.unwrap_or(0),
                    resets_in: Duration::from_millis(ttl.max(0) as u64),
                })
            })
            .await;
            match result {
                Ok(Ok(count)) => return count,
                Ok(Err(err)) => tracing::warn!(error = %err, "redis read failed; reading locally"),
                Err(_) => tracing::warn!("redis read timed out; reading locally"),
            }
        }
        self.local_hit(key, Duration::ZERO, 0)
    }

    pub async fn reset(&self, key: &str) {
        if let Some(redis) = &self.inner.redis {
            let full = self.key(key);
            let result = tokio::time::timeout(REDIS_TIMEOUT, async {
                let mut conn = redis.connection().await?;
                let _: () = conn.del(&full).await?;
                anyhow::Ok(())
            })
            .await;
            if !matches!(result, Ok(Ok(()))) {
                tracing::warn!("redis reset failed");
            }
        }
        self.lock_counters().remove(key);
    }

    fn lock_counters(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        self.inner
            .counters
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn local_hit(&self, key: &str, window: Duration, amount: u64) -> Count {
        let now = Instant::now();
        let mut counters = self.lock_counters();
        if counters.len() > 100_000 {
            counters.retain(|_, (_, expires)| *expires > now);
        }
        let entry = counters.entry(key.to_owned()).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 += amount;
        Count {
            value: entry.0,
            resets_in: entry.1.saturating_duration_since(now),
        }
    }

    /// Delivers `payload` on `channel` to this process's subscribers and, with Redis, to every
    /// other process's relay: a broadcast (`PUBLISH`), which a cluster forwards to all of its
    /// nodes. For revocations and key changes that every process must hear.
    pub async fn publish(&self, channel: &str, payload: String) {
        self.publish_with("PUBLISH", channel, payload).await;
    }

    /// Delivers `payload` on `channel` to this process's subscribers and, with Redis, to the
    /// processes that asked for `channel` through an [`Interest`]: `SPUBLISH` on a cluster, to
    /// the one shard that owns the channel's slot, `PUBLISH` on a single node. Put a hash tag
    /// in `channel` (`user:{id}`) to keep it on the shard of the keys it belongs with.
    pub async fn publish_to(&self, channel: &str, payload: String) {
        let command = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        self.publish_with(command, channel, payload).await;
    }

    async fn publish_with(&self, command: &str, channel: &str, payload: String) {
        let _ = self.inner.bus.send(BusMessage {
            channel: channel.to_owned(),
            payload: payload.clone(),
        });
        if let Some(redis) = &self.inner.redis {
            let envelope = events::seal(&self.inner.node, &payload);
            let full = self.key(channel);
            let result = tokio::time::timeout(REDIS_TIMEOUT, async {
                let mut conn = redis.connection().await?;
                let _: i64 = redis::cmd(command)
                    .arg(&full)
                    .arg(envelope)
                    .query_async(&mut conn)
                    .await?;
                anyhow::Ok(())
            })
            .await;
            if !matches!(result, Ok(Ok(()))) {
                tracing::warn!(
                    channel,
                    "publishing to redis failed; other replicas learn from the database"
                );
            }
        }
    }

    /// Every bus message, from this process and (with Redis) from the others.
    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.inner.bus.subscribe()
    }

    /// Hands every message on the bus (and every gap, when the listener fell behind) to
    /// `on_heard`, one at a time, until shutdown.
    pub fn spawn_listener<F, Fut>(
        &self,
        shutdown: Shutdown,
        mut on_heard: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(Heard) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let mut bus = self.subscribe();
        tokio::spawn(async move {
            loop {
                let heard = tokio::select! {
                    received = bus.recv() => match received {
                        Ok(message) => Heard::Message(message),
                        Err(broadcast::error::RecvError::Lagged(missed)) => Heard::Lagged(missed),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = shutdown.wait() => return,
                };
                on_heard(heard).await;
            }
        })
    }
}

#[cfg(test)]
#[path = "engine_redis_tests.rs"]
mod redis_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_counters_count_within_a_window_and_reset() {
        let engine = Engine::local();
        let window = Duration::from_secs(60);
        assert_eq!(engine.hit("k", window).await.value, 1);
        assert_eq!(engine.hit("k", window).await.value, 2);
        assert_eq!(engine.peek("k").await.value, 2);
        engine.reset("k").await;
        assert_eq!(engine.peek("k").await.value, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn local_windows_expire() {
        let engine = Engine::local();
        engine.hit("k", Duration::from_secs(1)).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(engine.hit("k", Duration::from_secs(1)).await.value, 1);
    }

    #[tokio::test]
    async fn local_publish_reaches_local_subscribers() {
        let engine = Engine::local();
        let mut events = engine.subscribe();
        engine.publish("auth:revocations", "x".into()).await;
        let message = events.recv().await.unwrap();
        assert_eq!(
            message,
            BusMessage {
                channel: "auth:revocations".into(),
                payload: "x".into()
            }
        );
    }

    #[tokio::test]
    async fn a_listener_hears_every_message_in_order_and_stops_at_shutdown() {
        let engine = Engine::local();
        let shutdown = Shutdown::new();
        let (heard_tx, mut heard_rx) = tokio::sync::mpsc::channel(8);
        let listener = engine.spawn_listener(shutdown.clone(), move |heard| {
            let heard_tx = heard_tx.clone();
            async move {
                let _ = heard_tx.send(heard).await;
            }
        });
        for payload in ["a", "b"] {
            engine.publish("usage:invalidate", payload.into()).await;
        }
        for payload in ["a", "b"] {
            let expected = Heard::Message(BusMessage {
                channel: "usage:invalidate".into(),
                payload: payload.into(),
            });
            assert_eq!(heard_rx.recv().await, Some(expected));
        }
        shutdown.trigger();
        listener.await.unwrap();
        assert_eq!(
            heard_rx.recv().await,
            None,
            "the handler was dropped with the task"
        );
    }
}
