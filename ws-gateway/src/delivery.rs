//! Getting a published event to every connection of its user, wherever it is connected, and
//! to nobody else.
//!
//! Every event is numbered and kept in the user's history first ([`crate::history`]), then
//! published on the user's own channel, `gateway:events:{<user id>}`. A node hears a user's
//! channel only while that user has a connection on it: the connection [`Delivery::attach`]es,
//! which adds an interest in the channel, and detaches when it ends; the engine's
//! [`Interest`] counts them per channel and subscribes on the first, unsubscribes after the
//! last, in batches (sharded pub/sub on a Redis Cluster). So an event costs one Redis delivery
//! per node that has a connection of its user, not one per node (revocations stay broadcast).
//!
//! With Redis, the publishing node does not deliver to its own connections directly: it takes
//! the event from Redis like every other subscribed node, so each node sees a user's events in
//! the order they were numbered. Without Redis the single node hands the event to its hub while
//! its history is still locked, for the same reason.
//!
//! A connection is attached *before* it is told `connected`, and it attaches by waiting until
//! the subscription is live on Redis ([`Interest::status`]): an event published after
//! `connected` is never missed. Events arriving while the connection catches up from the
//! history wait in its gate ([`crate::event_gate`]).
//!
//! Redis is not a single point of failure: when the script cannot run, the event still reaches
//! the user's connections on the publishing node, unnumbered (`event {data}` without `seq`) and
//! not kept, as before histories existed; the publisher learns it from the 202's missing `seq`.
//!
//! On the bus a payload is `<seq> <data>`; a receiving node builds the frame itself (no JSON
//! parsing) and drops payloads over the publish limit (`gateway_bus_messages_dropped`), as
//! anything that can PUBLISH on Redis can put a message on a channel.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::task::JoinHandle;
use tollgate_shared::{
    engine::{Engine, Heard, Held, Interest, RelayLimit},
    shutdown::Shutdown,
};
use uuid::Uuid;

use crate::{
    history::{self, EventHistory, MAX_SEQ, RecoverError, Recovery, Since, SinceError},
    hub::{ConnectionHandle, Hub},
    metrics::GatewayMetrics,
    protocol::ServerMessage,
};

/// What a bus envelope adds to a frame: the envelope's node field and separator, the seq and
/// a space, with room to spare.
const ENVELOPE_OVERHEAD: usize = 128;
/// How long a connection waits for its user's subscription to be live on Redis.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an event was not published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the event is larger than the publish limit")]
    TooLarge,
}

#[derive(Clone, Debug)]
pub struct Delivery {
    hub: Arc<Hub>,
    history: Arc<EventHistory>,
    interest: Interest,
    metrics: GatewayMetrics,
    /// The largest frame published (`GATEWAY_PUBLISH_MAX_BYTES`).
    max_frame_bytes: usize,
}

/// A connection's interest in its user's channel; give it back with [`Attachment::detach`]
/// (a connection task that unwinds from a panic gives it back by dropping it).
#[derive(Debug)]
pub struct Attachment {
    held: Option<Held>,
}

impl Attachment {
    /// Drops the interest: the node unsubscribes after its user's last connection.
    pub async fn detach(self) {
        if let Some(held) = self.held
            && let Err(err) = held.release().await
        {
            tracing::debug!(error = %err, "unsubscribing from a user's events failed");
        }
    }
}

/// A `since` answered: the frames that open the connection's gate.
#[derive(Debug)]
pub struct Resumed {
    pub frame: Utf8Bytes,
    pub through: u64,
    pub replayed: Vec<(u64, Utf8Bytes)>,
}

/// The `event` frame of `data` (already JSON) numbered `seq`, as
/// [`ServerMessage::Event`] writes it, without parsing `data` again.
pub fn event_frame(seq: u64, data: &str) -> Utf8Bytes {
    format!(r#"{{"type":"event","data":{data},"seq":{seq}}}"#).into()
}

/// The `event` frame of an event that could not be numbered.
fn unnumbered_frame(data: &str) -> Utf8Bytes {
    format!(r#"{{"type":"event","data":{data}}}"#).into()
}

impl Delivery {
    pub fn new(
        hub: Arc<Hub>,
        history: Arc<EventHistory>,
        interest: Interest,
        metrics: GatewayMetrics,
        max_frame_bytes: usize,
    ) -> Self {
        Self {
            hub,
            history,
            interest,
            metrics,
            max_frame_bytes,
        }
    }

    /// Numbers `data`, keeps it in the user's history and sends it to every connection of
    /// `user`; returns its seq, or `None` when Redis could not be reached and only this node's
    /// connections got it, unnumbered. A frame over the publish limit (its data re-encoded,
    /// which may grow it) is refused, since every node would drop it.
    pub async fn publish(&self, user: Uuid, data: &Value) -> Result<Option<u64>, PublishError> {
        let data = data.to_string();
        if event_frame(MAX_SEQ, &data).len() > self.max_frame_bytes {
            return Err(PublishError::TooLarge);
        }
        self.metrics.events_published.inc();
        if !self.history.is_redis() {
            let seq = self.history.append_local(user, &data, |seq| {
                self.hub
                    .deliver_event(user, Some(seq), &event_frame(seq, &data));
            });
            return Ok(Some(seq));
        }
        match self.history.append_and_publish(user, &data).await {
            Ok(seq) => Ok(Some(seq)),
            Err(_) => {
                self.hub.deliver_event(user, None, &unnumbered_frame(&data));
                Ok(None)
            }
        }
    }

    /// Makes this node hear `user`'s events, waiting (within a bound) until the subscription is
    /// live on Redis.
    pub async fn attach(&self, user: Uuid) -> Attachment {
        let held = self
            .interest
            .hold(&history::channel(user))
            .await
            .inspect_err(
                |err| tracing::warn!(error = %err, "subscribing to a user's events failed"),
            )
            .ok();
        match tokio::time::timeout(ATTACH_TIMEOUT, self.interest.status()).await {
            Ok(Ok(status)) if status.subscribed < status.wanted => {
                tracing::warn!(
                    ?status,
                    "some user channels are not subscribed on redis yet"
                );
            }
            Ok(_) => {}
            Err(_) => tracing::warn!("the user's subscription was not confirmed in time"),
        }
        Attachment { held }
    }

    /// The user's last seq, to refuse a `since` ahead of it before the upgrade.
    pub async fn check_since(&self, user: Uuid, since: Since) -> Result<(), RecoverError> {
        let last = self.history.last(user).await?;
        if last > 0 && since.get() > last {
            return Err(SinceError::Ahead {
                since: since.get(),
                last,
            }
            .into());
        }
        Ok(())
    }

    /// What a connection that asked for the events after `since` is sent before live ones. A
    /// history that cannot be read recovers nothing (`recovered: false`).
    pub async fn resume(&self, user: Uuid, since: Since) -> Result<Resumed, SinceError> {
        let recovery = match self.history.since(user, since).await {
            Ok(recovery) => recovery,
            Err(RecoverError::Since(err)) => return Err(err),
            Err(RecoverError::Unavailable(_)) => Recovery {
                recovered: false,
                events: Vec::new(),
            },
        };
        let frame = ServerMessage::EventsResumed {
            since: since.get(),
            recovered: recovery.recovered,
            replayed: recovery.events.len(),
        }
        .encode();
        let replayed = recovery
            .events
            .iter()
            .map(|(seq, data)| (*seq, event_frame(*seq, data)))
            .collect();
        Ok(Resumed {
            frame,
            // After a lost history, live events are not second-guessed.
            through: if recovery.recovered { since.get() } else { 0 },
            replayed,
        })
    }

    /// Opens a connection's gate: with a `since` answered, its frames first.
    pub fn open(&self, handle: &ConnectionHandle, resumed: Option<Resumed>) {
        let metrics = &self.metrics;
        match resumed {
            Some(resumed) => {
                let replayed = resumed.replayed.len() as u64;
                handle.open_events(
                    Some(resumed.frame),
                    resumed.through,
                    resumed.replayed,
                    metrics,
                );
                metrics.events_delivered.inc_by(replayed);
            }
            None => handle.open_events(None, 0, Vec::new(), metrics),
        }
    }

    /// What this node accepts from Redis: envelopes of at most a full frame and the envelope's
    /// own fields; larger ones are dropped and counted.
    pub fn bus_limit(&self) -> RelayLimit {
        Self::limit_for(self.max_frame_bytes, &self.metrics)
    }

    /// [`Delivery::bus_limit`] for a node that publishes frames of at most `max_frame_bytes`.
    pub fn limit_for(max_frame_bytes: usize, metrics: &GatewayMetrics) -> RelayLimit {
        RelayLimit {
            max_bytes: max_frame_bytes.saturating_add(ENVELOPE_OVERHEAD),
            dropped: metrics.bus_drops("oversized"),
            overflowed: metrics.bus_drops("queue_full"),
        }
    }

    /// Hands events from the bus to this node's hub until shutdown.
    pub fn spawn_listener(&self, engine: &Engine, shutdown: Shutdown) -> JoinHandle<()> {
        let hub = Arc::clone(&self.hub);
        let malformed = self.metrics.bus_drops("malformed");
        let received = self.metrics.bus_events_received.clone();
        engine.spawn_listener(shutdown, move |heard| {
            match heard {
                Heard::Message(message) => {
                    if let Some(user) = history::user_of(&message.channel) {
                        received.inc();
                        match parse(&message.payload) {
                            Some((seq, data)) => {
                                hub.deliver_event(user, Some(seq), &event_frame(seq, data));
                            }
                            None => {
                                malformed.inc();
                                tracing::warn!("ignoring a malformed event on the bus");
                            }
                        }
                    }
                }
                Heard::Lagged(missed) => {
                    tracing::warn!(missed, "event listener lagged; events were lost")
                }
            }
            std::future::ready(())
        })
    }
}

/// `<seq> <data>`, where data is JSON.
fn parse(payload: &str) -> Option<(u64, &str)> {
    let (seq, data) = payload.split_once(' ')?;
    let seq: u64 = seq.parse().ok()?;
    (seq > 0 && seq <= MAX_SEQ && !data.is_empty()).then_some((seq, data))
}

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod tests;
