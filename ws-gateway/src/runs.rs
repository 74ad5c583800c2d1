//! Agent runs on a connection: the tool gate backed by usage-service, the sink that queues a
//! run's events for the client, and the set of runs a connection owns.
//!
//! Each run is a task in the connection's [`JoinSet`], so the connection owns it: closing the
//! connection cancels every run (through a child of the connection's cancellation token) and
//! then aborts whatever has not stopped within a short grace. A run's events go to the
//! connection's send queue in order, echoing the `id` of the `run_agent` request; a run waits
//! for a slow reader (merging its deltas meanwhile) instead of closing the connection.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    agent::{
        self, AgentEvent, Backends, Caller, Gone, RunEnd, RunId, RunRequest, RunSettings, RunSink,
        Step, ToolDenial, ToolGate, ToolName,
    },
    error::ErrorReply,
    hub::ConnectionHandle,
    limits::{Limits, Meter, Metered},
    metrics::GatewayMetrics,
    protocol::{DeltaFrame, Outbound, RequestId, ServerMessage, encode_agent_event},
    usage::{Denial, Verdict},
};

/// The [`ToolGate`] of one user: `Authorize(user, "tool:<name>")`, then `Consume` of the
/// tool's cost under the key `<run_id>:<call_id>`.
#[derive(Debug)]
pub struct UsageToolGate {
    limits: Limits,
    user: Uuid,
}

impl UsageToolGate {
    pub fn new(limits: Limits, user: Uuid) -> Self {
        Self { limits, user }
    }

    /// Gives back the `agent_runs` unit of a run that never reached its agent (it was counted
    /// under the run's id before the backend was asked).
    pub async fn refund_run(&self, run_id: RunId) {
        self.limits
            .refund(self.user, Meter::AgentRuns, run_id.to_string())
            .await;
    }
}

#[async_trait]
impl ToolGate for UsageToolGate {
    async fn admit(
        &self,
        run_id: &RunId,
        call_id: &str,
        tool: &ToolName,
    ) -> Result<(), ToolDenial> {
        let action = format!("tool:{tool}");
        let cost = match self.limits.usage().authorize(self.user, &action).await {
            Ok((Verdict::Allowed, cost)) => cost,
            Ok((
                Verdict::Denied {
                    reason, upgrade_to, ..
                },
                _,
            )) => {
                return Err(match reason {
                    Denial::PlanFeatureMissing => ToolDenial::PlanRequired { upgrade_to },
                    Denial::QuotaExceeded | Denial::RateLimited => ToolDenial::QuotaExceeded,
                    Denial::PermissionDenied | Denial::Unspecified => ToolDenial::Forbidden,
                });
            }
            Err(unavailable) if unavailable.code == tonic::Code::InvalidArgument => {
                return Err(ToolDenial::UnknownTool);
            }
            Err(_) => return Err(ToolDenial::Unavailable),
        };
        match self
            .limits
            .meter_tool_call(self.user, &cost, format!("{run_id}:{call_id}"))
            .await
        {
            Metered::Allowed => Ok(()),
            Metered::Denied { .. } => Err(ToolDenial::QuotaExceeded),
            Metered::Unavailable => Err(ToolDenial::Unavailable),
        }
    }
}

/// Delivers one run's steps to its connection's send queue.
#[derive(Debug)]
struct QueueSink {
    handle: Arc<ConnectionHandle>,
    run_id: RunId,
    /// The `id` of the `run_agent` request, echoed in every event.
    id: Option<RequestId>,
}

impl QueueSink {
    async fn send(&self, item: Outbound) -> Result<(), Gone> {
        if self.handle.offer_run(item).await {
            Ok(())
        } else {
            Err(Gone)
        }
    }
}

#[async_trait]
impl RunSink for QueueSink {
    async fn deliver(&self, step: Step) -> Result<(), Gone> {
        let item = match step {
            Step::Event(AgentEvent::AgentDelta { run_id, text }) => Outbound::Delta(DeltaFrame {
                run_id,
                id: self.id.clone(),
                text,
            }),
            Step::Event(event) => Outbound::Text(encode_agent_event(&event, self.id.as_ref())),
            Step::Denied { tool, denial } => Outbound::Text(ServerMessage::run_error(
                self.id.as_ref(),
                self.run_id,
                &denial.reply(&tool),
            )),
        };
        self.send(item).await
    }
}

/// What every run of a connection shares.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub backends: Arc<Backends>,
    pub settings: RunSettings,
    pub gate: Arc<UsageToolGate>,
    pub caller: Arc<Caller>,
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
    /// How long runs get to end once cancelled before they are aborted.
    stop_grace: Duration,
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
    pub fn new(max: usize, stop_grace: Duration) -> Self {
        Self {
            tasks: JoinSet::new(),
            cancels: HashMap::new(),
            parent: CancellationToken::new(),
            max: max.max(1),
            stop_grace,
        }
    }

    pub fn is_full(&self) -> bool {
        self.cancels.len() >= self.max
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts a run; its events go to the connection's queue.
    pub fn start(&mut self, context: &RunContext, request: RunRequest, id: Option<RequestId>) {
        let run_id = request.run_id;
        let cancel = self.parent.child_token();
        let token = cancel.clone();
        let span = tracing::info_span!("agent.run", %run_id, agent = %request.agent);
        let context = context.clone();
        let task = self.tasks.spawn(
            async move {
                let sink = QueueSink {
                    handle: Arc::clone(&context.handle),
                    run_id,
                    id,
                };
                let end = agent::drive(
                    &context.backends,
                    &request,
                    &context.caller,
                    context.gate.as_ref(),
                    &sink,
                    &context.settings,
                    &cancel,
                )
                .await;
                context.metrics.run_ended(&request.agent, end.outcome());
                if end == RunEnd::Unavailable {
                    context.gate.refund_run(run_id).await;
                }
                let run_id_text = run_id.to_string();
                let last = match &end {
                    RunEnd::Completed | RunEnd::Failed(_) | RunEnd::Disconnected => None,
                    RunEnd::Cancelled => Some(
                        ServerMessage::RunCancelled {
                            id: sink.id.as_ref(),
                            run_id: &run_id_text,
                        }
                        .encode(),
                    ),
                    RunEnd::Unavailable => Some(ServerMessage::run_error(
                        sink.id.as_ref(),
                        run_id,
                        &ErrorReply::agent_unavailable(),
                    )),
                };
                if let Some(frame) = last {
                    let _ = sink.send(Outbound::Text(frame)).await;
                }
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
        let drained = tokio::time::timeout(self.stop_grace, async {
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
