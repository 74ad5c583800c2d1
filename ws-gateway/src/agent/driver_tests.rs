//! The driver against scripted in-process backends: what a client sees for each behaviour of
//! a backend, good or bad.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use futures::{StreamExt, future::BoxFuture};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tollgate_proto::agent::v1::{
    AgentMessage, Completed, Delta, Failed, GatewayMessage, Thinking, ToolRequest, ToolResult,
    agent_message::Kind as Out, gateway_message::Kind as In,
};
use uuid::Uuid;

use super::*;
use crate::agent::{
    AgentRoutes, BackendSettings, Gone, RunId, RunSink, Step, ToolDenial, ToolGate, ToolName,
    backend::LocalAgent,
};

type Script = Arc<
    dyn Fn(ReceiverStream<GatewayMessage>, mpsc::Sender<AgentMessage>) -> BoxFuture<'static, ()>
        + Send
        + Sync,
>;

/// A backend whose behaviour is the test's script.
#[derive(Clone)]
struct Scripted(Script);

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

#[async_trait]
impl LocalAgent for Scripted {
    async fn run(
        &self,
        inbound: ReceiverStream<GatewayMessage>,
        outbound: mpsc::Sender<AgentMessage>,
    ) {
        (self.0)(inbound, outbound).await;
    }
}

/// Denies the tools it is told to, and records every call it was asked about.
#[derive(Default)]
struct Gate {
    denied: HashSet<String>,
    asked: Mutex<Vec<String>>,
}

#[async_trait]
impl ToolGate for Gate {
    async fn admit(&self, _: &RunId, call_id: &str, tool: &ToolName) -> Result<(), ToolDenial> {
        self.asked.lock().unwrap().push(format!("{tool}#{call_id}"));
        if self.denied.contains(tool.as_str()) {
            Err(ToolDenial::PlanRequired {
                upgrade_to: Some("pro".into()),
            })
        } else {
            Ok(())
        }
    }
}

#[derive(Default)]
struct Sink(Mutex<Vec<Step>>);

#[async_trait]
impl RunSink for Sink {
    async fn deliver(&self, step: Step) -> Result<(), Gone> {
        self.0.lock().unwrap().push(step);
        Ok(())
    }
}

impl Sink {
    /// Each step as `kind[:detail]`.
    fn kinds(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|step| match step {
                Step::Denied { tool, denial } => {
                    format!("denied:{tool}:{}", denial.code().as_str())
                }
                Step::Event(event) => match event {
                    AgentEvent::AgentStarted { .. } => "agent_started".into(),
                    AgentEvent::AgentThinking { thought, .. } => format!("thinking:{thought}"),
                    AgentEvent::AgentDelta { text, .. } => format!("delta:{text}"),
                    AgentEvent::ToolExecuting { tool, input, .. } => {
                        format!("tool_executing:{tool}:{input}")
                    }
                    AgentEvent::ToolCompleted { tool, output, .. } => {
                        format!("tool_completed:{tool}:{output}")
                    }
                    AgentEvent::AgentCompleted { output, .. } => format!("completed:{output}"),
                    AgentEvent::AgentFailed { reason, .. } => format!("failed:{reason}"),
                },
            })
            .collect()
    }

    fn terminals(&self) -> usize {
        self.kinds()
            .iter()
            .filter(|kind| kind.starts_with("completed:") || kind.starts_with("failed:"))
            .count()
    }
}

fn settings() -> RunSettings {
    RunSettings {
        idle_timeout: Duration::from_secs(30),
        cancel_grace: Duration::from_secs(2),
        max_messages_per_second: 100,
    }
}

fn request(tools: &[&str]) -> RunRequest {
    let tools = tools.iter().map(|tool| tool.parse().unwrap()).collect();
    RunRequest::new("scripted", "count these words", tools, BTreeMap::new()).unwrap()
}

fn caller() -> Caller {
    Caller {
        user_id: Uuid::new_v4(),
        session_id: Uuid::new_v4(),
        plan: "free".into(),
        roles: vec!["member".into()],
    }
}

fn message(kind: Out) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

fn tool_request(call_id: &str, tool: &str, input: &str) -> AgentMessage {
    message(Out::ToolRequest(ToolRequest {
        call_id: call_id.into(),
        tool: tool.into(),
        input_json: input.into(),
    }))
}

fn tool_result(call_id: &str, output: &str) -> AgentMessage {
    message(Out::ToolResult(ToolResult {
        call_id: call_id.into(),
        output_json: output.into(),
    }))
}

fn completed(output: &str) -> AgentMessage {
    message(Out::Completed(Completed {
        output: output.into(),
    }))
}

fn backends(script: Script) -> Backends {
    let routes: AgentRoutes = "scripted=builtin".parse().unwrap();
    let settings = BackendSettings {
        connect_timeout: Duration::from_secs(1),
        max_message_bytes: 4096,
    };
    Backends::new(&routes, Arc::new(Scripted(script)), &settings, |_| {
        unreachable!("no remote routes")
    })
    .unwrap()
}

/// What the backend received, shared with the test.
type Inbox = Arc<Mutex<Vec<In>>>;

/// A backend that sends `messages` one by one, each after reading what the gateway sent so
/// far (so it waits for each decision it needs), recording what it received.
fn sends(messages: Vec<AgentMessage>, inbox: Inbox) -> Script {
    Arc::new(move |mut inbound, outbound| {
        let (messages, inbox) = (messages.clone(), inbox.clone());
        Box::pin(async move {
            let Some(first) = inbound.next().await else {
                return;
            };
            inbox.lock().unwrap().extend(first.kind);
            for message in messages {
                let awaits_decision = matches!(message.kind, Some(Out::ToolRequest(_)));
                if outbound.send(message).await.is_err() {
                    return;
                }
                if awaits_decision {
                    match inbound.next().await {
                        Some(received) => inbox.lock().unwrap().extend(received.kind),
                        None => return,
                    }
                }
            }
            // Hold the stream open until the gateway lets go, as a real backend might.
            while let Some(received) = inbound.next().await {
                inbox.lock().unwrap().extend(received.kind);
            }
        })
    })
}

async fn run(script: Script, tools: &[&str], gate: &Gate) -> (RunEnd, Sink) {
    let sink = Sink::default();
    let end = drive(
        &backends(script),
        &request(tools),
        &caller(),
        gate,
        &sink,
        &settings(),
        &CancellationToken::new(),
    )
    .await;
    (end, sink)
}

#[tokio::test(start_paused = true)]
async fn a_run_streams_in_order_and_tools_run_only_once_allowed() {
    let inbox = Inbox::default();
    let script = sends(
        vec![
            message(Out::Thinking(Thinking {
                thought: "counting".into(),
            })),
            tool_request("c1", "word_count", r#"{"text":"a b"}"#),
            tool_result("c1", r#"{"words":2}"#),
            message(Out::Delta(Delta {
                text: "Two ".into(),
            })),
            message(Out::Delta(Delta {
                text: "words.".into(),
            })),
            completed("Two words."),
        ],
        inbox.clone(),
    );
    let gate = Gate::default();
    let (end, sink) = run(script, &["word_count"], &gate).await;
    assert_eq!(end, RunEnd::Completed);
    assert_eq!(
        sink.kinds(),
        [
            "agent_started",
            "thinking:counting",
            r#"tool_executing:word_count:{"text":"a b"}"#,
            r#"tool_completed:word_count:{"words":2}"#,
            "delta:Two ",
            "delta:words.",
            "completed:Two words.",
        ]
    );
    let inbox = inbox.lock().unwrap();
    let In::Start(start) = &inbox[0] else {
        panic!("the first message is start: {inbox:?}")
    };
    assert_eq!(start.tools, ["word_count"]);
    assert_eq!(start.plan, "free");
    assert!(matches!(&inbox[1], In::ToolDecision(d) if d.allowed && d.call_id == "c1"));
    assert_eq!(*gate.asked.lock().unwrap(), ["word_count#c1"]);
}

#[tokio::test(start_paused = true)]
async fn a_denied_tool_is_an_error_for_the_client_and_a_denial_for_the_backend() {
    let inbox = Inbox::default();
    let script = sends(
        vec![
            tool_request("c1", "web_browse", r#""https://example.com""#),
            completed("could not browse"),
        ],
        inbox.clone(),
    );
    let gate = Gate {
        denied: HashSet::from(["web_browse".to_owned()]),
        ..Gate::default()
    };
    let (end, sink) = run(script, &["web_browse"], &gate).await;
    assert_eq!(end, RunEnd::Completed);
    assert_eq!(
        sink.kinds(),
        [
            "agent_started",
            "denied:web_browse:plan_required",
            "completed:could not browse"
        ],
        "no tool_executing for a denied call"
    );
    let inbox = inbox.lock().unwrap();
    let In::ToolDecision(decision) = &inbox[1] else {
        panic!("{inbox:?}")
    };
    assert!(!decision.allowed);
    assert_eq!(decision.code, "plan_required");
    assert_eq!(decision.upgrade_to.as_deref(), Some("pro"));
}

#[tokio::test(start_paused = true)]
async fn every_broken_rule_ends_the_run_with_one_protocol_error() {
    let big = "x".repeat(5000);
    let cases: Vec<(&str, Vec<AgentMessage>)> = vec![
        (
            "a result for an unknown call",
            vec![tool_result("nope", "{}")],
        ),
        (
            "a result for a denied call",
            vec![
                tool_request("c1", "denied_tool", "{}"),
                tool_result("c1", "{}"),
            ],
        ),
        (
            "two results for one call",
            vec![
                tool_request("c1", "word_count", "{}"),
                tool_result("c1", "{}"),
                tool_result("c1", "{}"),
            ],
        ),
        (
            "a call id used twice",
            vec![
                tool_request("c1", "word_count", "{}"),
                tool_request("c1", "word_count", "{}"),
            ],
        ),
        (
            "a tool the run did not request",
            vec![tool_request("c1", "search", "{}")],
        ),
        (
            "a name that is no tool",
            vec![tool_request("c1", "Rm -rf", "{}")],
        ),
        (
            "an input that is not JSON",
            vec![tool_request("c1", "word_count", "{not json")],
        ),
        (
            "an output that is not JSON",
            vec![
                tool_request("c1", "word_count", "{}"),
                tool_result("c1", ""),
            ],
        ),
        (
            "a message over the size limit",
            vec![message(Out::Delta(Delta { text: big }))],
        ),
        ("an empty message", vec![AgentMessage { kind: None }]),
        (
            "anything after completed",
            vec![
                completed("done"),
                message(Out::Delta(Delta {
                    text: "more".into(),
                })),
            ],
        ),
        (
            "a flood of deltas",
            (0..500)
                .map(|_| message(Out::Delta(Delta { text: "x".into() })))
                .collect(),
        ),
    ];
    for (case, messages) in cases {
        let gate = Gate {
            denied: HashSet::from(["denied_tool".to_owned()]),
            ..Gate::default()
        };
        let script = sends(messages, Inbox::default());
        let (end, sink) = run(script, &["word_count", "denied_tool"], &gate).await;
        assert_eq!(end, RunEnd::Failed(PROTOCOL_ERROR.into()), "{case}");
        assert_eq!(
            sink.kinds().last().unwrap(),
            "failed:protocol_error",
            "{case}"
        );
        assert_eq!(sink.terminals(), 1, "{case}: exactly one terminal event");
        assert!(
            gate.asked.lock().unwrap().len() <= 1,
            "{case}: no call is asked about twice"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_without_an_answer_is_a_protocol_error() {
    let script: Script = Arc::new(|mut inbound, outbound| {
        Box::pin(async move {
            inbound.next().await;
            let _ = outbound
                .send(message(Out::Delta(Delta {
                    text: "half".into(),
                })))
                .await;
        })
    });
    let (end, sink) = run(script, &[], &Gate::default()).await;
    assert_eq!(end, RunEnd::Failed(PROTOCOL_ERROR.into()));
    assert_eq!(
        sink.kinds(),
        ["agent_started", "delta:half", "failed:protocol_error"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_backend_fails_the_run_after_the_idle_timeout() {
    let script: Script = Arc::new(|mut inbound, outbound| {
        Box::pin(async move {
            let _open = outbound;
            while inbound.next().await.is_some() {}
        })
    });
    let (end, sink) = run(script, &[], &Gate::default()).await;
    assert_eq!(end, RunEnd::Failed(IDLE_TIMEOUT.into()));
    assert_eq!(sink.kinds(), ["agent_started", "failed:idle_timeout"]);
}

#[tokio::test(start_paused = true)]
async fn a_backend_failure_reaches_the_client_made_safe() {
    let long = format!("model \u{7}overloaded{}", "!".repeat(500));
    let script = sends(
        vec![message(Out::Failed(Failed { reason: long }))],
        Inbox::default(),
    );
    let (end, sink) = run(script, &[], &Gate::default()).await;
    let RunEnd::Failed(reason) = end else {
        panic!("{end:?}")
    };
    assert!(reason.starts_with("model overloaded!"), "{reason}");
    assert_eq!(reason.chars().count(), 200);
    assert_eq!(sink.terminals(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancel_reaches_the_backend_and_ends_the_run_even_if_it_is_ignored() {
    let inbox = Inbox::default();
    let seen = inbox.clone();
    // Streams deltas forever, never reading its inbound after start, so it never sees the cancel.
    let stubborn: Script = Arc::new(move |mut inbound, outbound| {
        let seen = seen.clone();
        Box::pin(async move {
            inbound.next().await;
            tokio::spawn(async move {
                while let Some(message) = inbound.next().await {
                    seen.lock().unwrap().extend(message.kind);
                }
            });
            loop {
                let delta = message(Out::Delta(Delta { text: "x".into() }));
                if outbound.send(delta).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });
    let cancel = CancellationToken::new();
    let sink = Sink::default();
    let stopper = {
        let cancel = cancel.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cancel.cancel();
        }
    };
    let started = tokio::time::Instant::now();
    let (backends, request, caller, gate, settings) = (
        backends(stubborn),
        request(&[]),
        caller(),
        Gate::default(),
        settings(),
    );
    let (end, ()) = tokio::join!(
        drive(
            &backends, &request, &caller, &gate, &sink, &settings, &cancel
        ),
        stopper
    );
    assert_eq!(end, RunEnd::Cancelled);
    assert!(started.elapsed() <= Duration::from_millis(500) + settings.cancel_grace);
    assert!(
        inbox
            .lock()
            .unwrap()
            .iter()
            .any(|m| matches!(m, In::Cancel(_))),
        "the backend was told"
    );
    assert_eq!(sink.terminals(), 0, "run_cancelled is the caller's to send");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_agent_is_unavailable_without_reaching_any_backend() {
    let script = sends(vec![completed("never")], Inbox::default());
    let sink = Sink::default();
    let mut request = request(&[]);
    request.agent = "other".into();
    let end = drive(
        &backends(script),
        &request,
        &caller(),
        &Gate::default(),
        &sink,
        &settings(),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(end, RunEnd::Unavailable);
    assert!(sink.kinds().is_empty());
}

/// Requests tools without ever reading the gateway's answers, so the decisions back up.
fn deaf(requests: usize) -> Script {
    Arc::new(move |inbound, outbound| {
        Box::pin(async move {
            let _deaf = inbound;
            for i in 0..requests {
                let request = tool_request(&i.to_string(), "word_count", "{}");
                if outbound.send(request).await.is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await;
        })
    })
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_stops_reading_cannot_hold_a_run_past_its_idle_timeout() {
    let gate = Gate::default();
    let ran = tokio::time::timeout(
        Duration::from_secs(600),
        run(deaf(64), &["word_count"], &gate),
    );
    let (end, sink) = ran.await.expect("the run ends");
    assert_eq!(end, RunEnd::Failed(IDLE_TIMEOUT.into()));
    assert_eq!(sink.terminals(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_stops_reading_cannot_hold_up_a_cancel() {
    let cancel = CancellationToken::new();
    let sink = Sink::default();
    let (backends, request, caller, gate, settings) = (
        backends(deaf(64)),
        request(&["word_count"]),
        caller(),
        Gate::default(),
        settings(),
    );
    let stopper = {
        let cancel = cancel.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        }
    };
    let started = tokio::time::Instant::now();
    let (end, ()) = tokio::join!(
        drive(
            &backends, &request, &caller, &gate, &sink, &settings, &cancel
        ),
        stopper
    );
    assert_eq!(end, RunEnd::Cancelled);
    assert!(started.elapsed() <= Duration::from_secs(1) + settings.cancel_grace);
}
