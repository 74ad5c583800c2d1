//! The relay: what other processes publish on Redis, handed to this process's subscribers.
//!
//! Whatever arrives from Redis is untrusted input: anything that may PUBLISH there can put a
//! message on a channel. The relay drops (and counts) messages over a size limit before they
//! are copied to a single subscriber, ignores envelopes it cannot open and this process's own
//! echo, and reconnects with backoff when the subscription is lost.

use std::time::Duration;

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;

use super::{BusMessage, Engine};
use crate::{
    backoff::{Backoff, ExponentialBackoff},
    events,
    shutdown::Shutdown,
};

/// The largest bus message [`Engine::spawn_relay`] passes on: far above anything auth-service
/// and usage-service publish (ids, small JSON).
pub const MAX_RELAYED_BYTES: usize = 64 * 1024;

/// How the relay reconnects to Redis.
fn relay_backoff() -> Backoff {
    ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.5).start()
}

/// What the relay accepts from Redis: envelopes of at most `max_bytes`; larger ones are dropped
/// and counted in `dropped`. Messages that arrive while the queue between a dynamic
/// subscription's connection and the bus is full are dropped too, and counted in `overflowed`.
#[derive(Clone, Debug)]
pub struct RelayLimit {
    pub max_bytes: usize,
    pub dropped: Counter,
    pub overflowed: Counter,
}

impl Default for RelayLimit {
    fn default() -> Self {
        Self {
            max_bytes: MAX_RELAYED_BYTES,
            dropped: Counter::default(),
            overflowed: Counter::default(),
        }
    }
}

impl Engine {
    /// With Redis: relays the broadcast `channels` from Redis to local subscribers until
    /// shutdown, reconnecting with backoff, within the default [`RelayLimit`]. On a cluster it
    /// listens on one seed node (another after a failure), since a cluster forwards every
    /// `PUBLISH` to all of its nodes. Without Redis there is nothing to relay.
    pub fn spawn_relay(
        &self,
        channels: &[&str],
        shutdown: Shutdown,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.spawn_relay_within(channels, RelayLimit::default(), shutdown)
    }

    /// [`Engine::spawn_relay`] with a limit of the caller's.
    pub fn spawn_relay_within(
        &self,
        channels: &[&str],
        limit: RelayLimit,
        shutdown: Shutdown,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.redis.as_ref()?;
        let channels: Vec<String> = channels.iter().map(|channel| self.key(channel)).collect();
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut backoff = relay_backoff();
            for attempt in 0.. {
                let Some(redis) = this.inner.redis.as_ref() else {
                    return;
                };
                let pubsub = async { redis.broadcast_client(attempt)?.get_async_pubsub().await };
                match tokio::time::timeout(Duration::from_secs(2), pubsub).await {
                    Ok(Ok(mut pubsub)) => {
                        if pubsub.subscribe(&channels).await.is_ok() {
                            backoff.reset();
                            let mut messages = pubsub.on_message();
                            loop {
                                tokio::select! {
                                    message = messages.next() => match message {
                                        Some(message) => this.relay(
                                            message.get_channel_name(),
                                            message.get_payload_bytes(),
                                            &limit,
                                        ),
                                        None => break,
                                    },
                                    () = shutdown.wait() => return,
                                }
                            }
                        }
                        tracing::warn!("redis subscription lost; reconnecting");
                    }
                    Ok(Err(err)) => tracing::warn!(error = %err, "redis subscribe failed"),
                    Err(_) => tracing::warn!("redis subscribe timed out"),
                }
                if !shutdown.sleep(backoff.next_delay()).await {
                    return;
                }
            }
        }))
    }

    /// Hands one envelope from Redis to this process's subscribers, unless it is too large,
    /// cannot be opened, or is this process's own echo.
    pub(super) fn relay(&self, full_channel: &str, envelope: &[u8], limit: &RelayLimit) {
        if envelope.len() > limit.max_bytes {
            limit.dropped.inc();
            tracing::warn!(
                channel = full_channel,
                bytes = envelope.len(),
                max_bytes = limit.max_bytes,
                "dropping an oversized bus message"
            );
            return;
        }
        let Ok(envelope) = std::str::from_utf8(envelope) else {
            return;
        };
        let Some((node, payload)) = events::open(envelope) else {
            return;
        };
        if node == self.inner.node {
            return;
        }
        let channel = full_channel
            .strip_prefix(&self.inner.prefix)
            .and_then(|rest| rest.strip_prefix(':'))
            .unwrap_or(full_channel);
        let _ = self.inner.bus.send(BusMessage {
            channel: channel.to_owned(),
            payload: payload.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_passes_on_other_nodes_messages_within_the_limit_only() {
        let engine = Engine::local();
        let mut bus = engine.subscribe();
        let limit = RelayLimit {
            max_bytes: 64,
            ..RelayLimit::default()
        };
        let channel = "tollgate:gateway:events";
        let oversized = format!("intruder|{}", "x".repeat(100));
        engine.relay(channel, oversized.as_bytes(), &limit);
        assert_eq!(limit.dropped.get(), 1, "dropped and counted");
        let echo = format!("{}|mine", engine.inner.node);
        engine.relay(channel, echo.as_bytes(), &limit);
        engine.relay(channel, b"\xff\xfe|not utf-8", &limit);
        engine.relay(channel, b"no separator", &limit);
        engine.relay(channel, b"other|hello", &limit);
        assert_eq!(
            bus.try_recv().unwrap(),
            BusMessage {
                channel: "gateway:events".into(),
                payload: "hello".into()
            }
        );
        assert!(bus.try_recv().is_err(), "nothing else was passed on");
        assert_eq!(limit.dropped.get(), 1);
    }
}
