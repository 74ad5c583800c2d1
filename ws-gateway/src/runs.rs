//! Agent runs on a connection: the tool gate backed by usage-service, and the set of runs a
//! connection owns.
//!
//! Each run is a task in the connection's [`JoinSet`], so the connection owns it: closing the
//! connection cancels every run (through a child of the connection's cancellation token) and
//! then aborts whatever has not stopped within a short grace. A run's steps are forwarded to
//! the connection's send queue in order, echoing the `id` of the `run_agent` request; a full
//! queue closes the connection as a slow consumer, like any other message.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    agent::{Executor, RunEnd, RunId, RunRequest, Step, Tool, ToolDenial, ToolGate},
    error::ErrorCode,
    hub::ConnectionHandle,
    limits::{Limits, Meter, Metered},
    metrics::GatewayMetrics,
    protocol::{Outbound, RequestId, ServerMessage, encode_agent_event},
    usage::{Denial, Verdict},
};

/// Steps an executor may have in flight before it waits for the connection.
const STEP_BUFFER: usize = 32;
/// How long runs get to notice cancellation when their connection closes.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The [`ToolGate`] of one user: `Authorize(user, "tool:<name>")`, then
/// `Consume(user, "tool_calls", 1, key = "<run_id>:<step>")`.
#[derive(Debug)]
pub struct UsageToolGate {
    limits: Limits,
    user: Uuid,
    step: AtomicU64,
}

impl UsageToolGate {
    pub fn new(limits: Limits, user: Uuid) -> Self {
        Self {
            limits,
            user,
            step: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl ToolGate for UsageToolGate {
    async fn admit(&self, run_id: &RunId, tool: Tool) -> Result<(), ToolDenial> {
        let action = format!("tool:{}", tool.as_str());
        match self.limits.usage().authorize(self.user, &action).await {
            Ok(Verdict::Allowed) => {}
            Ok(Verdict::Denied {
                reason, upgrade_to, ..
            }) => {
                return Err(match reason {
                    Denial::PlanFeatureMissing => ToolDenial::PlanRequired { upgrade_to },
                    Denial::QuotaExceeded | Denial::RateLimited => ToolDenial::QuotaExceeded,
                    Denial::PermissionDenied | Denial::Unspecified => ToolDenial::Forbidden,
                });
            }
            Err(_) => return Err(ToolDenial::Unavailable),
        }
        let step = self.step.fetch_add(1, Ordering::Relaxed);
        match self
            .limits
            .meter(self.user, Meter::ToolCalls, format!("{run_id}:{step}"))
            .await
        {
            Metered::Allowed => Ok(()),
            Metered::Denied { .. } => Err(ToolDenial::QuotaExceeded),
            Metered::Unavailable => Err(ToolDenial::Unavailable),
        }
    }
}

/// What every run of a connection shares.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub executor: Arc<dyn Executor>,
    pub gate: Arc<UsageToolGate>,
    pub handle: Arc<ConnectionHandle>,
    pub metrics: GatewayMetrics,
}

/// The runs a connection owns.
#[derive(Debug)]
pub struct Runs {
    tasks: JoinSet<RunId>,
    /// Each live run's cancellation token and task id.
    cancels: HashMap<RunId, (CancellationToken, tokio::task::Id)>,
    parent: CancellationToken,
    max: usize,
}

/// How a run task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// It returned (completed, cancelled, failed or disconnected).
    Ended,
    /// It panicked.
    Crashed,
}

impl Runs {
    pub fn new(max: usize) -> Self {
        Self {
            tasks: JoinSet::new(),
            cancels: HashMap::new(),
            parent: CancellationToken::new(),
            max: max.max(1),
        }
    }

    pub fn is_full(&self) -> bool {
        self.cancels.len() >= self.max
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts a run; its steps go to the connection's queue.
    pub fn start(&mut self, context: &RunContext, request: RunRequest, id: Option<RequestId>) {
        let run_id = request.run_id;
        let cancel = self.parent.child_token();
        let token = cancel.clone();
        let span = tracing::info_span!("agent.run", %run_id, agent = %request.agent);
        let context = context.clone();
        let task = self.tasks.spawn(
            async move {
                let (steps, mut received) = mpsc::channel::<Step>(STEP_BUFFER);
                let run = async {
                    let end = context
                        .executor
                        .run(request, context.gate.as_ref(), &steps, cancel)
                        .await;
                    drop(steps);
                    end
                };
                let forward = async {
                    while let Some(step) = received.recv().await {
                        let frame = match &step {
                            Step::Event(event) => encode_agent_event(event, id.as_ref()),
                            Step::Denied { tool, denial } => {
                                let message = denial.message(*tool);
                                let upgrade_to = match denial {
                                    ToolDenial::PlanRequired { upgrade_to } => {
                                        upgrade_to.as_deref()
                                    }
                                    _ => None,
                                };
                                ServerMessage::Error {
                                    id: id.as_ref(),
                                    code: denial.code(),
                                    message: &message,
                                    run_id: Some(&run_id.to_string()),
                                    upgrade_to,
                                }
                                .encode()
                            }
                        };
                        if !context
                            .handle
                            .offer(Outbound::Text(frame), &context.metrics)
                        {
                            break;
                        }
                    }
                };
                let (end, ()) = tokio::join!(run, forward);
                let run_id_text = run_id.to_string();
                let last = match &end {
                    RunEnd::Completed | RunEnd::Disconnected => None,
                    RunEnd::Cancelled => Some(
                        ServerMessage::RunCancelled {
                            id: id.as_ref(),
                            run_id: &run_id_text,
                        }
                        .encode(),
                    ),
                    RunEnd::Failed(message) => Some(
                        ServerMessage::Error {
                            id: id.as_ref(),
                            code: ErrorCode::RunFailed.as_str(),
                            message,
                            run_id: Some(&run_id_text),
                            upgrade_to: None,
                        }
                        .encode(),
                    ),
                };
                if let Some(frame) = last {
                    context
                        .handle
                        .offer(Outbound::Text(frame), &context.metrics);
                }
                tracing::debug!(?end, "run ended");
                run_id
            }
            .instrument(span),
        );
        self.cancels.insert(run_id, (token, task.id()));
    }

    /// Cancels one run; false when this connection has no such run.
    pub fn cancel(&mut self, run_id: &str) -> bool {
        let Ok(run_id) = run_id.parse::<RunId>() else {
            return false;
        };
        match self.cancels.get(&run_id) {
            Some((token, _)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Waits for the next run to end (pending forever when there is none) and says whether it
    /// ended in a panic: a bug in an executor, after which the connection is closed with 1011
    /// rather than left with a run that will never answer.
    pub async fn next_finished(&mut self) -> Finished {
        match self.tasks.join_next().await {
            Some(Ok(run_id)) => {
                self.cancels.remove(&run_id);
                Finished::Ended
            }
            Some(Err(err)) => {
                tracing::error!(error = %err, "a run task failed");
                let failed = err.id();
                self.cancels.retain(|_, (_, task)| *task != failed);
                Finished::Crashed
            }
            None => std::future::pending().await,
        }
    }

    /// Cancels every run, waits briefly for them to stop, then aborts the rest.
    pub async fn stop(&mut self) {
        self.parent.cancel();
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("runs did not stop in time; aborting them");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        self.cancels.clear();
    }
}
