//! Agent backends through the real binaries: the demo agent as an external backend
//! (`demo-agent`, checking the gateway's service token against auth-service's JWKS) behaves
//! exactly like the built-in one, and a backend that dies or cannot be reached costs the client
//! one clear terminal event, never a hang.

use std::time::Duration;

use serde_json::Value;
use tollgate_integration::*;

/// A cluster whose gateway routes `demo` in process and `remote` to a `demo-agent` process that
/// verifies every call's service token; the agent's tools "work" for `think`.
async fn cluster_with_remote_demo(think: Duration) -> (Cluster, Service, Service) {
    remote_demo(Cluster::start().await, think, &[]).await
}

/// Starts the `demo-agent` process (with `extra` variables) and a gateway routing to it.
async fn remote_demo(
    cluster: Cluster,
    think: Duration,
    extra: &[(String, String)],
) -> (Cluster, Service, Service) {
    let jwks = cluster.auth.http_url("/.well-known/jwks.json");
    let think = format!("{}ms", think.as_millis());
    let mut env = vec![
        ("AGENT_ADDR".into(), "127.0.0.1:0".into()),
        ("AGENT_NAME".into(), "remote".into()),
        ("AGENT_THINK_DELAY".into(), think),
        ("AUTH_JWKS_URL".into(), jwks),
        ("RUST_LOG".into(), "info,demo_agent=debug".into()),
    ];
    env.extend_from_slice(extra);
    let agent = Service::start(Binary::DemoAgent, env).await;
    let mut env = cluster.gateway_env();
    env.push((
        "GATEWAY_AGENTS".into(),
        format!("demo=builtin,remote=http://{}", agent.addr("grpc")),
    ));
    env.push(("GATEWAY_AGENT_IDLE_TIMEOUT".into(), "3s".into()));
    let gateway = Service::start(Binary::Gateway, env).await;
    gateway.ready().await;
    (cluster, agent, gateway)
}

/// A run's frames without what differs between two runs of the same request.
fn comparable(frames: &[Value]) -> Vec<Value> {
    let merged_deltas = streamed(frames);
    let mut out: Vec<Value> = frames
        .iter()
        .filter(|frame| frame["type"] != "agent_delta")
        .map(|frame| {
            let mut frame = frame.clone();
            frame.as_object_mut().map(|map| map.remove("run_id"));
            frame
        })
        .collect();
    out.push(Value::String(merged_deltas));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_backend_streams_the_same_run_as_the_builtin_one() {
    let (cluster, _agent, gateway) = cluster_with_remote_demo(Duration::ZERO).await;
    let user = cluster.register().await;
    cluster.change_plan(&user.user_id, "pro").await;
    let (mut client, _) = WsClient::connected(&gateway, &user.access_token).await;
    let input = "what is (2+3)*4? see https://docs.rs/tokio";
    let tools = ["calculator", "search", "web_browse"];

    client.run("run-builtin", "demo", input, &tools).await;
    let builtin = client.transcript("run-builtin").await;
    client.run("run-remote", "remote", input, &tools).await;
    let remote = client.transcript("run-remote").await;

    assert_eq!(
        kinds(&remote),
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "tool_executing",
            "tool_completed",
            "tool_executing",
            "tool_completed",
            "agent_delta",
            "agent_completed"
        ],
        "{remote:?}"
    );
    let mut expected = comparable(&builtin);
    expected[0]["agent"] = "remote".into();
    expected.iter_mut().for_each(|frame| {
        if frame["id"] == "run-builtin" {
            frame["id"] = "run-remote".into();
        }
    });
    assert_eq!(comparable(&remote), expected, "the same events, in order");
    let answer = remote.last().unwrap()["output"].as_str().unwrap();
    assert_eq!(streamed(&remote), answer, "the deltas are the whole answer");

    let usage = cluster.usage_of(&user.user_id).await;
    assert_eq!(
        usage["tool_calls"], 6,
        "each tool call counted once, on either path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_run_fails_the_run_and_a_dead_one_is_unavailable() {
    let (cluster, mut agent, gateway) = cluster_with_remote_demo(Duration::from_secs(30)).await;
    let user = cluster.register().await;
    let (mut client, _) = WsClient::connected(&gateway, &user.access_token).await;

    client.run("run-1", "remote", "2+2", &["calculator"]).await;
    assert_eq!(client.next_of("tool_executing").await["id"], "run-1");
    agent.kill_9();
    let frames = client.transcript("run-1").await;
    let last = frames.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["reason"].as_str()),
        (Some("agent_failed"), Some("backend_lost")),
        "{frames:?}"
    );

    client.run("run-2", "remote", "2+2", &[]).await;
    let frames = client.transcript("run-2").await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["code"], "agent_unavailable");
    assert!(frames[0]["run_id"].is_string());
    // Runs 1 (started) and 3 (below) are billed; run 2 never reached an agent and is refunded.

    // The connection and the built-in agent are unharmed.
    client.run_agent("run-3", "2+2", &["calculator"]).await;
    let frames = client.transcript("run-3").await;
    assert_eq!(frames.last().unwrap()["type"], "agent_completed");
    assert!(
        eventually(PATIENCE, || async {
            cluster.usage_of(&user.user_id).await["agent_runs"] == 2
        })
        .await,
        "{:?}",
        cluster.usage_of(&user.user_id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_an_external_backend_and_ends_the_run() {
    let (cluster, agent, gateway) = cluster_with_remote_demo(Duration::from_secs(30)).await;
    let user = cluster.register().await;
    let (mut client, _) = WsClient::connected(&gateway, &user.access_token).await;

    client.run("run-1", "remote", "2+2", &["calculator"]).await;
    let executing = client.next_of("tool_executing").await;
    client
        .send_json(serde_json::json!({
            "type": "cancel_run", "id": "c", "run_id": executing["run_id"],
        }))
        .await;
    let cancelled = client.next_of("run_cancelled").await;
    assert_eq!(cancelled["id"], "run-1");
    // The backend heard it: its run ended as cancelled, not by a broken stream.
    assert!(
        eventually(PATIENCE, || async {
            agent
                .log()
                .lines()
                .any(|line| line.contains("agent run ended") && line.contains("Cancelled"))
        })
        .await,
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_an_external_backend_continues_the_client_s_trace() {
    let receiver = TraceReceiver::start().await;
    let cluster = Cluster::builder().export_traces_to(&receiver).start().await;
    let exporter = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            receiver.endpoint(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ];
    let (cluster, _agent, gateway) = remote_demo(cluster, Duration::ZERO, &exporter).await;
    let user = cluster.register().await;
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let headers = [
        ("authorization", format!("Bearer {}", user.access_token)),
        ("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01")),
    ];
    let mut client = WsClient::connect(&gateway, Present::Headers(&headers))
        .await
        .unwrap_or_else(|refused| panic!("the connection was refused: {refused:?}"));
    client.expect("connected").await;
    client
        .run("run-traced", "remote", "2+2", &["calculator"])
        .await;
    let frames = client.transcript("run-traced").await;
    assert_eq!(frames.last().unwrap()["type"], "agent_completed");

    let is_backend_run = |span: &ExportedSpan| {
        span.service == "demo-agent" && span.name == "tollgate.agent.v1.AgentBackend/Run"
    };
    // The gateway's span of the call ends (and is exported) after the backend's.
    let served_with_caller = |spans: &[ExportedSpan]| {
        spans
            .iter()
            .filter(|span| is_backend_run(span) && span.trace_id == trace_id)
            .find_map(|served| {
                let caller = spans
                    .iter()
                    .find(|span| span.span_id == served.parent_span_id)?;
                Some(caller.clone())
            })
    };
    let spans = receiver
        .wait_until(PATIENCE, |spans| served_with_caller(spans).is_some())
        .await;
    let caller = served_with_caller(&spans).unwrap_or_else(|| {
        let names: Vec<String> = spans
            .iter()
            .map(|s| format!("{} {:?} {} {}", s.service, s.kind, s.name, s.trace_id))
            .collect();
        panic!("no backend span in the client's trace under a gateway span: {names:#?}")
    });
    assert_eq!(caller.service, "ws-gateway");
}
