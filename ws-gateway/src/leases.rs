//! Connection leases at usage-service, batched (see [`crate::batch`]): the leases a burst of
//! connects takes and a burst of closes gives back travel together, in a few
//! `UpdateConnections` calls (releases first, then acquisitions), instead of a call per
//! connection each way.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic::Code;
use uuid::Uuid;

use crate::{
    batch::{BatchQueue, Batcher, batcher},
    usage::{LeaseAnswer, Unavailable, UsageClient},
};

/// Lease changes sent in one call at most (usage-service accepts up to 1000 of each kind).
const MAX_BATCH: usize = 256;
/// Calls under way at once. One: whatever arrives while a call is out goes in the next, so a
/// burst shares as few calls as it can, and a lone request still leaves at once. A call costs
/// both sides far more than each lease in it (HTTP/2 frames, headers, a task, a span).
const IN_FLIGHT: usize = 1;
/// Requests waiting for their batch at most; beyond that a connection waits for room.
const QUEUE: usize = 4096;

/// One connection's change to its lease.
#[derive(Debug)]
enum Change {
    Acquire(Uuid, Arc<str>, Duration),
    Release(Uuid, Arc<str>),
}

/// What a change gets back: an acquisition its answer, a release nothing.
type Outcome = Option<Result<LeaseAnswer, Unavailable>>;

/// The connections' side.
#[derive(Clone, Debug)]
pub struct Leases {
    changes: Batcher<Change, Outcome>,
}

/// The sending side, run by the application until its connections are gone.
#[derive(Debug)]
pub struct LeaseQueues {
    changes: BatchQueue<Change, Outcome>,
}

pub fn leases() -> (Leases, LeaseQueues) {
    let (changes, queue) = batcher(MAX_BATCH, QUEUE);
    (Leases { changes }, LeaseQueues { changes: queue })
}

impl Leases {
    /// Takes or renews the lease of `connection_id` for `ttl`.
    pub async fn acquire(
        &self,
        user: Uuid,
        connection_id: &Arc<str>,
        ttl: Duration,
    ) -> Result<LeaseAnswer, Unavailable> {
        self.changes
            .submit(Change::Acquire(user, Arc::clone(connection_id), ttl))
            .await
            .flatten()
            .unwrap_or(Err(Unavailable {
                code: Code::Unavailable,
            }))
    }

    /// Gives the lease back; returns once usage-service has been told (or could not be: the
    /// lease then lapses by its TTL, as after a crash).
    pub async fn release(&self, user: Uuid, connection_id: &Arc<str>) {
        let _ = self
            .changes
            .submit(Change::Release(user, Arc::clone(connection_id)))
            .await;
    }
}

impl LeaseQueues {
    /// Sends the queued changes until `stop` fires (then sends what is still queued).
    pub async fn run(self, usage: UsageClient, stop: CancellationToken) {
        self.changes
            .run(
                IN_FLIGHT,
                move |changes: Vec<Change>| {
                    let usage = usage.clone();
                    async move { send(&usage, changes).await }
                },
                stop,
            )
            .await;
    }
}

/// One `UpdateConnections` for `changes`, answered per change in order.
async fn send(usage: &UsageClient, changes: Vec<Change>) -> Vec<Outcome> {
    let Split {
        releases,
        acquisitions,
        answers,
    } = split(&changes);
    let mut acquired = usage
        .update_connections(&releases, &acquisitions)
        .await
        .into_iter();
    answers
        .into_iter()
        .map(|answer| match answer {
            Answer::Released => None,
            Answer::Acquired => acquired.next(),
            Answer::Dropped => Some(Err(Unavailable {
                code: Code::Cancelled,
            })),
        })
        .collect()
}

/// A batch as it goes out, and where each change's answer comes from.
#[derive(Debug, PartialEq)]
struct Split {
    releases: Vec<(Uuid, Arc<str>)>,
    acquisitions: Vec<(Uuid, Arc<str>, Duration)>,
    answers: Vec<Answer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Released,
    Acquired,
    /// A renewal queued just before its connection closed: usage-service applies releases
    /// first, so sending it would take the lease again after the release.
    Dropped,
}

fn split(changes: &[Change]) -> Split {
    let mut releases = Vec::new();
    for change in changes {
        if let Change::Release(user, id) = change {
            releases.push((*user, Arc::clone(id)));
        }
    }
    let released = |id: &Arc<str>| releases.iter().any(|(_, gone)| gone == id);
    let mut acquisitions = Vec::new();
    let mut answers = Vec::with_capacity(changes.len());
    for change in changes {
        answers.push(match change {
            Change::Release(..) => Answer::Released,
            Change::Acquire(_, id, _) if released(id) => Answer::Dropped,
            Change::Acquire(user, id, ttl) => {
                acquisitions.push((*user, Arc::clone(id), *ttl));
                Answer::Acquired
            }
        });
    }
    Split {
        releases,
        acquisitions,
        answers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_releases_first_and_drops_renewals_of_closed_connections() {
        let user = Uuid::now_v7();
        let ttl = Duration::from_secs(30);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let changes = vec![
            Change::Acquire(user, a.clone(), ttl),
            Change::Acquire(user, b.clone(), ttl),
            Change::Release(user, b.clone()),
            Change::Acquire(user, c.clone(), ttl),
        ];
        assert_eq!(
            split(&changes),
            Split {
                releases: vec![(user, b)],
                acquisitions: vec![(user, a, ttl), (user, c, ttl)],
                answers: vec![
                    Answer::Acquired,
                    Answer::Dropped,
                    Answer::Released,
                    Answer::Acquired
                ],
            }
        );
    }
}
