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

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::task::JoinHandle;
use tollgate_shared::{
    engine::{Engine, Heard},
    shutdown::Shutdown,
};
use uuid::Uuid;

use crate::{hub::Hub, metrics::GatewayMetrics, protocol::ServerMessage};

/// The bus channel of published events (after the deployment's `REDIS_PREFIX`).
pub const EVENTS_CHANNEL: &str = "gateway:events";

#[derive(Clone, Debug)]
pub struct Delivery {
    engine: Engine,
    hub: Arc<Hub>,
    metrics: GatewayMetrics,
}

impl Delivery {
    pub fn new(engine: Engine, hub: Arc<Hub>, metrics: GatewayMetrics) -> Self {
        Self {
            engine,
            hub,
            metrics,
        }
    }

    /// Sends `data` to every connection of `user`, wherever it is connected.
    pub async fn publish(&self, user: Uuid, data: &Value) {
        let frame = ServerMessage::Event { data }.encode();
        self.metrics.events_published.inc();
        self.engine
            .publish(EVENTS_CHANNEL, format!("{user} {}", frame.as_str()))
            .await;
    }

    /// Hands events from the bus to this node's hub until shutdown.
    pub fn spawn_listener(&self, shutdown: Shutdown) -> JoinHandle<()> {
        let hub = Arc::clone(&self.hub);
        self.engine.spawn_listener(shutdown, move |heard| {
            match heard {
                Heard::Message(message) if message.channel == EVENTS_CHANNEL => {
                    match parse(&message.payload) {
                        Some((user, frame)) => {
                            hub.deliver(user, &frame);
                        }
                        None => tracing::warn!("ignoring a malformed event on the bus"),
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
        let delivery = Delivery::new(Engine::local(), hub.clone(), metrics);
        let shutdown = Shutdown::new();
        let listener = delivery.spawn_listener(shutdown.clone());
        let user = Uuid::new_v4();
        let (handle, mailbox) = ConnectionHandle::new("c1".into(), 4);
        let _registration = hub.register(user, Uuid::new_v4(), handle);

        delivery
            .publish(user, &serde_json::json!({"hello": "world"}))
            .await;
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
}
