//! `run_agent`: starts an agent run whose events stream back on this connection.
//!
//! Validated before anything is counted (the connection's run limit, the tool names, the
//! request's bounds, a routed agent), each refusal an `error` reply that leaves the
//! connection as it was; then metered as a message, then as an agent run (`quota_exceeded`
//! with the plan that lifts it), and only then started.

use std::{collections::BTreeMap, sync::Arc};

use serde::Deserialize;
use serde_json::Value;

use super::{Next, fields_of, metered, printable};
use crate::{
    agent::{RunRequest, ToolName},
    client::Client,
    error::ErrorReply,
    limits::{Meter, Metered},
    protocol::RequestId,
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
        let request = match validate(client, fields) {
            Ok(request) => request,
            Err(reply) => {
                client.reply(id.as_ref(), &reply);
                return Next::Read;
            }
        };
        let shared = Arc::clone(client.shared());
        let user = client.identity().user_id;
        let reply_to = id.clone();
        metered(client, id, async move {
            let key = request.run_id.to_string();
            let metered = shared.limits.meter(user, Meter::AgentRuns, key).await;
            move |client: &mut Client| {
                match metered {
                    Metered::Allowed => client.start_run(request, reply_to),
                    Metered::Denied { upgrade_to, .. } => client.reply(
                        reply_to.as_ref(),
                        &ErrorReply::run_quota_exceeded(upgrade_to),
                    ),
                    Metered::Unavailable => {
                        client.reply(reply_to.as_ref(), &ErrorReply::usage_unavailable());
                    }
                }
                None
            }
        })
    }
}

/// The request, or the reply that refuses it.
fn validate(client: &mut Client, fields: RunFields) -> Result<RunRequest, ErrorReply> {
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
    } = fields;
    let tools = tools
        .iter()
        .map(|tool| {
            tool.parse::<ToolName>()
                .map_err(|err| ErrorReply::bad_request(format!("`{}`: {err}", printable(tool))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let request = RunRequest::new(agent, input, tools, metadata)
        .map_err(|err| ErrorReply::bad_request(err.to_string()))?;
    if !client.shared().backends.knows(&request.agent) {
        return Err(ErrorReply::unknown_agent(&request.agent));
    }
    Ok(request)
}
