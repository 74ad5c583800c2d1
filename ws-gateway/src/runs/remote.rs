//! Runs across nodes (with Redis): resuming a run another node runs, through a local copy of
//! its journal, and cancelling it, through that node's control channel (`node:{<bus id>}`),
//! which each node follows for the runs it runs.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tollgate_shared::{engine::Heard, shutdown::Shutdown};
use uuid::Uuid;

use super::RunRegistry;
use crate::{
    agent::RunId,
    journal::{self, Mirrored, RunJournal, StopReason, StoreError},
};

/// How long a copy of another node's run goes on with nobody reading it.
pub(super) const IDLE_COPY: Duration = Duration::from_secs(5);

/// A request to the node that runs a run.
#[derive(Debug, Serialize, Deserialize)]
struct Control {
    cancel: RunId,
    user: Uuid,
}

fn control_channel(node: &str) -> String {
    format!("gateway:node:{{{node}}}")
}

/// What a resume of a run not on this node found.
#[derive(Debug)]
pub enum Resumed {
    /// Follow this copy.
    Follow(journal::Follower),
    Unknown,
    Ahead {
        last_seq: u64,
    },
    Snapshot(journal::Snapshot),
}

impl RunRegistry {
    /// Whether runs of other nodes can be resumed and cancelled here (with Redis).
    pub fn spans_nodes(&self) -> bool {
        self.remote.is_some()
    }

    /// Follows `user`'s run `run_id`, which this node does not run (or whose copy here does
    /// not reach back to `after_seq`), from Redis.
    pub async fn resume_remote(
        &self,
        run_id: RunId,
        user: Uuid,
        after_seq: u64,
    ) -> Result<Resumed, StoreError> {
        let Some(sources) = &self.remote else {
            return Ok(Resumed::Unknown);
        };
        let max_bytes = self.retention.history_max_bytes;
        Ok(
            match journal::mirror(sources, run_id, user, after_seq, max_bytes).await? {
                Mirrored::Unknown => Resumed::Unknown,
                Mirrored::Ahead { last_seq } => Resumed::Ahead { last_seq },
                Mirrored::Snapshot(snapshot) => Resumed::Snapshot(snapshot),
                Mirrored::Follow { follower, feeder } => {
                    let copy = Arc::clone(follower.journal());
                    let mut runs = self.lock();
                    if runs
                        .get(&run_id)
                        .is_none_or(|known| known.remote_node().is_some())
                    {
                        runs.insert(run_id, copy);
                    }
                    drop(runs);
                    self.spawn(feeder);
                    Resumed::Follow(follower)
                }
            },
        )
    }

    /// Cancels `user`'s run `run_id`, here or on the node that runs it; false when there is
    /// no such run in progress.
    pub async fn cancel(&self, run_id: RunId, user: Uuid) -> bool {
        let local = self.find(run_id, user);
        if let Some(journal) = &local
            && journal.remote_node().is_none()
        {
            return journal.stop(StopReason::Cancelled);
        }
        let Some(sources) = &self.remote else {
            return false;
        };
        let meta = match sources.store.meta(run_id).await {
            Ok(Some(meta)) if meta.user == user && !meta.ended => meta,
            Ok(_) => return false,
            Err(err) => {
                tracing::warn!(error = %err, "looking up a run to cancel failed");
                return false;
            }
        };
        let control = Control {
            cancel: run_id,
            user,
        };
        let Ok(payload) = serde_json::to_string(&control) else {
            return false;
        };
        sources
            .engine
            .publish_to(&control_channel(&meta.node), payload)
            .await;
        true
    }

    /// Renews this node's lease (a third of its lifetime apart) until shutdown, so that other
    /// nodes can tell its runs from those of a node that died; nothing to do without Redis.
    pub fn spawn_node_lease(self: &Arc<Self>, shutdown: Shutdown) -> Option<JoinHandle<()>> {
        let store = self.remote.as_ref()?.store.clone();
        let ttl = self.retention.node_lease_ttl;
        Some(tokio::spawn(async move {
            loop {
                if let Err(err) = store.renew_lease(ttl).await {
                    tracing::warn!(error = %err, "renewing this node's lease failed");
                }
                if !shutdown.sleep(ttl / 3).await {
                    return;
                }
            }
        }))
    }

    /// Follows this node's control channel (cancels of its runs sent from other nodes) until
    /// shutdown; nothing to follow without Redis.
    pub fn spawn_control_listener(self: &Arc<Self>, shutdown: Shutdown) -> Option<JoinHandle<()>> {
        let sources = self.remote.as_ref()?;
        let channel = control_channel(sources.engine.node());
        let interest = sources.interest.clone();
        let registry = Arc::clone(self);
        let mine = channel.clone();
        let listener = sources.engine.spawn_listener(shutdown, move |heard| {
            let registry = Arc::clone(&registry);
            let mine = mine.clone();
            async move {
                let Heard::Message(message) = heard else {
                    return;
                };
                if message.channel != mine {
                    return;
                }
                match serde_json::from_str::<Control>(&message.payload) {
                    Ok(Control { cancel, user }) => {
                        if let Some(journal) = registry.find(cancel, user) {
                            journal.stop(StopReason::Cancelled);
                        }
                    }
                    Err(_) => tracing::warn!("a control message that is not one was ignored"),
                }
            }
        });
        Some(tokio::spawn(async move {
            if let Err(err) = interest.subscribe(&channel).await {
                tracing::error!(error = %err, "following this node's control channel failed");
            }
            let _ = listener.await;
        }))
    }
}

/// Whether a journal found on this node can serve a resume from `after_seq` itself.
pub fn serves(journal: &RunJournal, after_seq: u64) -> bool {
    journal.remote_node().is_none() || journal.covers(after_seq)
}
