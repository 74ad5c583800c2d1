//! Agent runs over the WebSocket: event order, tool authorization, cancellation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{both_backends, helpers::*};

/// Reads the frames of one run until `agent_completed` (or a cancellation).
async fn transcript(client: &mut WsClient) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let Received::Json(frame) = client.recv().await else {
            panic!("the connection closed during the run: {frames:?}");
        };
        let done = matches!(
            frame["type"].as_str(),
            Some("agent_completed" | "run_cancelled")
        );
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// Each frame's type, with consecutive `agent_delta`s counted once (how many arrive depends
/// on how fast the client reads: a slow reader gets them merged).
fn kinds(frames: &[Value]) -> Vec<&str> {
    let mut kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    kinds.dedup_by(|a, b| *a == "agent_delta" && *b == "agent_delta");
    kinds
}

/// The run's deltas, concatenated: the answer, streamed.
fn streamed(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == "agent_delta")
        .map(|f| f["text"].as_str().unwrap())
        .collect()
}

async fn a_run_streams_its_events_in_order(backend: Backend) {
    let services = Services::spawn(backend).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client
        .send_json(json!({
            "type": "run_agent", "id": "r1", "agent": "demo",
            "input": "What is 6 * 7?", "tools": ["calculator", "search"],
        }))
        .await;
    let frames = transcript(&mut client).await;
    assert_eq!(
        kinds(&frames),
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "tool_executing",
            "tool_completed",
            "agent_delta",
            "agent_completed"
        ]
    );
    let answer = frames.last().unwrap()["output"].as_str().unwrap();
    assert_eq!(
        streamed(&frames),
        answer,
        "the deltas are the answer, whole"
    );
    let run_id = frames[0]["run_id"].as_str().unwrap();
    assert!(
        frames
            .iter()
            .all(|f| f["run_id"] == run_id && f["id"] == "r1")
    );
    assert_eq!(frames[2]["tool"], "calculator");
    assert_eq!(
        frames[3]["output"]["value"].as_f64(),
        Some(42.0),
        "{}",
        frames[3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_outside_the_plan_is_refused_without_running() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client
        .send_json(json!({
            "type": "run_agent", "id": "r2", "agent": "demo",
            "input": "print(1)", "tools": ["code_interpreter"],
        }))
        .await;
    let frames = transcript(&mut client).await;
    assert_eq!(
        kinds(&frames),
        [
            "agent_started",
            "agent_thinking",
            "error",
            "agent_delta",
            "agent_completed"
        ]
    );
    let error = &frames[2];
    assert_eq!(error["code"], "plan_required");
    assert_eq!(error["upgrade_to"], "pro");
    assert_eq!(error["id"], "r2");
    assert_eq!(error["run_id"], frames[0]["run_id"]);

    // On pro the same tool runs.
    services.change_plan(&pair.user_id, "pro").await;
    client
        .send_json(json!({
            "type": "run_agent", "agent": "demo", "input": "print(1)",
            "tools": ["code_interpreter"],
        }))
        .await;
    let frames = transcript(&mut client).await;
    assert!(kinds(&frames).contains(&"tool_completed"), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_can_be_cancelled_and_bad_requests_are_explained() {
    let services = Services::spawn(Backend::Embedded).await;
    let mut config = services.gateway_config();
    config.agent_think_delay = Duration::from_secs(60);
    config.max_runs_per_connection = 1;
    let gateway = Gateway::start(config).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client
        .send_json(json!({
            "type": "run_agent", "id": "slow", "agent": "demo",
            "input": "2 + 2", "tools": ["calculator"],
        }))
        .await;
    client.expect("agent_started").await;
    client.expect("agent_thinking").await;
    let executing = client.expect("tool_executing").await;
    let run_id = executing["run_id"].as_str().unwrap().to_owned();
    // One run at a time on this connection.
    client
        .send_json(json!({"type": "run_agent", "id": "second", "agent": "demo", "input": "1"}))
        .await;
    let busy = client.expect("error").await;
    assert_eq!(
        (busy["code"].as_str(), busy["id"].as_str()),
        (Some("too_many_runs"), Some("second"))
    );
    client
        .send_json(json!({"type": "cancel_run", "id": "c", "run_id": run_id}))
        .await;
    let cancelled = client.expect("run_cancelled").await;
    assert_eq!(
        (cancelled["run_id"].as_str(), cancelled["id"].as_str()),
        (Some(run_id.as_str()), Some("slow"))
    );

    client
        .send_json(json!({"type": "cancel_run", "id": "c2", "run_id": run_id}))
        .await;
    let unknown = client.expect("error").await;
    assert_eq!(
        (unknown["code"].as_str(), unknown["id"].as_str()),
        (Some("unknown_run"), Some("c2"))
    );

    for (bad, why) in [
        (
            json!({"type": "run_agent", "agent": "demo", "input": "x", "tools": ["Shell!"]}),
            "a tool name is",
        ),
        (
            json!({"type": "run_agent", "agent": "demo", "input": "x", "metadata": {"k": 1}}),
            "invalid type",
        ),
        (
            json!({"type": "run_agent", "agent": "", "input": "x"}),
            "agent",
        ),
        (
            json!({"type": "run_agent", "agent": "demo", "input": "x", "tools": ["search", "search"]}),
            "more than once",
        ),
    ] {
        client.send_json(bad).await;
        let error = client.expect("error").await;
        assert_eq!(error["code"], "bad_request");
        assert!(error["message"].as_str().unwrap().contains(why), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agents_and_undeclared_tools_are_named_as_such() {
    let services = Services::spawn(Backend::Embedded).await;
    let gateway = Gateway::start(services.gateway_config()).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client
        .send_json(json!({"type": "run_agent", "id": "u", "agent": "nobody", "input": "hi"}))
        .await;
    let error = client.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("unknown_agent"), Some("u"))
    );

    // A well-formed name the catalogue does not declare: the run goes on without it.
    client
        .send_json(json!({
            "type": "run_agent", "id": "t", "agent": "demo", "input": "hi", "tools": ["shell"],
            "metadata": {"ticket": "T-1"},
        }))
        .await;
    let frames = transcript(&mut client).await;
    assert_eq!(
        kinds(&frames),
        [
            "agent_started",
            "agent_thinking",
            "error",
            "agent_delta",
            "agent_completed"
        ]
    );
    assert_eq!(frames[2]["code"], "unknown_tool", "{}", frames[2]);
}

both_backends!(a_run_streams_its_events_in_order);
