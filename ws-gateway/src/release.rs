//! Lease releases, batched. Every closing connection owes usage-service a release, and sent one
//! call each, a burst of closes (a reconnect storm, a drain, plain churn) costs a gRPC round
//! trip per connection on both sides. The releaser sends whatever queued up while its previous
//! call was in flight as one `ReleaseConnections`, so a lone close still goes out at once and a
//! burst goes out in a few calls. Each closing connection waits for its own release to be sent,
//! so its close frame still follows the release and a client may reconnect right away.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::usage::UsageClient;

/// Releases sent in one call at most (usage-service accepts up to 1000).
const MAX_BATCH: usize = 256;
/// Releases waiting for the releaser at most; a closing connection waits for room.
const QUEUE: usize = 4096;

struct Pending {
    user: Uuid,
    connection_id: Arc<str>,
    sent: oneshot::Sender<()>,
}

/// The closing connections' side: queue a release and wait until it has been sent.
#[derive(Clone, Debug)]
pub struct Releaser {
    queue: mpsc::Sender<Pending>,
}

/// The task's side, started by `run` and stopped by its token once the connections are gone.
pub struct ReleaseWorker {
    queue: mpsc::Receiver<Pending>,
}

impl std::fmt::Debug for ReleaseWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseWorker").finish_non_exhaustive()
    }
}

pub fn releaser() -> (Releaser, ReleaseWorker) {
    let (queue, receiver) = mpsc::channel(QUEUE);
    (Releaser { queue }, ReleaseWorker { queue: receiver })
}

impl Releaser {
    /// Returns once the release has been sent (or could not be: the lease then lapses by its
    /// TTL, as after a crash).
    pub async fn release(&self, user: Uuid, connection_id: Arc<str>) {
        let (sent, done) = oneshot::channel();
        let pending = Pending {
            user,
            connection_id,
            sent,
        };
        if self.queue.send(pending).await.is_ok() {
            let _ = done.await;
        }
    }
}

impl ReleaseWorker {
    /// Sends queued releases until `stop` fires, then sends what is still queued and returns.
    pub async fn run(mut self, usage: UsageClient, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                received = self.queue.recv_many(&mut batch, MAX_BATCH) => {
                    if received == 0 {
                        return;
                    }
                }
                () = stop.cancelled() => break,
            }
            send(&usage, &mut batch).await;
        }
        self.queue.close();
        while self.queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            send(&usage, &mut batch).await;
        }
    }
}

async fn send(usage: &UsageClient, batch: &mut Vec<Pending>) {
    let leases: Vec<(Uuid, &str)> = batch
        .iter()
        .map(|pending| (pending.user, &*pending.connection_id))
        .collect();
    usage.release_connections(&leases).await;
    for pending in batch.drain(..) {
        let _ = pending.sent.send(());
    }
}
