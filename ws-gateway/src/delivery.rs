//! Getting a published event to every connection of its user, on every gateway node.
//!
//! A publish goes out on the engine bus (channel [`EVENTS_CHANNEL`]); every node, this one
//! included, hears it there and hands it to its [`Hub`]. The engine delivers a message to its
//! own process directly and, with Redis, to the other processes through Redis (skipping the
//! publisher's echo), so each node delivers each event exactly once. Without Redis the bus is
//! in-process and a single node serves everyone.
//!
//! The frame is encoded once, by the publishing node: the bus payload is `<user id> <frame>`,
//! so a receiving node only reads the user id before handing the frame to the hub.
//!
//! A frame is at most `GATEWAY_PUBLISH_MAX_BYTES`, and what arrives from Redis is held to that
//! too ([`Delivery::bus_limit`]): anything that can PUBLISH on Redis can put a message on the
//! channel, and one larger than any gateway would send is dropped on arrival and counted
//! (`gateway_bus_messages_dropped{reason="oversized"}`), never delivered. Every gateway node
//! should therefore share the same limit.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::task::JoinHandle;
use tollgate_shared::{
    engine::{Engine, Heard, RelayLimit},
    shutdown::Shutdown,
};
use uuid::Uuid;

use crate::{hub::Hub, metrics::GatewayMetrics, protocol::ServerMessage};

/// The bus channel of published events (after the deployment's `REDIS_PREFIX`).
pub const EVENTS_CHANNEL: &str = "gateway:events";

/// What a bus envelope adds to a frame: the publishing node's id and a separator (33 bytes),
/// the user id and a space (37), with room to spare.
const ENVELOPE_OVERHEAD: usize = 128;

/// An event whose frame would be larger than the publish limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the event is larger than the publish limit")]
pub struct EventTooLarge;

#[derive(Clone, Debug)]
pub struct Delivery {
    engine: Engine,
    hub: Arc<Hub>,
    metrics: GatewayMetrics,
    /// The largest frame published (`GATEWAY_PUBLISH_MAX_BYTES`).
    max_frame_bytes: usize,
}

impl Delivery {
    pub fn new(
        engine: Engine,
        hub: Arc<Hub>,
        metrics: GatewayMetrics,
        max_frame_bytes: usize,
    ) -> Self {
        Self {
            engine,
            hub,
            metrics,
            max_frame_bytes,
        }
    }

    /// Sends `data` to every connection of `user`, wherever it is connected. A frame over the
    /// publish limit (its data re-encoded, which may grow it) is refused, since every node
    /// would drop it.
    pub async fn publish(&self, user: Uuid, data: &Value) -> Result<(), EventTooLarge> {
        let frame = ServerMessage::Event { data }.encode();
        if frame.len() > self.max_frame_bytes {
            return Err(EventTooLarge);
        }
        self.metrics.events_published.inc();
        self.engine
            .publish(EVENTS_CHANNEL, format!("{user} {}", frame.as_str()))
            .await;
        Ok(())
    }

    /// What this node accepts from Redis: envelopes of at most a full frame and the envelope's
    /// own fields; larger ones are dropped and counted.
    pub fn bus_limit(&self) -> RelayLimit {
        RelayLimit {
            max_bytes: self.max_frame_bytes.saturating_add(ENVELOPE_OVERHEAD),
            dropped: self.metrics.bus_drops("oversized"),
        }
    }

    /// Hands events from the bus to this node's hub until shutdown.
    pub fn spawn_listener(&self, shutdown: Shutdown) -> JoinHandle<()> {
        let hub = Arc::clone(&self.hub);
        let malformed = self.metrics.bus_drops("malformed");
        self.engine.spawn_listener(shutdown, move |heard| {
            match heard {
                Heard::Message(message) if message.channel == EVENTS_CHANNEL => {
                    match parse(&message.payload) {
                        Some((user, frame)) => {
                            hub.deliver(user, &frame);
                        }
                        None => {
                            malformed.inc();
                            tracing::warn!("ignoring a malformed event on the bus");
                        }
                    }
                }
                Heard::Message(_) => {}
                Heard::Lagged(missed) => {
                    tracing::warn!(missed, "event listener lagged; events were lost")
                }
            }
            std::future::ready(())
        })
    }
}

fn parse(payload: &str) -> Option<(Uuid, Utf8Bytes)> {
    let (user, frame) = payload.split_once(' ')?;
    Some((user.parse().ok()?, frame.to_owned().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::ConnectionHandle;

    #[tokio::test]
    async fn published_events_reach_the_users_connections_through_the_bus() {
        let metrics = GatewayMetrics::default();
        let hub = Hub::new(metrics.clone());
        let delivery = Delivery::new(Engine::local(), hub.clone(), metrics, 1024);
        let shutdown = Shutdown::new();
        let listener = delivery.spawn_listener(shutdown.clone());
        let user = Uuid::new_v4();
        let (handle, mailbox) = ConnectionHandle::new("c1".into(), 4);
        let _registration = hub.register(user, Uuid::new_v4(), handle);

        delivery
            .publish(user, &serde_json::json!({"hello": "world"}))
            .await
            .unwrap();
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), mailbox.next())
            .await
            .unwrap();
        let crate::protocol::Outbound::Text(text) = received else {
            panic!("a text frame")
        };
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"type": "event", "data": {"hello": "world"}})
        );
        shutdown.trigger();
        listener.await.unwrap();
    }

    #[tokio::test]
    async fn an_event_over_the_limit_is_refused_before_it_reaches_the_bus() {
        let metrics = GatewayMetrics::default();
        let engine = Engine::local();
        let mut bus = engine.subscribe();
        let delivery = Delivery::new(engine, Hub::new(metrics.clone()), metrics, 64);
        let user = Uuid::new_v4();
        // Re-encoding may grow the data: `1E2` is written back as `100.0`.
        let data: Value = serde_json::from_str(&format!("[{}]", ["1E2"; 9].join(","))).unwrap();
        assert_eq!(
            delivery.publish(user, &data).await,
            Err(EventTooLarge),
            "{}",
            ServerMessage::Event { data: &data }.encode().as_str()
        );
        assert!(bus.try_recv().is_err(), "nothing was published");
        delivery
            .publish(user, &serde_json::json!([1]))
            .await
            .unwrap();
        assert!(bus.try_recv().is_ok());
        assert!(delivery.bus_limit().max_bytes > 64);
    }
}
