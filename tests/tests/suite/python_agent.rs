//! The Python agent backend (`examples/python-agent`), driven directly by a tonic client that
//! plays the gateway. Proves that `agent.proto` works across languages as written: a run's
//! messages come in protocol order, a tool runs only when the gateway allows it, `cancel`
//! stops a run at once, odd or early-ending streams never take the backend down, and with a
//! JWKS only the gateway's service token for this agent opens a run. The agent's own log is
//! the proof of what it did on its side (a denied tool never ran).

mod caller_check;
mod gateway;
mod through_gateway;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_integration::{PATIENCE, PythonAgent, eventually};
use tollgate_proto::agent::v1::{
    GatewayMessage, ToolDecision, ToolRequest, agent_message::Kind, gateway_message,
};
use tollgate_shared::fault_proxy::FaultProxy;
use tonic::Code;
use uuid::Uuid;

use gateway::{Run, SLOW_DELTAS, STEP, allow, deltas, deny, env, names, refusal, start};

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

#[tokio::test]
async fn a_gateway_that_drops_a_run_mid_way_stops_it_and_the_backend_serves_on() {
    let agent = PythonAgent::start(env(&[SLOW_DELTAS])).await;
    let mut run = Run::open(&agent, "abandoned", &[]).await;
    run.until("delta").await;
    let id = run.id.clone();

    // The gateway drops the run without a cancel (its side closes, then the call).
    drop(run);
    let dropped_at = Instant::now();
    let noticed = eventually(PATIENCE, || {
        let noticed = ["disconnected", "stream_ended"]
            .iter()
            .any(|event| !agent.run_events(event, &id).is_empty());
        async move { noticed }
    })
    .await;
    assert!(noticed, "the run went on; log:\n{}", agent.log());
    assert!(
        dropped_at.elapsed() < Duration::from_secs(4),
        "noticed only when the next delta was due ({:?})",
        dropped_at.elapsed()
    );
    assert!(agent.run_events("completed", &id).is_empty());

    // The next run starts (its answer is slow: it is cancelled once it streams).
    let mut after = Run::open(&agent, "next one", &[]).await;
    after.until("delta").await;
    after.cancel().await;
    assert!(after.next().await.is_none());
}

#[tokio::test]
async fn a_lost_connection_mid_run_stops_the_run_at_once() {
    let agent = PythonAgent::start(env(&[SLOW_DELTAS])).await;
    let proxy = FaultProxy::start(agent.addr())
        .await
        .expect("a proxy in front of the agent");
    let id = Uuid::new_v4().to_string();
    let mut run = Run::open_at(
        &format!("http://{}", proxy.address()),
        start(&id, "on a bad network", &[]),
        None,
    )
    .await
    .expect("the run opens through the proxy");
    run.until("delta").await;

    // The gateway's host vanishes: the connection is cut, the stream is never closed.
    proxy.cut();
    let cut_at = Instant::now();
    agent.wait_for("disconnected", &id).await;
    assert!(
        cut_at.elapsed() < Duration::from_secs(4),
        "noticed only when the next delta was due ({:?})",
        cut_at.elapsed()
    );
    assert!(agent.run_events("completed", &id).is_empty());
    drop(run);
}
