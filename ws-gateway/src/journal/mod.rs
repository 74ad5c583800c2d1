//! A run's journal: every event the run emits, numbered (`seq` 1, 2, …) and kept in a bounded
//! log before any client sees it.
//!
//! Why a log between the run and its clients: a run outlives the connection that started it,
//! and a client that drops and comes back (on any connection of the same user) resumes with the
//! last `seq` it saw. Each client reads the log through its own cursor ([`Follower`]), so the
//! events it missed and the live ones arrive as one sequence, with no gap and no repeat, and a
//! resume never needs to merge two sources.
//!
//! The log is capped in bytes. Records every follower has read are dropped to make room; a
//! record an attached follower has not read yet is never dropped, so the run waits for its
//! slowest attached reader (as it always did) instead of cutting that reader's stream. A run
//! nobody follows trims freely; a later resume that asks for a dropped record gets a summary
//! of the run instead of a part of it ([`Attach::Snapshot`]).
//!
//! The lock is a plain mutex held for a push, a read or a cursor move, never across an
//! `.await`.

mod follow;
mod mirror;
mod record;
mod store;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tollgate_shared::backoff::ExponentialBackoff;
use uuid::Uuid;

pub use self::{
    follow::follow,
    mirror::{Mirrored, Sources, mirror},
    record::{Entry, Outcome, Record, Snapshot},
    store::{Meta, RunStore, StoreError, channel},
};
use crate::agent::RunId;

/// Most records one read hands a follower.
const READ_BATCH: usize = 256;

/// Why a run was stopped before its backend ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `cancel_run` from a connection of the run's user.
    Cancelled,
    /// Nobody followed the run for `GATEWAY_DETACHED_RUN_TIMEOUT`.
    DetachedTimeout,
    /// The gateway is shutting down.
    Shutdown,
}

/// One run's journal, shared by the run's task and the connections that follow it.
#[derive(Debug)]
pub struct RunJournal {
    run_id: RunId,
    owner: Uuid,
    max_bytes: usize,
    /// Where each record is written before it is delivered, for the run's own journal on
    /// Redis.
    store: Option<RunStore>,
    /// For a copy of another node's journal: that node's bus id (a cancel goes there).
    remote: Option<String>,
    state: Mutex<State>,
    /// New records, or the end.
    appended: Notify,
    /// A follower moved its cursor or went away: room, perhaps, for a waiting append.
    progress: Notify,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    last_seq: u64,
    records: VecDeque<Arc<Record>>,
    bytes: usize,
    /// Each attached follower's cursor: the last `seq` it has taken.
    followers: HashMap<u64, u64>,
    next_follower: u64,
    /// The last seq written to the store, for a journal with one.
    stored_seq: u64,
    /// Since when nobody follows the run (`None` while someone does).
    detached_since: Option<Instant>,
    snapshot: Snapshot,
    ended_at: Option<Instant>,
    stop: Option<StopReason>,
}

impl State {
    fn first_seq(&self) -> u64 {
        self.records
            .front()
            .map_or(self.last_seq + 1, |record| record.seq)
    }

    /// Drops the oldest records every follower has read until `room` bytes would fit.
    fn trim(&mut self, max_bytes: usize, room: usize) {
        let read_by_all = self.followers.values().copied().min().unwrap_or(u64::MAX);
        while self.bytes + room > max_bytes
            && let Some(front) = self.records.front()
            && front.seq <= read_by_all
        {
            self.bytes -= front.entry.size();
            self.records.pop_front();
        }
    }
}

/// What a resume gets.
#[derive(Debug)]
pub enum Attach {
    /// The log holds every record after the asked `seq`: follow from there.
    Follow(Follower),
    /// It does not: the run as it stands, and nothing replayed.
    Snapshot(Snapshot),
    /// The asked `seq` is past the run's last one.
    Ahead { last_seq: u64 },
    /// The asker follows the run already ([`RunJournal::check`]).
    Following,
}

impl RunJournal {
    /// The journal of a run this node runs; with a `store`, each record is also written there
    /// (before any follower sees it).
    pub fn new(
        run_id: RunId,
        owner: Uuid,
        max_bytes: usize,
        cancel: CancellationToken,
        store: Option<RunStore>,
    ) -> Self {
        Self {
            run_id,
            owner,
            max_bytes: max_bytes.max(1),
            store,
            remote: None,
            state: Mutex::new(State {
                detached_since: Some(Instant::now()),
                ..State::default()
            }),
            appended: Notify::new(),
            progress: Notify::new(),
            cancel,
        }
    }

    /// A local copy of the journal of a run that `node` runs, holding the records after
    /// `after_seq` as they are read from Redis.
    pub fn remote(
        run_id: RunId,
        owner: Uuid,
        max_bytes: usize,
        after_seq: u64,
        node: String,
    ) -> Self {
        let journal = Self::new(run_id, owner, max_bytes, CancellationToken::new(), None);
        journal.lock().last_seq = after_seq;
        Self {
            remote: Some(node),
            ..journal
        }
    }

    /// For a copy of another node's journal: that node's bus id.
    pub fn remote_node(&self) -> Option<&str> {
        self.remote.as_deref()
    }

    /// The seq of the latest record.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// Fired when the run is stopped (see [`Self::stop`]).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Adds a record, waiting while the log is full of records an attached follower has not
    /// read. A terminal record never waits (it may overrun the cap by itself). With a store,
    /// the record is written there first. Returns its seq.
    pub async fn append(&self, entry: Entry) -> u64 {
        let size = entry.size();
        let terminal = entry.is_terminal();
        let (record, snapshot) = loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                let mut state = self.lock();
                state.trim(self.max_bytes, size);
                let fits = state.bytes + size <= self.max_bytes || state.records.is_empty();
                if fits || terminal || self.cancel.is_cancelled() {
                    let seq = state.last_seq + 1;
                    let mut snapshot = state.snapshot.clone();
                    snapshot.record(&entry, seq);
                    break (Record { seq, entry }, snapshot);
                }
            }
            tokio::select! {
                () = &mut progress => {}
                () = self.cancel.cancelled() => {}
            }
        };
        let seq = record.seq;
        // From here on the record goes into the log even if the caller stops waiting (a
        // run cancelled mid-write): Redis may already hold this seq, and the next record must
        // not be numbered the same.
        let pending = Pending {
            journal: self,
            record: Arc::new(record),
            snapshot,
            size,
        };
        if let Some(store) = &self.store {
            self.store_through(store, &pending.record, &pending.snapshot)
                .await;
        }
        drop(pending);
        seq
    }

    /// Puts a numbered record into the log and wakes its followers.
    fn push(&self, record: Arc<Record>, snapshot: Snapshot, size: usize) {
        let mut state = self.lock();
        state.last_seq = record.seq;
        state.snapshot = snapshot;
        state.bytes += size;
        state.records.push_back(record);
        drop(state);
        self.appended.notify_waiters();
    }

    /// Writes to Redis every record it lacks, up to `record`, in order (a record whose write
    /// failed is written again before the next one, so Redis never skips one it can still
    /// get). Followers on this node are served either way.
    async fn store_through(&self, store: &RunStore, record: &Record, snapshot: &Snapshot) {
        // Records are in seq order, so what Redis lacks is at the back (usually nothing).
        let behind: Vec<Arc<Record>> = {
            let state = self.lock();
            let mut behind: Vec<_> = state
                .records
                .iter()
                .rev()
                .take_while(|earlier| earlier.seq > state.stored_seq)
                .cloned()
                .collect();
            behind.reverse();
            behind
        };
        for earlier in &behind {
            let current = self.lock().snapshot.clone();
            if !self.stored(store, earlier, &current).await {
                return;
            }
        }
        if record.seq > self.lock().stored_seq {
            self.stored(store, record, snapshot).await;
        }
    }

    /// Writes one record to the store; whether it is there now.
    async fn stored(&self, store: &RunStore, record: &Record, snapshot: &Snapshot) -> bool {
        match store
            .append(self.run_id, self.owner, record, snapshot)
            .await
        {
            Ok(true) => {
                self.lock().stored_seq = record.seq;
                true
            }
            Ok(false) => {
                // Another node found this node's lease lapsed and ended the run there.
                tracing::warn!("the run was ended as node_lost by another node; stopping it");
                self.cancel.cancel();
                false
            }
            Err(err) => {
                // Written after the next successful write, in order; a resume elsewhere may
                // find the stream short meanwhile.
                tracing::debug!(error = %err, "writing a run's record to redis failed");
                false
            }
        }
    }

    /// For a run's own journal with a store: keeps writing the records Redis lacks (after
    /// failed writes) for at most `within`, so that a resume on another node gets the run's
    /// end. Called once the run has ended.
    pub async fn flush(&self, within: Duration) {
        let Some(store) = &self.store else {
            return;
        };
        let deadline = Instant::now() + within;
        let mut backoff =
            ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(2), 0.5)
                .start();
        loop {
            let last = {
                let state = self.lock();
                if state.stored_seq >= state.last_seq {
                    return;
                }
                state.records.back().cloned()
            };
            let Some(last) = last else { return };
            let snapshot = self.lock().snapshot.clone();
            self.store_through(store, &last, &snapshot).await;
            if self.lock().stored_seq >= last.seq || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// The run is over: nothing more is appended, and followers stop once they have read all.
    pub fn finish(&self) {
        self.lock().ended_at = Some(Instant::now());
        self.appended.notify_waiters();
    }

    pub fn is_ended(&self) -> bool {
        self.lock().ended_at.is_some()
    }

    /// Whether the run's terminal record is in (it may still be finishing).
    pub fn is_terminated(&self) -> bool {
        self.lock().snapshot.ended
    }

    /// Attaches a follower that has seen every record up to `after_seq`.
    pub fn attach(self: &Arc<Self>, after_seq: u64) -> Attach {
        let mut state = self.lock();
        if after_seq > state.last_seq {
            return Attach::Ahead {
                last_seq: state.last_seq,
            };
        }
        if after_seq + 1 < state.first_seq() {
            return Attach::Snapshot(state.snapshot.clone());
        }
        let id = state.next_follower;
        state.next_follower += 1;
        state.followers.insert(id, after_seq);
        state.detached_since = None;
        Attach::Follow(Follower {
            journal: Arc::clone(self),
            id,
            cursor: after_seq,
        })
    }

    /// Whether a follower from `after_seq` would get every record after it.
    pub fn covers(&self, after_seq: u64) -> bool {
        let state = self.lock();
        after_seq <= state.last_seq && after_seq + 1 >= state.first_seq()
    }

    /// For a reader that already follows the run: whether `after_seq` is a seq of the run.
    pub fn check(&self, after_seq: u64) -> Attach {
        let last_seq = self.lock().last_seq;
        if after_seq > last_seq {
            Attach::Ahead { last_seq }
        } else {
            Attach::Following
        }
    }

    /// Stops the run (the first reason wins); false when it has already ended.
    pub fn stop(&self, reason: StopReason) -> bool {
        {
            let mut state = self.lock();
            if state.snapshot.ended {
                return false;
            }
            state.stop.get_or_insert(reason);
        }
        self.cancel.cancel();
        true
    }

    /// Why the run was stopped, if it was.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.lock().stop
    }

    /// Whether the run is still going and nobody has followed it for `timeout`.
    pub fn abandoned_for(&self, timeout: Duration, now: Instant) -> bool {
        let state = self.lock();
        state.ended_at.is_none()
            && state
                .detached_since
                .is_some_and(|since| now.duration_since(since) >= timeout)
    }

    /// Whether the run ended more than `ttl` ago.
    pub fn expired(&self, ttl: Duration, now: Instant) -> bool {
        self.lock()
            .ended_at
            .is_some_and(|ended| now.duration_since(ended) >= ttl)
    }
}

/// One reader of a journal, with its cursor. Dropping it detaches the reader.
#[derive(Debug)]
pub struct Follower {
    journal: Arc<RunJournal>,
    id: u64,
    cursor: u64,
}

/// What a follower's next read found.
#[derive(Debug)]
pub enum Read {
    Records(Vec<Arc<Record>>),
    /// Nothing new yet.
    Wait,
    /// The run ended and every record has been read.
    Done,
}

impl Follower {
    pub fn journal(&self) -> &Arc<RunJournal> {
        &self.journal
    }

    /// The records after the cursor (at most a batch), without moving it.
    pub fn read(&self) -> Read {
        let state = self.journal.lock();
        let first = state.first_seq();
        let skip = (self.cursor + 1).saturating_sub(first) as usize;
        let records: Vec<_> = state
            .records
            .iter()
            .skip(skip)
            .take(READ_BATCH)
            .cloned()
            .collect();
        if !records.is_empty() {
            Read::Records(records)
        } else if state.ended_at.is_some() {
            Read::Done
        } else {
            Read::Wait
        }
    }

    /// Marks every record up to `seq` as delivered (room for the log to trim them).
    pub fn advance(&mut self, seq: u64) {
        self.cursor = seq;
        self.journal.lock().followers.insert(self.id, seq);
        self.journal.progress.notify_waiters();
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        {
            let mut state = self.journal.lock();
            state.followers.remove(&self.id);
            if state.followers.is_empty() {
                state.detached_since = Some(Instant::now());
            }
        }
        self.journal.progress.notify_waiters();
    }
}

/// A numbered record on its way into the log: pushed when dropped, whether the append that
/// numbered it finished its write to Redis or was dropped while waiting for it.
struct Pending<'a> {
    journal: &'a RunJournal,
    record: Arc<Record>,
    snapshot: Snapshot,
    size: usize,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let snapshot = std::mem::take(&mut self.snapshot);
        self.journal
            .push(Arc::clone(&self.record), snapshot, self.size);
    }
}

#[cfg(test)]
mod tests;
