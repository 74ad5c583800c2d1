//! [`DemoAgent`]: a deterministic agent that plans, calls each requested tool through the
//! [`ToolGate`], and summarises the results.
//!
//! Why deterministic: the same request always yields the same steps (no randomness, no wall
//! clock in any output), so the gateway's end-to-end tests can assert whole transcripts and
//! benchmarks measure the gateway rather than an agent. The optional think delay only spaces
//! the events out in time; it changes nothing in them.
//!
//! Every await of a run (each send, each gate call, the think delay) goes through an
//! [`Emitter`], so a cancelled run stops within one poll and sends nothing more, and a run
//! whose client went away ends as [`RunEnd::Disconnected`] at its next send.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use super::emitter::{Emitter, Interrupted};
use super::tools;
use super::{AgentEvent, Executor, RunEnd, RunRequest, Step, Tool, ToolGate};

/// Most characters of the input quoted back when no tool was requested.
const ECHO_CHARS: usize = 200;

/// The demo agent. Any agent name runs the same behaviour; the name is echoed.
#[derive(Debug, Clone, Default)]
pub struct DemoAgent {
    think_delay: Duration,
}

impl DemoAgent {
    /// A demo agent with no think delay: a run takes as long as its gate calls.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits `delay` while each admitted tool "works", between `tool_executing` and
    /// `tool_completed` (cancellable), so clients can watch a run stream and cancel it.
    #[must_use]
    pub fn with_think_delay(mut self, delay: Duration) -> Self {
        self.think_delay = delay;
        self
    }

    pub fn think_delay(&self) -> Duration {
        self.think_delay
    }

    async fn drive(
        &self,
        request: &RunRequest,
        gate: &dyn ToolGate,
        out: &Emitter<'_>,
    ) -> Result<(), Interrupted> {
        let run_id = request.run_id;
        let agent = request.agent.clone();
        out.emit_event(AgentEvent::AgentStarted { run_id, agent })
            .await?;
        let thought = plan(&request.tools);
        out.emit_event(AgentEvent::AgentThinking { run_id, thought })
            .await?;

        let mut results = Vec::with_capacity(request.tools.len());
        for &tool in &request.tools {
            out.check()?;
            match out.guard(gate.admit(&run_id, tool)).await? {
                Err(denial) => {
                    tracing::debug!(%tool, code = denial.code(), "tool denied");
                    results.push(format!("{tool}: not run ({})", denial.code()));
                    out.emit(Step::Denied { tool, denial }).await?;
                }
                Ok(()) => {
                    let input = tools::argument(tool, &request.input);
                    let executing = AgentEvent::ToolExecuting {
                        run_id,
                        tool,
                        input: input.clone(),
                    };
                    out.emit_event(executing).await?;
                    out.pause(self.think_delay).await?;
                    let output = tools::execute(tool, &input);
                    results.push(format!("{tool}: {}", output.summary));
                    let output = output.json;
                    out.emit_event(AgentEvent::ToolCompleted {
                        run_id,
                        tool,
                        output,
                    })
                    .await?;
                }
            }
        }

        let output = answer(&request.input, &results);
        out.emit_event(AgentEvent::AgentCompleted { run_id, output })
            .await
    }
}

#[async_trait]
impl Executor for DemoAgent {
    #[tracing::instrument(
        name = "agent_run",
        skip_all,
        fields(run_id = %request.run_id, agent = %request.agent, tools = request.tools.len())
    )]
    async fn run(
        &self,
        request: RunRequest,
        gate: &dyn ToolGate,
        steps: &Sender<Step>,
        cancel: CancellationToken,
    ) -> RunEnd {
        let out = Emitter::new(steps, &cancel);
        let end = match self.drive(&request, gate, &out).await {
            Ok(()) => RunEnd::Completed,
            Err(Interrupted::Cancelled) => RunEnd::Cancelled,
            Err(Interrupted::Disconnected) => RunEnd::Disconnected,
        };
        tracing::debug!(?end, "agent run ended");
        end
    }
}

/// The `agent_thinking` text: which tools the agent will use, in order.
fn plan(tools: &[Tool]) -> String {
    if tools.is_empty() {
        return "No tools requested: I will answer from the input alone.".to_owned();
    }
    let names: Vec<&str> = tools.iter().map(|tool| tool.as_str()).collect();
    format!(
        "Plan: use {}, then summarise the results.",
        names.join(", then ")
    )
}

/// The `agent_completed` text: one line per requested tool.
fn answer(input: &str, results: &[String]) -> String {
    if results.is_empty() {
        let input = input.trim();
        let echo: String = input.chars().take(ECHO_CHARS).collect();
        let more = if echo.len() < input.len() { "…" } else { "" };
        return format!("No tools were used. You asked: {echo}{more}");
    }
    let mut answer = String::from("Tool results:");
    for line in results {
        answer.push_str("\n- ");
        answer.push_str(line);
    }
    answer
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::agent::test_support::{FakeGate, StallingGate, drain, kinds, run_to_end};
    use crate::agent::{RunId, ToolDenial};

    const INPUT: &str = "what is (2+3)*4? see https://docs.rs/tokio about websocket close codes";

    fn request(tools: &[Tool]) -> RunRequest {
        RunRequest::new("demo", INPUT, tools.to_vec()).unwrap()
    }

    fn event(step: &Step) -> &AgentEvent {
        match step {
            Step::Event(event) => event,
            Step::Denied { .. } => panic!("expected an event, got {step:?}"),
        }
    }

    #[tokio::test]
    async fn a_run_emits_every_event_in_order() {
        use Tool::*;
        let gate = FakeGate::default();
        let request = request(&[Calculator, Search, CodeInterpreter, WebBrowse]);
        let run_id = request.run_id;
        let (end, steps) = run_to_end(&DemoAgent::new(), request, &gate).await;
        assert_eq!(end, RunEnd::Completed);
        assert_eq!(
            kinds(&steps),
            [
                "agent_started",
                "agent_thinking",
                "tool_executing:calculator",
                "tool_completed:calculator",
                "tool_executing:search",
                "tool_completed:search",
                "tool_executing:code_interpreter",
                "tool_completed:code_interpreter",
                "tool_executing:web_browse",
                "tool_completed:web_browse",
                "agent_completed",
            ]
        );
        assert_eq!(
            gate.calls(),
            [Calculator, Search, CodeInterpreter, WebBrowse]
        );
        assert!(steps.iter().all(|step| event(step).run_id() == run_id));

        let wire: Vec<serde_json::Value> = steps
            .iter()
            .map(|step| serde_json::to_value(event(step)).unwrap())
            .collect();
        assert_eq!(wire[0]["agent"], "demo");
        assert_eq!(
            wire[1]["thought"],
            "Plan: use calculator, then search, then code_interpreter, then web_browse, \
             then summarise the results."
        );
        assert_eq!(wire[2]["input"], "(2+3)*4");
        assert_eq!(
            wire[3]["output"],
            json!({"expression": "(2+3)*4", "value": 20})
        );
        assert_eq!(wire[5]["output"][0]["id"], "websocket-close");
        assert_eq!(wire[7]["output"]["simulated"], true);
        assert_eq!(wire[8]["input"], "https://docs.rs/tokio");
        assert_eq!(wire[9]["output"]["title"], "Tokio - Docs.rs");
        let answer = wire[10]["output"].as_str().unwrap();
        assert!(
            answer.starts_with("Tool results:\n- calculator: (2+3)*4 = 20\n- search: 3 result(s)"),
            "{answer}"
        );
        assert_eq!(answer.lines().count(), 5);
    }

    #[tokio::test]
    async fn a_denied_tool_is_skipped_and_the_run_goes_on() {
        let denial = ToolDenial::PlanRequired {
            upgrade_to: Some("pro".into()),
        };
        let gate = FakeGate::denying(Tool::WebBrowse, denial.clone());
        let request = request(&[Tool::WebBrowse, Tool::Calculator]);
        let (end, steps) = run_to_end(&DemoAgent::new(), request, &gate).await;
        assert_eq!(end, RunEnd::Completed);
        assert_eq!(
            kinds(&steps),
            [
                "agent_started",
                "agent_thinking",
                "denied:web_browse",
                "tool_executing:calculator",
                "tool_completed:calculator",
                "agent_completed",
            ]
        );
        assert_eq!(
            steps[2],
            Step::Denied {
                tool: Tool::WebBrowse,
                denial
            }
        );
        assert_eq!(gate.calls(), [Tool::WebBrowse, Tool::Calculator]);
        let AgentEvent::AgentCompleted { output, .. } = event(&steps[5]) else {
            panic!("{:?}", steps[5]);
        };
        assert!(
            output.contains("web_browse: not run (plan_required)"),
            "{output}"
        );
    }

    #[tokio::test]
    async fn no_tools_means_no_gate_calls() {
        let gate = FakeGate::default();
        let (end, steps) = run_to_end(&DemoAgent::new(), request(&[]), &gate).await;
        assert_eq!(end, RunEnd::Completed);
        assert_eq!(
            kinds(&steps),
            ["agent_started", "agent_thinking", "agent_completed"]
        );
        assert!(gate.calls().is_empty());
        let AgentEvent::AgentCompleted { output, .. } = event(&steps[2]) else {
            panic!("{:?}", steps[2]);
        };
        assert_eq!(output, &format!("No tools were used. You asked: {INPUT}"));
    }

    #[tokio::test]
    async fn runs_are_deterministic() {
        let agent = DemoAgent::new();
        let request = request(&Tool::ALL);
        let first = run_to_end(&agent, request.clone(), &FakeGate::default()).await;
        let second = run_to_end(&agent, request, &FakeGate::default()).await;
        assert_eq!(first, second);
    }

    #[tokio::test]
    async fn cancelling_while_the_gate_hangs_stops_the_run() {
        let gate = StallingGate::new(Tool::Search);
        let (tx, mut rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let agent = DemoAgent::new();
        let request = request(&[Tool::Calculator, Tool::Search, Tool::WebBrowse]);
        let (end, ()) = tokio::join!(agent.run(request, &gate, &tx, cancel.clone()), async {
            gate.reached.notified().await;
            cancel.cancel();
        });
        assert_eq!(end, RunEnd::Cancelled);
        drop(tx);
        assert_eq!(
            kinds(&drain(&mut rx).await),
            [
                "agent_started",
                "agent_thinking",
                "tool_executing:calculator",
                "tool_completed:calculator",
            ],
            "nothing after the cancellation"
        );
    }

    #[tokio::test]
    async fn cancelling_during_the_think_delay_is_prompt() {
        let agent = DemoAgent::new().with_think_delay(Duration::from_secs(3600));
        let gate = FakeGate::default();
        let (tx, mut rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let run = agent.run(
            request(&[Tool::Search, Tool::Calculator]),
            &gate,
            &tx,
            cancel.clone(),
        );
        let client = async {
            let mut seen = Vec::new();
            while let Some(step) = rx.recv().await {
                let executing = matches!(step, Step::Event(AgentEvent::ToolExecuting { .. }));
                seen.push(step);
                if executing {
                    cancel.cancel();
                    break;
                }
            }
            seen
        };
        let both = async { tokio::join!(run, client) };
        let (end, seen) = tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("the run stops without waiting out the delay");
        assert_eq!(end, RunEnd::Cancelled);
        assert_eq!(
            kinds(&seen),
            ["agent_started", "agent_thinking", "tool_executing:search"]
        );
        drop(tx);
        assert!(
            drain(&mut rx).await.is_empty(),
            "no tool_completed after the cancellation"
        );
        assert_eq!(gate.calls(), [Tool::Search]);
    }

    #[tokio::test]
    async fn a_run_cancelled_before_it_starts_emits_nothing() {
        let gate = FakeGate::default();
        let (tx, mut rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let end = DemoAgent::new()
            .run(request(&Tool::ALL), &gate, &tx, cancel)
            .await;
        assert_eq!(end, RunEnd::Cancelled);
        drop(tx);
        assert!(drain(&mut rx).await.is_empty());
        assert!(gate.calls().is_empty(), "no tool call is billed");
    }

    #[tokio::test]
    async fn a_dropped_receiver_ends_the_run_as_disconnected() {
        let gate = FakeGate::default();
        let agent = DemoAgent::new();
        let (tx, rx) = mpsc::channel(64);
        drop(rx);
        let end = agent
            .run(request(&Tool::ALL), &gate, &tx, CancellationToken::new())
            .await;
        assert_eq!(end, RunEnd::Disconnected);
        assert!(gate.calls().is_empty());

        // And mid-run: the client reads one event, then goes away.
        let (tx, mut rx) = mpsc::channel(1);
        let run = agent.run(request(&Tool::ALL), &gate, &tx, CancellationToken::new());
        let (end, ()) = tokio::join!(run, async {
            rx.recv().await;
            drop(rx);
        });
        assert_eq!(end, RunEnd::Disconnected);
    }

    #[tokio::test]
    async fn hostile_unvalidated_requests_do_not_panic() {
        let request = RunRequest {
            run_id: RunId::new(),
            agent: String::new(),
            input: format!("{}{}", "(".repeat(1 << 19), "1+".repeat(1 << 18)),
            tools: [Tool::ALL, Tool::ALL].concat(),
        };
        let (end, steps) = run_to_end(&DemoAgent::new(), request, &FakeGate::default()).await;
        assert_eq!(end, RunEnd::Completed);
        assert_eq!(steps.len(), 2 + 2 * 8 + 1);
    }
}
