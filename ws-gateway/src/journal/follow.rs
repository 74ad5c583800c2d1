//! A connection following a run: it reads the journal through its cursor and queues each
//! record for the client, in order, waiting for room while the client is slow (the queue merges
//! consecutive deltas meanwhile).

use std::sync::Arc;

use super::{Follower, Read};
use crate::{hub::ConnectionHandle, protocol::RequestId};

/// Delivers the run's records after the follower's cursor to `handle` until the run ends and
/// all are read, or the connection is over. `id` is echoed in every frame.
pub async fn follow(mut follower: Follower, handle: Arc<ConnectionHandle>, id: Option<RequestId>) {
    let journal = Arc::clone(follower.journal());
    tracing::debug!(run_id = %journal.run_id(), "following a run");
    loop {
        let appended = journal.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        match follower.read() {
            Read::Records(records) => {
                for record in &records {
                    let frame = record.outbound(journal.run_id(), id.as_ref());
                    if !handle.offer_run(frame).await {
                        tracing::debug!(run_id = %journal.run_id(), "a run's follower is gone");
                        return;
                    }
                }
                if let Some(last) = records.last() {
                    follower.advance(last.seq);
                }
            }
            Read::Wait => appended.await,
            Read::Done => {
                tracing::debug!(run_id = %journal.run_id(), "a run's records are all sent");
                return;
            }
        }
    }
}
