//! Group commit for the usage ledger.
//!
//! `Consume` must not acknowledge anything that is not durable, yet one INSERT per call would
//! make the database the ceiling of throughput. Callers hand their entry to one writer task
//! through a bounded queue and wait for it; the writer takes everything queued (up to a batch
//! size), writes it as one statement, and answers every caller of the batch. Under load the
//! batches grow by themselves while earlier ones commit; at rest each entry is written alone
//! with no added delay. On PostgreSQL a few batches are in flight at once, so the round trip and
//! WAL flush of one batch overlap with the next (PostgreSQL merges concurrent flushes); SQLite
//! has one writer anyway, so there it is one batch at a time.
//!
//! On shutdown the writer drains the queue and waits for the batches in flight before it stops,
//! so every accepted entry is either written and acknowledged or answered with an error:
//! nothing acknowledged is ever lost.

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tollgate_shared::shutdown::Shutdown;

use crate::store::{LedgerEntry, LedgerWrite, ROWS_PER_STATEMENT, Store, StoreError};

/// Largest batch one statement writes.
const MAX_BATCH: usize = ROWS_PER_STATEMENT;
/// Entries waiting for the writer before callers are pushed back.
const QUEUE: usize = 8_192;

type Reply = oneshot::Sender<Result<LedgerWrite, LedgerError>>;

#[derive(Clone, Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the ledger could not be written")]
    Unavailable,
    #[error("the ledger is shutting down")]
    Closed,
}

#[derive(Clone, Debug)]
pub struct Ledger {
    queue: mpsc::Sender<(LedgerEntry, Reply)>,
}

impl Ledger {
    /// Starts the writer. It stops once `shutdown` fires and the queue is drained; await the
    /// handle to know the ledger is flushed.
    pub fn start(store: Store, shutdown: Shutdown) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(write_loop(store, receiver, shutdown));
        (Self { queue }, writer)
    }

    /// Makes `entry` durable, waiting for its batch to commit.
    pub async fn append(&self, entry: LedgerEntry) -> Result<LedgerWrite, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((entry, reply))
            .await
            .map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }
}

async fn write_loop(
    store: Store,
    mut receiver: mpsc::Receiver<(LedgerEntry, Reply)>,
    shutdown: Shutdown,
) {
    let parallelism = store.write_parallelism();
    let mut in_flight = JoinSet::new();
    let mut closing = false;
    loop {
        if in_flight.len() >= parallelism {
            in_flight.join_next().await;
            continue;
        }
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let received = tokio::select! {
            biased;
            count = receiver.recv_many(&mut batch, MAX_BATCH) => count,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
            () = shutdown.wait(), if !closing => {
                // Stop accepting; what is already queued is still written below.
                receiver.close();
                closing = true;
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let store = store.clone();
        in_flight.spawn(async move { write_batch(&store, batch).await });
    }
    while in_flight.join_next().await.is_some() {}
}

async fn write_batch(store: &Store, batch: Vec<(LedgerEntry, Reply)>) {
    let entries: Vec<LedgerEntry> = batch.iter().map(|(entry, _)| entry.clone()).collect();
    let result = store.append_ledger(&entries).await;
    if let Err(err) = &result {
        log_failure(err, entries.len());
    }
    for (index, (_, reply)) in batch.into_iter().enumerate() {
        let answer = match &result {
            Ok(outcomes) => Ok(outcomes[index]),
            Err(_) => Err(LedgerError::Unavailable),
        };
        // A caller that gave up waiting no longer needs the answer.
        let _ = reply.send(answer);
    }
}

fn log_failure(err: &StoreError, entries: usize) {
    tracing::warn!(error = %err, entries, "writing a ledger batch failed; its callers get UNAVAILABLE");
}
