//! The Python agent backend (`examples/python-agent`), driven directly by a tonic client that
//! plays the gateway. Proves that `agent.proto` works across languages as written: a run's
//! messages come in protocol order, a tool runs only when the gateway allows it, `cancel`
//! stops a run at once, odd or early-ending streams never take the backend down, and with a
//! JWKS only the gateway's service token for this agent opens a run. The agent's own log is
//! the proof of what it did on its side (a denied tool never ran).

mod caller_check;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_integration::PythonAgent;
use tollgate_proto::agent::v1::{
    AgentMessage, Cancel, GatewayMessage, Start, ToolDecision, ToolRequest, agent_message::Kind,
    gateway_message,
};
use tonic::{Code, Request, Status, Streaming};
use uuid::Uuid;

/// How long the test waits for any one message from the agent.
const STEP: Duration = Duration::from_secs(10);
/// A pause between deltas so long that a run cannot finish by itself while a test acts on it.
const SLOW_DELTAS: (&str, &str) = ("AGENT_DELTA_DELAY_MS", "5000");

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn start(run_id: &str, input: &str, tools: &[&str]) -> GatewayMessage {
    GatewayMessage {
        kind: Some(gateway_message::Kind::Start(Start {
            run_id: run_id.to_owned(),
            agent: "python".into(),
            input: input.to_owned(),
            tools: tools.iter().map(|tool| (*tool).to_owned()).collect(),
            user_id: Uuid::new_v4().to_string(),
            session_id: Uuid::new_v4().to_string(),
            plan: "pro".into(),
            roles: vec!["member".into()],
            client_metadata: [("source".to_owned(), "test".to_owned())].into(),
        })),
    }
}

fn allow(request: &ToolRequest) -> ToolDecision {
    ToolDecision {
        call_id: request.call_id.clone(),
        allowed: true,
        ..ToolDecision::default()
    }
}

fn deny(request: &ToolRequest) -> ToolDecision {
    ToolDecision {
        call_id: request.call_id.clone(),
        allowed: false,
        code: "plan_required".into(),
        upgrade_to: Some("pro".into()),
        message: "word_count needs the pro plan".into(),
    }
}

fn name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Thinking(_) => "thinking",
        Kind::Delta(_) => "delta",
        Kind::ToolRequest(_) => "tool_request",
        Kind::ToolResult(_) => "tool_result",
        Kind::Completed(_) => "completed",
        Kind::Failed(_) => "failed",
    }
}

fn names(seen: &[Kind]) -> Vec<&'static str> {
    seen.iter().map(name).collect()
}

/// One `Run` stream, from the gateway's side.
struct Run {
    id: String,
    to_agent: Option<mpsc::Sender<GatewayMessage>>,
    from_agent: Streaming<AgentMessage>,
}

impl Run {
    /// Opens a stream, sends `start`, and expects the agent to take it.
    async fn open(agent: &PythonAgent, input: &str, tools: &[&str]) -> Self {
        let id = Uuid::new_v4().to_string();
        Self::open_with(agent, start(&id, input, tools), None)
            .await
            .unwrap_or_else(|status| panic!("the agent refused the run: {status:?}"))
    }

    /// Opens a stream whose first message is `first`, with `authorization` metadata if any.
    /// Err when the agent refuses the call, whether at once or instead of a first message.
    async fn open_with(
        agent: &PythonAgent,
        first: GatewayMessage,
        authorization: Option<&str>,
    ) -> Result<Self, Status> {
        let id = match &first.kind {
            Some(gateway_message::Kind::Start(start)) => start.run_id.clone(),
            _ => String::new(),
        };
        let (to_agent, outbox) = mpsc::channel(16);
        to_agent.send(first).await.expect("the outbox is open");
        let mut request = Request::new(ReceiverStream::new(outbox));
        if let Some(value) = authorization {
            let value = value.parse().expect("valid metadata");
            request.metadata_mut().insert("authorization", value);
        }
        let mut client = agent.client().await;
        let response = tokio::time::timeout(STEP, client.run(request))
            .await
            .expect("the agent answers in time")?;
        Ok(Self {
            id,
            to_agent: Some(to_agent),
            from_agent: response.into_inner(),
        })
    }

    /// The next message, or None once the stream has ended cleanly; an error status as Err.
    async fn try_next(&mut self) -> Result<Option<Kind>, Status> {
        let message = tokio::time::timeout(STEP, self.from_agent.message())
            .await
            .expect("the agent answers or ends the stream in time")?;
        Ok(message.map(|message| message.kind.expect("every AgentMessage has a kind")))
    }

    async fn next(&mut self) -> Option<Kind> {
        self.try_next()
            .await
            .unwrap_or_else(|status| panic!("the run failed: {status:?}"))
    }

    async fn send(&self, kind: Option<gateway_message::Kind>) {
        let to_agent = self.to_agent.as_ref().expect("the gateway side is open");
        to_agent
            .send(GatewayMessage { kind })
            .await
            .expect("the outbox is open");
    }

    async fn cancel(&self) {
        let cancel = Cancel {
            reason: "client".into(),
        };
        self.send(Some(gateway_message::Kind::Cancel(cancel))).await;
    }

    async fn decide(&self, decision: ToolDecision) {
        self.send(Some(gateway_message::Kind::ToolDecision(decision)))
            .await;
    }

    /// Ends the gateway's side of the stream (half-close).
    fn close(&mut self) {
        self.to_agent = None;
    }

    /// Reads until the message named `wanted`, which it returns; panics on anything else
    /// (other than `thinking`) or on the end of the stream.
    async fn until(&mut self, wanted: &str) -> Kind {
        loop {
            match self.next().await {
                Some(kind) if name(&kind) == wanted => return kind,
                Some(Kind::Thinking(_)) => {}
                other => panic!("expected {wanted}, got {other:?}"),
            }
        }
    }

    /// Reads the run to its end, answering each tool request with `decide`: every message.
    async fn drive(&mut self, decide: fn(&ToolRequest) -> ToolDecision) -> Vec<Kind> {
        let mut seen = Vec::new();
        while let Some(kind) = self.next().await {
            if let Kind::ToolRequest(request) = &kind {
                self.decide(decide(request)).await;
            }
            seen.push(kind);
        }
        seen
    }
}

fn deltas(seen: &[Kind]) -> String {
    seen.iter()
        .filter_map(|kind| match kind {
            Kind::Delta(delta) => Some(delta.text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_run_arrives_in_protocol_order_and_its_deltas_make_the_output() {
    let agent = PythonAgent::start(Vec::new()).await;
    let mut run = Run::open(&agent, "count these four words", &["word_count"]).await;
    let seen = run.drive(allow).await;

    let order = names(&seen);
    assert_eq!(
        order[..3],
        ["thinking", "tool_request", "tool_result"],
        "{order:?}"
    );
    let answer = &order[3..order.len() - 1];
    assert!(
        answer.len() >= 2 && answer.iter().all(|kind| *kind == "delta"),
        "the answer is streamed as several deltas: {order:?}"
    );
    let Some(Kind::Completed(completed)) = seen.last() else {
        panic!("the run ends with completed: {order:?}");
    };
    assert!(!completed.output.is_empty());
    assert_eq!(completed.output, deltas(&seen));
    assert_eq!(agent.wait_for("completed", &run.id).await["run_id"], run.id);
    assert_eq!(agent.run_events("start", &run.id).len(), 1);
}

#[tokio::test]
async fn a_run_without_word_count_among_its_tools_never_asks_for_it() {
    let agent = PythonAgent::start(Vec::new()).await;
    let mut run = Run::open(&agent, "no tools for you", &["search", "calculator"]).await;
    let seen = run.drive(allow).await;

    let order = names(&seen);
    assert_eq!(order.first(), Some(&"thinking"), "{order:?}");
    assert_eq!(order.last(), Some(&"completed"), "{order:?}");
    assert!(
        order[1..order.len() - 1]
            .iter()
            .all(|kind| *kind == "delta"),
        "nothing but the answer: {order:?}"
    );
    agent.wait_for("completed", &run.id).await;
    assert!(agent.run_events("tool_run", &run.id).is_empty());
}

#[tokio::test]
async fn a_denied_word_count_never_runs() {
    let agent = PythonAgent::start(Vec::new()).await;
    let mut run = Run::open(&agent, "three little words", &["word_count"]).await;
    let seen = run.drive(deny).await;

    let order = names(&seen);
    assert!(order.contains(&"tool_request"), "{order:?}");
    assert!(
        !order.contains(&"tool_result"),
        "no result for a denied call: {order:?}"
    );
    assert_eq!(order.last(), Some(&"completed"), "{order:?}");
    // `completed` is logged after any tool run, so the absence below is final.
    agent.wait_for("completed", &run.id).await;
    let decision = agent.wait_for("tool_decision", &run.id).await;
    assert_eq!(decision["allowed"], false);
    assert_eq!(decision["code"], "plan_required");
    assert!(
        agent.run_events("tool_run", &run.id).is_empty(),
        "the denied tool ran; log:\n{}",
        agent.log()
    );
}

#[tokio::test]
async fn an_allowed_word_count_runs_once_and_counts_whitespace_separated_words() {
    let agent = PythonAgent::start(Vec::new()).await;
    let input = "  one two\tthree\n four  fünf ";
    let mut run = Run::open(&agent, input, &["word_count"]).await;
    let seen = run.drive(allow).await;

    let requests: Vec<&ToolRequest> = seen
        .iter()
        .filter_map(|kind| match kind {
            Kind::ToolRequest(request) => Some(request),
            _ => None,
        })
        .collect();
    let [request] = requests[..] else {
        panic!("one tool request: {:?}", names(&seen));
    };
    assert_eq!(request.tool, "word_count");
    assert!((1..=64).contains(&request.call_id.len()));
    let sent: Value = serde_json::from_str(&request.input_json).expect("input_json is JSON");
    assert_eq!(sent, json!({ "text": input }));

    let results: Vec<_> = seen
        .iter()
        .filter_map(|kind| match kind {
            Kind::ToolResult(result) => Some(result),
            _ => None,
        })
        .collect();
    let [result] = results[..] else {
        panic!("one tool result: {:?}", names(&seen));
    };
    assert_eq!(result.call_id, request.call_id);
    let output: Value = serde_json::from_str(&result.output_json).expect("output_json is JSON");
    assert_eq!(output, json!({ "words": 5 }));

    agent.wait_for("completed", &run.id).await;
    let runs = agent.run_events("tool_run", &run.id);
    assert_eq!(runs.len(), 1, "the tool runs exactly once: {runs:?}");
    assert_eq!(runs[0]["tool"], "word_count");
    assert_eq!(
        agent.wait_for("tool_decision", &run.id).await["allowed"],
        true
    );
}

#[tokio::test]
async fn cancel_reaches_the_backend_and_ends_the_stream_at_once() {
    let agent = PythonAgent::start(env(&[SLOW_DELTAS])).await;
    let mut run = Run::open(&agent, "a long answer", &[]).await;
    run.until("delta").await;

    run.cancel().await;
    let cancelled_at = Instant::now();
    let after = run.next().await;
    assert!(
        after.is_none(),
        "nothing follows a cancel, the stream ends: {after:?}"
    );
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(4),
        "the run stopped only after the next delta was due ({:?})",
        cancelled_at.elapsed()
    );
    agent.wait_for("cancelled", &run.id).await;
    assert!(agent.run_events("completed", &run.id).is_empty());
}

#[tokio::test]
async fn a_cancel_instead_of_a_tool_decision_ends_the_run_without_running_the_tool() {
    let agent = PythonAgent::start(Vec::new()).await;
    let mut run = Run::open(&agent, "never counted", &["word_count"]).await;
    run.until("tool_request").await;

    run.cancel().await;
    assert!(run.next().await.is_none(), "the stream ends after cancel");
    agent.wait_for("cancelled", &run.id).await;
    assert!(agent.run_events("tool_run", &run.id).is_empty());
    assert!(agent.run_events("tool_decision", &run.id).is_empty());
}

#[tokio::test]
async fn a_backend_killed_mid_run_ends_the_stream_with_an_error() {
    let mut agent = PythonAgent::start(env(&[SLOW_DELTAS])).await;
    let mut run = Run::open(&agent, "cut short", &[]).await;
    run.until("delta").await;

    agent.kill_9();
    let outcome = run.try_next().await;
    assert!(
        outcome.is_err(),
        "a killed backend must not look like a run that ended well: {outcome:?}"
    );
}

#[tokio::test]
async fn streams_that_end_early_leave_the_backend_serving() {
    let agent = PythonAgent::start(Vec::new()).await;

    // Closed before any message: the call ends cleanly, without a run.
    let (to_agent, outbox) = mpsc::channel::<GatewayMessage>(1);
    drop(to_agent);
    let mut client = agent.client().await;
    let mut empty = tokio::time::timeout(STEP, client.run(ReceiverStream::new(outbox)))
        .await
        .expect("the agent answers in time")
        .expect("the agent takes the call")
        .into_inner();
    let first = tokio::time::timeout(STEP, empty.message())
        .await
        .expect("the stream ends in time");
    assert!(matches!(first, Ok(None)), "{first:?}");

    // Closed while the agent waits for a tool decision: it gives up with `failed`, and
    // never runs the tool.
    let mut run = Run::open(&agent, "left hanging", &["word_count"]).await;
    run.until("tool_request").await;
    run.close();
    let Kind::Failed(failed) = run.until("failed").await else {
        unreachable!("until returns the kind asked for");
    };
    assert!(!failed.reason.is_empty());
    assert!(run.next().await.is_none(), "nothing after failed");
    agent.wait_for("stream_ended", &run.id).await;
    assert!(agent.run_events("tool_run", &run.id).is_empty());

    // And the backend still serves.
    let mut after = Run::open(&agent, "still here", &["word_count"]).await;
    assert_eq!(names(&after.drive(allow).await).last(), Some(&"completed"));
}

#[tokio::test]
async fn a_stream_that_does_not_begin_with_start_is_refused() {
    let agent = PythonAgent::start(Vec::new()).await;
    let decision = GatewayMessage {
        kind: Some(gateway_message::Kind::ToolDecision(ToolDecision {
            call_id: "word_count-1".into(),
            allowed: true,
            ..ToolDecision::default()
        })),
    };
    let unknown_kind = GatewayMessage { kind: None };
    for (case, first) in [("tool_decision", decision), ("no kind", unknown_kind)] {
        let status = refusal(&agent, first, None).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
    }
    assert!(agent.events("start").is_empty());
    let mut run = Run::open(&agent, "after the odd ones", &[]).await;
    assert_eq!(names(&run.drive(allow).await).last(), Some(&"completed"));
}

#[tokio::test]
async fn odd_messages_mid_run_are_ignored_and_the_run_goes_on() {
    let agent = PythonAgent::start(Vec::new()).await;
    let mut run = Run::open(&agent, "odd but fine", &["word_count"]).await;
    let Kind::ToolRequest(request) = run.until("tool_request").await else {
        unreachable!("until returns the kind asked for");
    };

    run.decide(ToolDecision {
        call_id: "a-call-never-made".into(),
        allowed: true,
        ..ToolDecision::default()
    })
    .await;
    run.send(None).await;
    run.send(start(&run.id, "a second start", &["word_count"]).kind)
        .await;
    run.decide(allow(&request)).await;

    let rest = run.drive(allow).await;
    let order = names(&rest);
    assert_eq!(order.first(), Some(&"tool_result"), "{order:?}");
    assert_eq!(order.last(), Some(&"completed"), "{order:?}");
    assert_eq!(
        order.iter().filter(|kind| **kind == "tool_result").count(),
        1
    );
    agent.wait_for("completed", &run.id).await;
    assert_eq!(
        agent.run_events("ignored", &run.id).len(),
        3,
        "{}",
        agent.log()
    );
    assert_eq!(agent.run_events("tool_run", &run.id).len(), 1);
}

#[tokio::test]
async fn a_bad_setting_stops_the_agent_with_one_line_naming_it() {
    for (variable, value) in [
        ("AGENT_DELTA_DELAY_MS", "soon"),
        ("AGENT_DELTA_DELAY_MS", "-5"),
        ("AGENT_ADDR", "nowhere"),
        ("AGENT_NAME", " "),
        ("AGENT_PROTO_DIR", "/nonexistent-proto-dir"),
        ("AUTH_JWKS_URL", "file:///etc/passwd"),
    ] {
        let (status, stderr) = PythonAgent::run_to_exit(env(&[(variable, value)])).await;
        assert!(!status.success(), "{variable}={value} was accepted");
        assert!(
            stderr.contains(variable) && stderr.trim().lines().count() == 1,
            "{variable}={value}: one line naming the variable, got:\n{stderr}"
        );
    }
}

/// The status of a call the agent refuses, at once or instead of a first message. Panics if
/// the agent takes the run.
async fn refusal(
    agent: &PythonAgent,
    first: GatewayMessage,
    authorization: Option<&str>,
) -> Status {
    match Run::open_with(agent, first, authorization).await {
        Err(status) => status,
        Ok(mut run) => match run.try_next().await {
            Err(status) => status,
            Ok(message) => panic!("the agent took the call: {message:?}"),
        },
    }
}
