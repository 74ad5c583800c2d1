//! The feed behind `WatchRevocations`: every revocation this replica makes or hears from the
//! others (through the engine bus), kept in a bounded recent history and fanned out live.
//!
//! The gateway watches it so that it learns of revocations even when auth-service and the
//! gateway share no Redis (the embedded default runs each service as its own process, so the
//! in-process bus cannot reach across). Memory is bounded twice: the history keeps the last
//! [`HISTORY`] revocations, and each watcher has a buffer of [`BUFFER`] revocations; a watcher
//! that falls further behind gets an error and reconnects, asking for the history since the
//! last revocation it saw. Streams end when the replica shuts down, so they never hold up
//! its drain.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use futures::{Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tollgate_shared::{events::Revocation, shutdown::Shutdown};

/// Revocations remembered for replay.
pub const HISTORY: usize = 4096;
/// Revocations buffered per watcher before it counts as lagging.
pub const BUFFER: usize = 256;

/// A watcher fell more than [`BUFFER`] revocations behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the watcher fell {missed} revocations behind")]
pub struct Lagged {
    pub missed: u64,
}

#[derive(Debug)]
pub struct RevocationFeed {
    history: Mutex<VecDeque<Revocation>>,
    live: broadcast::Sender<Revocation>,
    shutdown: Shutdown,
}

impl RevocationFeed {
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            history: Mutex::new(VecDeque::with_capacity(64)),
            live: broadcast::Sender::new(BUFFER),
            shutdown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Revocation>> {
        self.history
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Remembers a revocation and passes it to every watcher.
    pub fn record(&self, revocation: Revocation) {
        {
            let mut history = self.lock();
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(revocation.clone());
        }
        let _ = self.live.send(revocation);
    }

    /// The remembered revocations since `since_ms`, then the live ones, until the watcher lags
    /// (one `Err`, then the end) or the replica shuts down. A revocation may appear twice
    /// around the switch from replay to live; watchers deduplicate by session.
    pub fn watch(
        self: &Arc<Self>,
        since_ms: i64,
    ) -> impl Stream<Item = Result<Revocation, Lagged>> + Send + 'static {
        // Subscribe before copying the history, so nothing falls between the two.
        let receiver = self.live.subscribe();
        let replay: Vec<Revocation> = self
            .lock()
            .iter()
            .filter(|revocation| revocation.revoked_at_ms >= since_ms)
            .cloned()
            .collect();
        let live = futures::stream::unfold(Some(receiver), |state| async move {
            let mut receiver = state?;
            match receiver.recv().await {
                Ok(revocation) => Some((Ok(revocation), Some(receiver))),
                Err(RecvError::Lagged(missed)) => Some((Err(Lagged { missed }), None)),
                Err(RecvError::Closed) => None,
            }
        });
        let shutdown = self.shutdown.clone();
        futures::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .take_until(async move { shutdown.wait().await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn revocation(at: i64) -> Revocation {
        Revocation {
            session_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            revoked_at_ms: at,
            reason: "logout".into(),
        }
    }

    #[tokio::test]
    async fn replays_from_since_then_follows_live() {
        let feed = Arc::new(RevocationFeed::new(Shutdown::new()));
        let (old, recent) = (revocation(1_000), revocation(2_000));
        feed.record(old);
        feed.record(recent.clone());
        let mut stream = Box::pin(feed.watch(1_500));
        assert_eq!(stream.next().await, Some(Ok(recent)));
        let live = revocation(3_000);
        feed.record(live.clone());
        assert_eq!(stream.next().await, Some(Ok(live)));
    }

    #[tokio::test]
    async fn a_lagging_watcher_gets_an_error_then_the_end() {
        let feed = Arc::new(RevocationFeed::new(Shutdown::new()));
        let mut stream = Box::pin(feed.watch(i64::MAX));
        for at in 0..(BUFFER as i64 + 10) {
            feed.record(revocation(at));
        }
        let mut lagged = false;
        while let Some(item) = stream.next().await {
            if item.is_err() {
                lagged = true;
            }
        }
        assert!(lagged);
    }

    #[tokio::test]
    async fn history_is_bounded_and_streams_end_on_shutdown() {
        let shutdown = Shutdown::new();
        let feed = Arc::new(RevocationFeed::new(shutdown.clone()));
        for at in 0..(HISTORY as i64 + 5) {
            feed.record(revocation(at));
        }
        assert_eq!(feed.lock().len(), HISTORY);
        let stream = feed.watch(i64::MAX);
        shutdown.trigger();
        assert_eq!(stream.count().await, 0);
    }
}
