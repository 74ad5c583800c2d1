//! Test doubles for runs: gates that admit, deny or hang, and helpers to read a transcript.
//! Crate-visible (under `cfg(test)`) so the connection code's unit tests can use them too.

use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Executor, RunEnd, RunId, RunRequest, Step, Tool, ToolDenial, ToolGate};

/// Admits every tool except `deny`'s, and records each call.
#[derive(Debug, Default)]
pub(crate) struct FakeGate {
    pub(crate) deny: Option<(Tool, ToolDenial)>,
    pub(crate) calls: Mutex<Vec<Tool>>,
}

impl FakeGate {
    pub(crate) fn denying(tool: Tool, denial: ToolDenial) -> Self {
        Self {
            deny: Some((tool, denial)),
            calls: Mutex::default(),
        }
    }

    /// The tools asked for so far, in order.
    pub(crate) fn calls(&self) -> Vec<Tool> {
        self.calls
            .lock()
            .map(|calls| calls.clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl ToolGate for FakeGate {
    async fn admit(&self, _run_id: &RunId, tool: Tool) -> Result<(), ToolDenial> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(tool);
        }
        match &self.deny {
            Some((denied, denial)) if *denied == tool => Err(denial.clone()),
            _ => Ok(()),
        }
    }
}

/// Admits every tool but `stall_on`, whose call never returns (a hung usage-service);
/// `reached` is notified when that call starts.
#[derive(Debug)]
pub(crate) struct StallingGate {
    pub(crate) stall_on: Tool,
    pub(crate) reached: Notify,
}

impl StallingGate {
    pub(crate) fn new(stall_on: Tool) -> Self {
        Self {
            stall_on,
            reached: Notify::new(),
        }
    }
}

#[async_trait]
impl ToolGate for StallingGate {
    async fn admit(&self, _run_id: &RunId, tool: Tool) -> Result<(), ToolDenial> {
        if tool == self.stall_on {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Runs `request` to its end with a roomy channel, and returns every step sent.
pub(crate) async fn run_to_end(
    executor: &dyn Executor,
    request: RunRequest,
    gate: &dyn ToolGate,
) -> (RunEnd, Vec<Step>) {
    let (tx, mut rx) = mpsc::channel(64);
    let end = executor
        .run(request, gate, &tx, CancellationToken::new())
        .await;
    drop(tx);
    (end, drain(&mut rx).await)
}

/// Every step still in the channel, once all senders are gone.
pub(crate) async fn drain(rx: &mut mpsc::Receiver<Step>) -> Vec<Step> {
    let mut steps = Vec::new();
    while let Some(step) = rx.recv().await {
        steps.push(step);
    }
    steps
}

/// A compact transcript: "agent_started", "tool_executing:search", "denied:search", …
pub(crate) fn kinds(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|step| match step {
            Step::Event(event) => {
                let wire = serde_json::to_value(event).unwrap_or_default();
                let kind = wire["type"].as_str().unwrap_or("?");
                match wire.get("tool").and_then(|tool| tool.as_str()) {
                    Some(tool) => format!("{kind}:{tool}"),
                    None => kind.to_owned(),
                }
            }
            Step::Denied { tool, .. } => format!("denied:{tool}"),
        })
        .collect()
}
