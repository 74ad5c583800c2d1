//! Connection leases at usage-service, batched (see [`crate::batch`]): a burst of connects takes
//! its leases in a few `AcquireConnections` calls and a burst of closes gives them back in a few
//! `ReleaseConnections`, instead of a call per connection each way.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic::Code;
use uuid::Uuid;

use crate::{
    batch::{BatchQueue, Batcher, batcher},
    usage::{LeaseAnswer, Unavailable, UsageClient},
};

/// Leases sent in one call at most (usage-service accepts up to 1000).
const MAX_BATCH: usize = 256;
/// Calls of each kind under way at once. One: whatever arrives while a call is out goes in
/// the next, so a burst shares as few calls as it can, and a lone request still leaves at once.
/// Each call costs both sides far more than each lease in it (HTTP/2 frames, headers, a
/// task, a span); with four under way a burst of connects made twice as many calls, for no
/// gain in connects per second.
const IN_FLIGHT: usize = 1;
/// Requests waiting for their batch at most; beyond that a connection waits for room.
const QUEUE: usize = 4096;

type Acquire = (Uuid, Arc<str>, Duration);
type Release = (Uuid, Arc<str>);

/// The connections' side.
#[derive(Clone, Debug)]
pub struct Leases {
    acquire: Batcher<Acquire, Result<LeaseAnswer, Unavailable>>,
    release: Batcher<Release, ()>,
}

/// The sending side, run by the application until its connections are gone.
#[derive(Debug)]
pub struct LeaseQueues {
    acquire: BatchQueue<Acquire, Result<LeaseAnswer, Unavailable>>,
    release: BatchQueue<Release, ()>,
}

pub fn leases() -> (Leases, LeaseQueues) {
    let (acquire, acquire_queue) = batcher(MAX_BATCH, QUEUE);
    let (release, release_queue) = batcher(MAX_BATCH, QUEUE);
    (
        Leases { acquire, release },
        LeaseQueues {
            acquire: acquire_queue,
            release: release_queue,
        },
    )
}

impl Leases {
    /// Takes or renews the lease of `connection_id` for `ttl`.
    pub async fn acquire(
        &self,
        user: Uuid,
        connection_id: &Arc<str>,
        ttl: Duration,
    ) -> Result<LeaseAnswer, Unavailable> {
        self.acquire
            .submit((user, Arc::clone(connection_id), ttl))
            .await
            .unwrap_or(Err(Unavailable {
                code: Code::Unavailable,
            }))
    }

    /// Gives the lease back; returns once usage-service has been told (or could not be: the
    /// lease then lapses by its TTL, as after a crash).
    pub async fn release(&self, user: Uuid, connection_id: &Arc<str>) {
        let _ = self.release.submit((user, Arc::clone(connection_id))).await;
    }
}

impl LeaseQueues {
    /// Sends the queued requests until `stop` fires (then sends what is still queued).
    pub async fn run(self, usage: UsageClient, stop: CancellationToken) {
        let acquirer = usage.clone();
        let acquire = self.acquire.run(
            IN_FLIGHT,
            move |leases: Vec<Acquire>| {
                let usage = acquirer.clone();
                async move { usage.acquire_connections(&leases).await }
            },
            stop.clone(),
        );
        let release = self.release.run(
            IN_FLIGHT,
            move |leases: Vec<Release>| {
                let usage = usage.clone();
                async move {
                    usage.release_connections(&leases).await;
                    vec![(); leases.len()]
                }
            },
            stop,
        );
        tokio::join!(acquire, release);
    }
}
