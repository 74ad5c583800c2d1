//! `run_agent`: starts an agent run whose events stream back on this connection.
//!
//! Validated before anything is counted (the connection's run limit, the tool names, the
//! request's bounds, a routed agent), each refusal an `error` reply that leaves the
//! connection as it was; then metered as a message, then as an agent run (`quota_exceeded`
//! with the plan that lifts it), and only then started. Counting and starting the run happen
//! on a task of the node's: a client that drops while its run is counted finds the run
//! started when it comes back, never paid for and lost.
//!
//! A client may choose the `run_id` (a UUID), so that it can resume a run whose
//! `agent_started` it never saw. An id is single-use: one that names a run on any node, or
//! that usage-service has already counted an agent run under (a run long forgotten), is
//! `duplicate_run`, so a reused id never buys a second run for one unit.

use std::{collections::BTreeMap, sync::Arc};

use serde::Deserialize;
use serde_json::Value;

use super::{Next, fields_of, metered, printable};
use tokio::sync::oneshot;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    agent::{RunId, RunRequest, ToolName},
    client::Client,
    error::ErrorReply,
    journal::RunJournal,
    limits::{Meter, Metered},
    protocol::RequestId,
    runs::{NotStarted, RunContext},
    state::Shared,
};

#[derive(Debug, PartialEq)]
pub struct RunAgent {
    pub(super) id: Option<RequestId>,
    pub(super) fields: RunFields,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunFields {
    pub(super) agent: String,
    pub(super) input: String,
    #[serde(default)]
    pub(super) tools: Vec<String>,
    /// Passed to the agent backend as `start.client_metadata`.
    #[serde(default)]
    pub(super) metadata: BTreeMap<String, String>,
    /// The client's own id for the run; the gateway chooses one without it.
    #[serde(default)]
    pub(super) run_id: Option<String>,
}

impl RunAgent {
    pub(super) fn parse(id: Option<RequestId>, fields: Value) -> Result<Self, String> {
        Ok(Self {
            id,
            fields: fields_of(fields)?,
        })
    }

    pub(super) fn apply(self, client: &mut Client) -> Next {
        let Self { id, fields } = self;
        let (request, chosen) = match validate(client, fields) {
            Ok(validated) => validated,
            Err(reply) => {
                client.reply(id.as_ref(), &reply);
                return Next::Read;
            }
        };
        let shared = Arc::clone(client.shared());
        let context = client.run_context();
        let reply_to = id.clone();
        metered(client, id, async move {
            let started = start_detached(shared, context, request, chosen).await;
            move |client: &mut Client| {
                match started {
                    Ok(journal) => client.follow_started(journal, reply_to),
                    Err(reply) => client.reply(reply_to.as_ref(), &reply),
                }
                None
            }
        })
    }
}

/// Counts the run and starts it on a task of the node's, not of the connection's: once
/// usage-service has counted a run, the run starts even if the connection that asked for it
/// is gone by then (its client resumes it), so no run is paid for and never run.
async fn start_detached(
    shared: Arc<Shared>,
    context: RunContext,
    request: RunRequest,
    chosen: Chosen,
) -> Result<Arc<RunJournal>, ErrorReply> {
    let (answer, answered) = oneshot::channel();
    let runs = Arc::clone(&shared.runs);
    // In the request's span: the run and its calls stay in the client's trace.
    runs.spawn(
        async move {
            let _ = answer.send(count_and_start(&shared, context, request, chosen).await);
        }
        .in_current_span(),
    );
    answered
        .await
        .unwrap_or_else(|_| Err(ErrorReply::shutting_down()))
}

async fn count_and_start(
    shared: &Shared,
    context: RunContext,
    request: RunRequest,
    chosen: Chosen,
) -> Result<Arc<RunJournal>, ErrorReply> {
    let (user, run_id) = (context.caller.user_id, request.run_id);
    if chosen == Chosen::Client {
        claim(shared, user, run_id).await?;
    }
    let unclaim = || async {
        if chosen == Chosen::Client {
            shared.runs.unclaim(run_id).await;
        }
    };
    if let Err(reply) = count(shared, user, run_id).await {
        unclaim().await;
        return Err(reply);
    }
    let gate = Arc::clone(&context.gate);
    // A node that is draining starts nothing more: it would only stop the run again.
    let started = if shared.shutdown.is_triggered() {
        Err(NotStarted::ShuttingDown)
    } else {
        shared.runs.start(context, request)
    };
    match started {
        Ok(journal) => Ok(journal),
        Err(not_started) => {
            // Counted but not started (the node is shutting down): the unit buys nothing, so
            // it goes back.
            gate.refund_run(run_id).await;
            unclaim().await;
            Err(match not_started {
                NotStarted::Exists => ErrorReply::duplicate_run(),
                NotStarted::ShuttingDown => ErrorReply::shutting_down(),
            })
        }
    }
}

/// Who chose the run's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chosen {
    Client,
    Gateway,
}

/// Takes the id the client chose, on every node (see [`crate::runs::RunRegistry::claim`]).
async fn claim(shared: &Shared, user: Uuid, run_id: RunId) -> Result<(), ErrorReply> {
    match shared.runs.claim(run_id, user).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ErrorReply::duplicate_run()),
        Err(err) => {
            tracing::warn!(error = %err, "claiming a run id on redis failed");
            Err(ErrorReply::history_unavailable())
        }
    }
}

/// Counts one agent run under its id: the id is the idempotency key, so a replay means the id
/// was used before.
async fn count(shared: &Shared, user: Uuid, run_id: RunId) -> Result<(), ErrorReply> {
    let key = run_id.to_string();
    match shared.limits.meter(user, Meter::AgentRuns, key).await {
        Metered::Allowed => Ok(()),
        Metered::Replayed => Err(ErrorReply::duplicate_run()),
        Metered::Denied { upgrade_to, .. } => Err(ErrorReply::run_quota_exceeded(upgrade_to)),
        Metered::Unavailable => Err(ErrorReply::usage_unavailable()),
    }
}

/// The request and who chose its id, or the reply that refuses it.
fn validate(client: &mut Client, fields: RunFields) -> Result<(RunRequest, Chosen), ErrorReply> {
    if !client.shared().runs.is_accepting() {
        return Err(ErrorReply::shutting_down());
    }
    if client.runs_full() {
        return Err(ErrorReply::too_many_runs());
    }
    let RunFields {
        agent,
        input,
        tools,
        metadata,
        run_id,
    } = fields;
    let run_id = run_id
        .map(|run_id| {
            run_id
                .parse::<RunId>()
                .ok()
                .filter(|run_id| !run_id.as_uuid().is_nil())
                .ok_or_else(|| ErrorReply::bad_request("run_id must be a UUID, not the nil one"))
        })
        .transpose()?;
    let tools = tools
        .iter()
        .map(|tool| {
            tool.parse::<ToolName>()
                .map_err(|err| ErrorReply::bad_request(format!("`{}`: {err}", printable(tool))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = RunRequest::new(agent, input, tools, metadata)
        .map_err(|err| ErrorReply::bad_request(err.to_string()))?;
    if !client.shared().backends.knows(&request.agent) {
        return Err(ErrorReply::unknown_agent(&request.agent));
    }
    let chosen = match run_id {
        Some(run_id) => {
            request.run_id = run_id;
            Chosen::Client
        }
        None => Chosen::Gateway,
    };
    Ok((request, chosen))
}
