//! The agent runs of this gateway node, each detached from the connection that started it.
//!
//! A run is a task the node owns, not the connection: a client that drops for a moment finds
//! its run still going and resumes it ([`crate::journal`]). A run ends when its backend ends
//! it, on `cancel_run` from any connection of its user, when nobody has followed it for
//! `GATEWAY_DETACHED_RUN_TIMEOUT`, or when the gateway shuts down; each of these writes the
//! run's one terminal record. An ended run's journal stays for `GATEWAY_RUN_HISTORY_TTL`, for
//! late resumes (and so its id cannot start a second run). The map's lock is a plain mutex
//! held for a lookup or an insert, never across an `.await`.

mod gate;
mod remote;
mod sink;

use std::{
    collections::{HashMap, HashSet},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

use self::sink::JournalSink;
pub use self::{
    gate::UsageToolGate,
    remote::{Resumed, serves},
};
use crate::{
    agent::{self, AgentEvent, Backends, Caller, RunEnd, RunId, RunRequest, RunSettings},
    journal::{Entry, RunJournal, Sources, StopReason, StoreError},
    metrics::GatewayMetrics,
};
use tollgate_shared::shutdown::Shutdown;

/// How long an ended run goes on writing what Redis lacks of its journal.
const FLUSH_WITHIN: Duration = Duration::from_secs(30);

/// How long runs keep their journals, and how long a run may go unfollowed.
#[derive(Clone, Copy, Debug)]
pub struct RetentionSettings {
    /// `GATEWAY_DETACHED_RUN_TIMEOUT`.
    pub detached_timeout: Duration,
    /// `GATEWAY_RUN_HISTORY_TTL`.
    pub history_ttl: Duration,
    /// `GATEWAY_RUN_HISTORY_MAX_BYTES`.
    pub history_max_bytes: usize,
    /// `GATEWAY_NODE_LEASE_TTL`.
    pub node_lease_ttl: Duration,
}

/// What a run needs from the user who started it.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub backends: Arc<Backends>,
    pub settings: RunSettings,
    pub gate: Arc<UsageToolGate>,
    pub caller: Arc<Caller>,
}

/// Why a run was not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStarted {
    /// The `run_id` is in use on this node (a run's id is single-use).
    Exists,
    /// The node is shutting down.
    ShuttingDown,
}

#[derive(Debug)]
pub struct RunRegistry {
    runs: Mutex<HashMap<RunId, Arc<RunJournal>>>,
    /// Ids clients chose for runs being counted and started right now.
    claimed: Mutex<HashSet<RunId>>,
    tasks: TaskTracker,
    /// Fired when runs that outlived the shutdown's grace are to be dropped.
    abort: CancellationToken,
    retention: RetentionSettings,
    metrics: GatewayMetrics,
    /// With Redis: where journals are written, and read from by other nodes.
    remote: Option<Sources>,
}

impl RunRegistry {
    pub fn new(
        retention: RetentionSettings,
        metrics: GatewayMetrics,
        remote: Option<Sources>,
    ) -> Arc<Self> {
        Arc::new(Self {
            runs: Mutex::new(HashMap::new()),
            claimed: Mutex::new(HashSet::new()),
            tasks: TaskTracker::new(),
            abort: CancellationToken::new(),
            retention,
            metrics,
            remote,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RunId, Arc<RunJournal>>> {
        self.runs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Starts `request` for `context`'s user; its journal is returned so that the caller can
    /// follow it from the first record.
    pub fn start(
        &self,
        context: RunContext,
        request: RunRequest,
    ) -> Result<Arc<RunJournal>, NotStarted> {
        let run_id = request.run_id;
        let journal = {
            let mut runs = self.lock();
            if self.tasks.is_closed() {
                return Err(NotStarted::ShuttingDown);
            }
            if runs.contains_key(&run_id) {
                return Err(NotStarted::Exists);
            }
            let journal = Arc::new(RunJournal::new(
                run_id,
                context.caller.user_id,
                self.retention.history_max_bytes,
                CancellationToken::new(),
                self.remote.as_ref().map(|remote| remote.store.clone()),
            ));
            runs.insert(run_id, Arc::clone(&journal));
            self.claims().remove(&run_id);
            journal
        };
        let span = tracing::info_span!("agent.run", %run_id, agent = %request.agent);
        let task = run(Arc::clone(&journal), context, request, self.metrics.clone());
        self.spawn(task.instrument(span));
        Ok(journal)
    }

    /// Runs `task` (a run, or work a run's request left behind such as a refund) until it
    /// ends, or until the shutdown's grace is over.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let abort = self.abort.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = task => {}
                () = abort.cancelled() => tracing::warn!("a run task did not stop in time; dropped"),
            }
        });
    }

    fn claims(&self) -> MutexGuard<'_, HashSet<RunId>> {
        self.claimed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes `run_id`, chosen by `user`'s client, for a run about to be counted and started:
    /// false when a run of that id is on this node or (with Redis) any other, or another
    /// request is taking it. One request at a time counts a run under an id, so two of them
    /// never race for one key at usage-service. Give it back with [`RunRegistry::unclaim`]
    /// when the run is not started; starting it ends the claim.
    pub async fn claim(&self, run_id: RunId, user: Uuid) -> Result<bool, StoreError> {
        {
            let runs = self.lock();
            if runs.contains_key(&run_id) || !self.claims().insert(run_id) {
                return Ok(false);
            }
        }
        let Some(sources) = &self.remote else {
            return Ok(true);
        };
        let claimed = sources.store.claim(run_id, user).await;
        if !matches!(claimed, Ok(true)) {
            self.claims().remove(&run_id);
        }
        claimed
    }

    /// Gives back the claim of a run that was not started (its count was refused, say).
    pub async fn unclaim(&self, run_id: RunId) {
        self.claims().remove(&run_id);
        if let Some(sources) = &self.remote
            && let Err(err) = sources.store.unclaim(run_id).await
        {
            tracing::warn!(error = %err, "giving back a claimed run id failed; it lapses");
        }
    }

    /// Whether new runs are taken (not once shutdown has begun).
    pub fn is_accepting(&self) -> bool {
        !self.tasks.is_closed()
    }

    /// `user`'s run `run_id` on this node; another user's run is no run at all.
    pub fn find(&self, run_id: RunId, user: Uuid) -> Option<Arc<RunJournal>> {
        self.lock()
            .get(&run_id)
            .filter(|journal| journal.owner() == user)
            .cloned()
    }

    /// Stops runs nobody follows any more and forgets runs ended long enough ago, once a
    /// second, until shutdown.
    pub fn spawn_sweeper(self: &Arc<Self>, shutdown: Shutdown) -> JoinHandle<()> {
        let registry = Arc::clone(self);
        tokio::spawn(async move {
            let every = Duration::from_secs(1)
                .min(registry.retention.detached_timeout / 2)
                .max(Duration::from_millis(10));
            while shutdown.sleep(every).await {
                registry.sweep(Instant::now());
            }
        })
    }

    fn sweep(&self, now: Instant) {
        let RetentionSettings {
            detached_timeout,
            history_ttl,
            ..
        } = self.retention;
        let abandoned: Vec<_> = {
            let mut runs = self.lock();
            runs.retain(|_, journal| {
                // A copy of another node's run nobody reads any more stops reading it.
                let idle_copy = journal.remote_node().is_some()
                    && journal.abandoned_for(remote::IDLE_COPY, now);
                if idle_copy {
                    journal.cancel_token().cancel();
                }
                !idle_copy && !journal.expired(history_ttl, now)
            });
            runs.values()
                .filter(|journal| journal.remote_node().is_none())
                .filter(|journal| journal.abandoned_for(detached_timeout, now))
                .cloned()
                .collect()
        };
        for journal in abandoned {
            tracing::info!(run_id = %journal.run_id(), "nobody followed the run; stopping it");
            journal.stop(StopReason::DetachedTimeout);
        }
    }

    /// Stops every run and waits up to `grace` for them to write their end; the rest are
    /// dropped.
    pub async fn stop(&self, grace: Duration) {
        self.tasks.close();
        let journals: Vec<_> = self.lock().values().cloned().collect();
        for journal in journals {
            journal.stop(StopReason::Shutdown);
        }
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            self.abort.cancel();
            self.tasks.wait().await;
        }
    }
}

/// One run, from its backend's first message to its journal's terminal record.
async fn run(
    journal: Arc<RunJournal>,
    context: RunContext,
    request: RunRequest,
    metrics: GatewayMetrics,
) {
    let run_id = request.run_id;
    let sink = JournalSink::new(Arc::clone(&journal));
    let cancel = journal.cancel_token();
    let driven = AssertUnwindSafe(agent::drive(
        &context.backends,
        &request,
        &context.caller,
        context.gate.as_ref(),
        &sink,
        &context.settings,
        &cancel,
    ))
    .catch_unwind()
    .await;
    let end = match driven {
        Ok(end) => end,
        Err(_) => {
            tracing::error!("the run's driver panicked");
            RunEnd::Failed("internal_error".into())
        }
    };
    metrics.run_ended(&request.agent, end.outcome());
    let last = match end {
        RunEnd::Completed => None,
        RunEnd::Failed(reason) => (!journal.is_terminated())
            .then_some(Entry::Event(AgentEvent::AgentFailed { run_id, reason })),
        RunEnd::Unavailable => {
            context.gate.refund_run(run_id).await;
            Some(Entry::Unavailable)
        }
        RunEnd::Cancelled | RunEnd::Disconnected => Some(match journal.stop_reason() {
            Some(StopReason::Shutdown) => Entry::Event(AgentEvent::AgentFailed {
                run_id,
                reason: "gateway_shutdown".into(),
            }),
            Some(StopReason::DetachedTimeout) => Entry::Cancelled {
                reason: Some("detached_timeout"),
            },
            Some(StopReason::Cancelled) | None => Entry::Cancelled { reason: None },
        }),
    };
    if let Some(last) = last {
        journal.append(last).await;
    }
    journal.finish();
    journal.flush(FLUSH_WITHIN).await;
}
