//! Metering at usage-service, batched (see [`crate::batch`]): the messages, runs and tool
//! calls that many connections count at once travel together in a few `ConsumeMany` calls
//! instead of a `Consume` each. Each is still judged on its own, idempotent by its own key, and
//! answered to its own caller only once usage-service has counted it (and, for a billable
//! meter, written it to the ledger), so batching changes what a message costs, not what an
//! answer means.

use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{
    batch::{BatchQueue, Batcher, batcher},
    usage::{Consume, Consumed, Unavailable, UsageClient},
};

/// Consumes sent in one call at most (usage-service accepts up to 1000).
const MAX_BATCH: usize = 256;
/// Calls under way at once. Two: a batch is judged while the one before it waits for its
/// ledger commit, and a lone request still leaves at once.
const IN_FLIGHT: usize = 2;
/// Requests waiting for their batch at most; beyond that a connection waits for room.
const QUEUE: usize = 4096;

type Outcome = Result<Consumed, Unavailable>;

/// The connections' side.
#[derive(Clone, Debug)]
pub struct Consumes {
    batcher: Batcher<Consume, Outcome>,
}

/// The sending side, run by the application until its connections and runs are gone.
#[derive(Debug)]
pub struct ConsumeQueue {
    queue: BatchQueue<Consume, Outcome>,
}

pub fn consumes() -> (Consumes, ConsumeQueue) {
    let (batcher, queue) = batcher(MAX_BATCH, QUEUE);
    (Consumes { batcher }, ConsumeQueue { queue })
}

impl Consumes {
    /// Counts `consume`, with the consumes queued beside it.
    pub async fn consume(&self, consume: Consume) -> Outcome {
        self.batcher
            .submit(consume)
            .await
            .unwrap_or(Err(Unavailable {
                code: Code::Unavailable,
            }))
    }
}

impl ConsumeQueue {
    /// Sends the queued consumes until `stop` fires (then sends what is still queued).
    pub async fn run(self, usage: UsageClient, stop: CancellationToken) {
        self.queue
            .run(
                IN_FLIGHT,
                move |consumes: Vec<Consume>| {
                    let usage = usage.clone();
                    async move { usage.consume_many(consumes).await }
                },
                stop,
            )
            .await;
    }
}
