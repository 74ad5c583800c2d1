//! Dynamic, interest-based subscriptions: a process subscribes to the channels it has a use
//! for right now (a gateway node: the users connected to it) and drops them when it no longer
//! has, instead of hearing every channel of the deployment.
//!
//! One task owns the subscriptions. Callers send it `subscribe`/`unsubscribe` requests over a
//! bounded queue; it counts them per channel (the first subscribe asks Redis, the last
//! unsubscribe lets go) and applies whatever has queued up in one round, several channels per
//! command and all of a node's commands in one pipeline, so a burst of connections costs a few
//! round trips rather than one each.
//!
//! - **One node:** `SUBSCRIBE`/`UNSUBSCRIBE` on one connection of its own.
//! - **Cluster:** sharded pub/sub (`SSUBSCRIBE`/`SUNSUBSCRIBE`, Redis 7): one connection per
//!   master, each command naming channels of one slot (the server requires it) and sent to the
//!   slot's owner. A publication (`SPUBLISH`) then reaches only the shard that owns the channel
//!   and the processes subscribed there, not every node of the cluster. Channels that share a
//!   hash tag share a slot and go into one command; every command for one master goes into one
//!   pipeline, so a round costs one round trip per master however many slots it touches.
//!   (The redis crate's own cluster pub/sub is not used: after a topology change it sends every
//!   sharded channel in one `SSUBSCRIBE`, which a cluster refuses across slots.)
//!
//! The subscriptions are rebuilt where they belong whenever that may have changed: a node's
//! connection dropped (a `Disconnection` from the client, or a failed command or health
//! check), the server dropped a subscription itself (an unsolicited `sunsubscribe`, sent when
//! its slot moves to another node), or the slot map, polled every few seconds, differs. Failed
//! rebuilds are retried with backoff until they succeed.
//!
//! Messages go through the engine's relay (size limit, this process's own echo ignored) to the
//! bus, over a bounded queue: what does not fit is dropped and counted, never buffered without
//! limit. Nothing here holds a lock across an `.await`; the task stops at shutdown.

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use super::{Engine, RelayLimit, subscriber};
use crate::shutdown::Shutdown;

/// Requests waiting for the subscriber task; a caller beyond this waits for room.
const OPS_QUEUE: usize = 1024;
/// The longest channel name (without the deployment prefix) accepted.
pub const MAX_CHANNEL_BYTES: usize = 1024;

/// Why a subscription request was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterestError {
    #[error("a channel name must be 1 to {MAX_CHANNEL_BYTES} bytes")]
    BadChannel,
    #[error("the subscriber has stopped")]
    Stopped,
}

/// How many channels are wanted, and how many of them are subscribed on Redis right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterestStatus {
    pub wanted: usize,
    pub subscribed: usize,
}

/// A handle on a process's dynamic subscriptions (cheap to clone). Subscriptions are counted
/// per channel: each `subscribe` is matched by one `unsubscribe`.
#[derive(Clone, Debug)]
pub struct Interest {
    /// `None` without Redis: every publication of this process reaches its bus anyway.
    ops: Option<mpsc::Sender<Op>>,
    overflowed: Counter,
}

#[derive(Debug)]
pub(super) enum Op {
    Add(String),
    Remove(String),
    Status(oneshot::Sender<InterestStatus>),
}

impl Interest {
    /// Adds one interest in `channel`; the first one subscribes on Redis, in the next round.
    pub async fn subscribe(&self, channel: &str) -> Result<(), InterestError> {
        self.request(channel, Op::Add).await
    }

    /// Drops one interest in `channel`; the last one unsubscribes on Redis, in the next round.
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), InterestError> {
        self.request(channel, Op::Remove).await
    }

    /// [`Interest::subscribe`], returned as a [`Held`] interest that is dropped again when
    /// the holder lets go of it, even by unwinding from a panic.
    pub async fn hold(&self, channel: &str) -> Result<Held, InterestError> {
        self.subscribe(channel).await?;
        Ok(Held {
            interest: self.clone(),
            channel: Some(channel.to_owned()),
        })
    }

    /// Where the subscriptions stand, once every request sent before has been applied.
    pub async fn status(&self) -> Result<InterestStatus, InterestError> {
        let Some(ops) = &self.ops else {
            return Ok(InterestStatus::default());
        };
        let (reply, answer) = oneshot::channel();
        ops.send(Op::Status(reply))
            .await
            .map_err(|_| InterestError::Stopped)?;
        answer.await.map_err(|_| InterestError::Stopped)
    }

    /// Messages dropped because the relay queue was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.get()
    }

    async fn request(&self, channel: &str, op: fn(String) -> Op) -> Result<(), InterestError> {
        if channel.is_empty() || channel.len() > MAX_CHANNEL_BYTES {
            return Err(InterestError::BadChannel);
        }
        let Some(ops) = &self.ops else {
            return Ok(());
        };
        ops.send(op(channel.to_owned()))
            .await
            .map_err(|_| InterestError::Stopped)
    }
}

/// One interest in a channel, from [`Interest::hold`]. [`Held::release`] drops it and waits
/// for room in the queue; dropping it unreleased (a task that panicked, say) queues the same
/// request without waiting, or, when the queue is full, from a short task of its own.
#[derive(Debug)]
pub struct Held {
    interest: Interest,
    /// `None` once released.
    channel: Option<String>,
}

impl Held {
    pub async fn release(mut self) -> Result<(), InterestError> {
        match self.channel.take() {
            Some(channel) => self.interest.unsubscribe(&channel).await,
            None => Ok(()),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let (Some(channel), Some(ops)) = (self.channel.take(), self.interest.ops.clone()) else {
            return;
        };
        match ops.try_send(Op::Remove(channel)) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(op)) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    // Ends once the subscriber takes the request or stops.
                    runtime.spawn(async move {
                        let _ = ops.send(op).await;
                    });
                }
            }
        }
    }
}

impl Engine {
    /// Starts this process's dynamic subscriptions; messages on them reach [`Engine::subscribe`]
    /// like any other bus message, within `limit`. Without Redis there is no task and the
    /// handle accepts requests and does nothing. The task stops at `shutdown`.
    pub fn interest(
        &self,
        limit: RelayLimit,
        shutdown: Shutdown,
    ) -> (Interest, Option<tokio::task::JoinHandle<()>>) {
        let overflowed = limit.overflowed.clone();
        let Some(redis) = &self.inner.redis else {
            let interest = Interest {
                ops: None,
                overflowed,
            };
            return (interest, None);
        };
        let (ops_tx, ops) = mpsc::channel(OPS_QUEUE);
        let task = subscriber::spawn(
            self.clone(),
            redis,
            limit,
            ops,
            overflowed.clone(),
            shutdown,
        );
        let interest = Interest {
            ops: Some(ops_tx),
            overflowed,
        };
        (interest, Some(task))
    }
}
