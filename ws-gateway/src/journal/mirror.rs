//! Following a run that another node runs: a local copy of its journal, filled from Redis.
//!
//! The copy subscribes to the run's channel first (and waits until Redis has the subscription),
//! then reads the stream from the record after the client's `seq`, then takes live records as
//! they are published. Every record carries its `seq`, and the copy only ever appends the next
//! one: a live record already read from the stream is dropped, and a live record past the next
//! one (a message lost, or the copy fell behind) sends it back to the stream for what is
//! missing. The stream is also read every few seconds, so a lost last message is found too. A
//! gap the stream cannot fill any more (trimmed meanwhile) ends the copy with `run_resumed
//! {recovered: false}` rather than a part of the run.

use std::{sync::Arc, time::Duration};

use futures::{FutureExt, future::BoxFuture};
use tokio::{sync::broadcast::error::RecvError, time::MissedTickBehavior};
use tollgate_shared::engine::{Engine, Interest};
use uuid::Uuid;

use super::{Attach, Entry, Follower, RunJournal, RunStore, Snapshot, StoreError, channel};
use crate::agent::RunId;

/// How often a copy reads the stream whatever it heard.
const POLL: Duration = Duration::from_secs(2);

/// What a resume of another node's run finds.
pub enum Mirrored {
    /// No run of that user is known.
    Unknown,
    /// The asked `seq` is past the run's last one.
    Ahead { last_seq: u64 },
    /// The stream no longer holds the record after the asked `seq`.
    Snapshot(Snapshot),
    /// Follow with `follower`; `feeder` fills the copy and must be run (it ends with the run).
    Follow {
        follower: Follower,
        feeder: BoxFuture<'static, ()>,
    },
}

impl std::fmt::Debug for Mirrored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown => f.write_str("Unknown"),
            Self::Ahead { last_seq } => write!(f, "Ahead({last_seq})"),
            Self::Snapshot(snapshot) => f.debug_tuple("Snapshot").field(snapshot).finish(),
            Self::Follow { follower, .. } => f.debug_tuple("Follow").field(follower).finish(),
        }
    }
}

/// The sources a copy reads.
#[derive(Clone, Debug)]
pub struct Sources {
    pub store: RunStore,
    pub engine: Engine,
    pub interest: Interest,
}

/// Starts a copy of `user`'s run `run_id` from the record after `after_seq`.
pub async fn mirror(
    sources: &Sources,
    run_id: RunId,
    user: Uuid,
    after_seq: u64,
    max_bytes: usize,
) -> Result<Mirrored, StoreError> {
    let Some(mut meta) = sources.store.meta(run_id).await? else {
        return Ok(Mirrored::Unknown);
    };
    if meta.user != user {
        return Ok(Mirrored::Unknown);
    }
    if !meta.ended && !sources.store.is_alive(&meta.node).await? {
        sources.store.close_lost(run_id, &meta).await?;
        meta = sources.store.meta(run_id).await?.unwrap_or(meta);
    }
    if after_seq > meta.last_seq {
        return Ok(Mirrored::Ahead {
            last_seq: meta.last_seq,
        });
    }
    let channel = channel(run_id);
    let bus = sources.engine.subscribe();
    let subscribed = sources.interest.subscribe(&channel).await.is_ok()
        && sources.interest.status().await.is_ok();
    if !subscribed {
        return Err(StoreError::new("the run's channel could not be subscribed"));
    }
    let first = sources.store.range(run_id, after_seq + 1).await;
    let covered = match &first {
        Ok(records) => {
            after_seq == meta.last_seq
                || records
                    .first()
                    .is_some_and(|(seq, _)| *seq == after_seq + 1)
        }
        Err(_) => false,
    };
    if !covered {
        let _ = sources.interest.unsubscribe(&channel).await;
        return match first {
            Err(err) => Err(err),
            Ok(_) => Ok(Mirrored::Snapshot(meta.snapshot)),
        };
    }
    tracing::debug!(
        after_seq,
        last_seq = meta.last_seq,
        ended = meta.ended,
        read = first.as_ref().map_or(0, Vec::len),
        "following a copy of another node's run"
    );
    let journal = Arc::new(RunJournal::remote(
        run_id, user, max_bytes, after_seq, meta.node,
    ));
    let Attach::Follow(follower) = journal.attach(after_seq) else {
        unreachable!("a new copy holds everything after its start")
    };
    let feeder = Feeder {
        journal,
        sources: sources.clone(),
        channel,
        next: after_seq + 1,
    };
    Ok(Mirrored::Follow {
        follower,
        feeder: feeder.run(bus, first.unwrap_or_default()).boxed(),
    })
}

struct Feeder {
    journal: Arc<RunJournal>,
    sources: Sources,
    channel: String,
    /// The seq of the next record the copy needs.
    next: u64,
}

/// Whether the copy is complete (its terminal record is in, or it cannot go on).
type Done = bool;

impl Feeder {
    async fn run(
        mut self,
        mut bus: tokio::sync::broadcast::Receiver<tollgate_shared::engine::BusMessage>,
        first: Vec<(u64, String)>,
    ) {
        let cancel = self.journal.cancel_token();
        // One timer for the whole copy: a poll that every bus message (any channel's) put off
        // again would never come on a busy node.
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + POLL, POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut done = self.take(first).await;
        while !done {
            done = tokio::select! {
                heard = bus.recv() => match heard {
                    Ok(message) if message.channel == self.channel => {
                        self.heard(&message.payload).await
                    }
                    Ok(_) => false,
                    Err(RecvError::Lagged(_)) => self.fill().await,
                    Err(RecvError::Closed) => true,
                },
                _ = poll.tick() => self.fill().await || self.owner_lost().await,
                () = cancel.cancelled() => true,
            };
        }
        self.journal.finish();
        tracing::debug!(next = self.next, "a copy of another node's run is complete");
        let _ = self.sources.interest.unsubscribe(&self.channel).await;
    }

    /// A live record: the next one is taken, an old one dropped, one past the next sends the
    /// copy to the stream for what it missed.
    async fn heard(&mut self, frame: &str) -> Done {
        match Entry::from_wire(frame) {
            Some((seq, entry)) if seq == self.next => self.append(entry).await,
            Some((seq, _)) if seq > self.next => self.fill().await,
            _ => false,
        }
    }

    /// Ends the run with `node_lost` when the node that runs it has stopped renewing its lease
    /// (whichever node notices first writes it, once), and reads that end.
    async fn owner_lost(&mut self) -> Done {
        let store = &self.sources.store;
        let Some(node) = self.journal.remote_node() else {
            return false;
        };
        if !matches!(store.is_alive(node).await, Ok(false)) {
            return false;
        }
        let run_id = self.journal.run_id();
        if let Ok(Some(meta)) = store.meta(run_id).await
            && !meta.ended
            && let Err(err) = store.close_lost(run_id, &meta).await
        {
            tracing::warn!(error = %err, "ending a run whose node is gone failed");
        }
        self.fill().await
    }

    /// Reads the stream from the next record on.
    async fn fill(&mut self) -> Done {
        loop {
            match self
                .sources
                .store
                .range(self.journal.run_id(), self.next)
                .await
            {
                Ok(records) if records.is_empty() => {
                    tracing::debug!(next = self.next, "nothing new in a run's stream");
                    return false;
                }
                Ok(records) => {
                    let full = records.len() >= super::store::READ_BATCH;
                    if self.take(records).await {
                        return true;
                    }
                    if !full {
                        return false;
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "reading a run's journal failed; retrying");
                    return false;
                }
            }
        }
    }

    async fn take(&mut self, records: Vec<(u64, String)>) -> Done {
        for (seq, frame) in records {
            if seq < self.next {
                continue;
            }
            if seq > self.next {
                // Trimmed from the stream before this copy read it: never deliver a part.
                let snapshot = match self.sources.store.meta(self.journal.run_id()).await {
                    Ok(Some(meta)) => meta.snapshot,
                    _ => Snapshot::default(),
                };
                return self.append(Entry::Lost(snapshot)).await;
            }
            let Some((_, entry)) = Entry::from_wire(&frame) else {
                tracing::warn!(
                    seq,
                    "a run's journal holds a record that is not a run frame"
                );
                return self.append(Entry::Lost(Snapshot::default())).await;
            };
            if self.append(entry).await {
                return true;
            }
        }
        false
    }

    async fn append(&mut self, entry: Entry) -> Done {
        let terminal = entry.is_terminal();
        self.journal.append(entry).await;
        self.next += 1;
        terminal
    }
}
