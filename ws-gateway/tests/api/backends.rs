//! Agent backends over real gRPC: what a client sees when a backend misbehaves on the wire
//! (garbage bytes, an oversized message, silence, a second answer, calls it may not make, a
//! flood) or cannot be reached, and what a well-behaved backend receives (the start, and a
//! service token for its own name). The trace context is checked across processes, in the
//! cross-service suite.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine as _;
use futures::{StreamExt, future::BoxFuture};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tollgate_proto::agent::v1::{
    AgentMessage, Completed, Delta, GatewayMessage, ToolRequest, ToolResult,
    agent_backend_server::{AgentBackend, AgentBackendServer},
    agent_message::Kind as Out,
    gateway_message::Kind as In,
};
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap, server::NamedService};

use crate::helpers::*;

/// Deltas in the `long` answer, of 2 KiB each: 16 MiB, more than the sockets between the
/// gateway and a client that does not read can buffer.
const LONG_ANSWER: usize = 8000;

fn long_delta(i: usize) -> String {
    format!("{i:08}{}", "x".repeat(2040))
}

fn out(kind: Out) -> Result<AgentMessage, Status> {
    Ok(AgentMessage { kind: Some(kind) })
}

fn delta(text: impl Into<String>) -> Result<AgentMessage, Status> {
    out(Out::Delta(Delta { text: text.into() }))
}

fn completed(text: &str) -> Result<AgentMessage, Status> {
    out(Out::Completed(Completed {
        output: text.into(),
    }))
}

fn tool_request(call_id: &str, tool: &str) -> Result<AgentMessage, Status> {
    out(Out::ToolRequest(ToolRequest {
        call_id: call_id.into(),
        tool: tool.into(),
        input_json: "{}".into(),
    }))
}

/// One `Run` call as the backend received it: its metadata and first message.
type Call = (MetadataMap, Option<In>);

/// A backend whose behaviour is chosen by the run's input; it records each call.
#[derive(Clone, Default)]
struct Scripted {
    calls: Arc<Mutex<Vec<Call>>>,
}

#[tonic::async_trait]
impl AgentBackend for Scripted {
    type RunStream = ReceiverStream<Result<AgentMessage, Status>>;

    async fn run(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let first = inbound
            .next()
            .await
            .and_then(Result::ok)
            .and_then(|m| m.kind);
        self.calls.lock().unwrap().push((metadata, first.clone()));
        let Some(In::Start(start)) = first else {
            return Err(Status::invalid_argument("expected start"));
        };
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            let script: Vec<Result<AgentMessage, Status>> = match start.input.as_str() {
                "oversized" => vec![delta("x".repeat(300 * 1024))],
                "twice" => vec![completed("one"), completed("two")],
                "unknown call" => vec![out(Out::ToolResult(ToolResult {
                    call_id: "nope".into(),
                    output_json: "{}".into(),
                }))],
                "undeclared tool" => vec![tool_request("1", "web_browse")],
                "flood" => (0..3000).map(|_| delta("x")).collect(),
                "long" => (0..LONG_ANSWER)
                    .map(|i| delta(long_delta(i)))
                    .chain([completed("done")])
                    .collect(),
                "silent" => Vec::new(),
                _ => vec![
                    delta("Hello, "),
                    delta("world."),
                    completed("Hello, world."),
                ],
            };
            let silent = script.is_empty();
            for message in script {
                if tx.send(message).await.is_err() {
                    return;
                }
            }
            if silent {
                // Keep the stream open, saying nothing, until the gateway lets go.
                while inbound.next().await.is_some() {}
                drop(tx);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves `service` on a loopback port until the test ends.
async fn serve<S>(service: S) -> SocketAddr
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// Answers every `Run` with bytes that are no protobuf message.
#[derive(Clone)]
struct Garbage;

impl NamedService for Garbage {
    const NAME: &'static str = "tollgate.agent.v1.AgentBackend";
}

impl tower::Service<http::Request<tonic::body::Body>> for Garbage {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async {
            // A gRPC frame (uncompressed, 8 bytes) holding an invalid wire type.
            let mut frame = vec![0u8, 0, 0, 0, 8];
            frame.extend_from_slice(&[0xff; 8]);
            let body = http_body_util::Full::new(bytes::Bytes::from(frame));
            Ok(http::Response::builder()
                .header("content-type", "application/grpc")
                .body(tonic::body::Body::new(body))
                .unwrap())
        })
    }
}

/// A gateway routing `scripted` and `garbage` to those backends and `gone` to a closed port.
async fn gateway(services: &Services, scripted: &Scripted) -> Gateway {
    gateway_with(services, scripted, |_| {}).await
}

async fn gateway_with(
    services: &Services,
    scripted: &Scripted,
    tweak: impl FnOnce(&mut ws_gateway::Config),
) -> Gateway {
    let scripted_addr = serve(AgentBackendServer::new(scripted.clone())).await;
    let garbage_addr = serve(Garbage).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = services.gateway_config();
    config.agents = format!(
        "demo=builtin,scripted=http://{scripted_addr},garbage=http://{garbage_addr},gone=http://{closed}"
    )
    .parse()
    .unwrap();
    config.agent_idle_timeout = Duration::from_secs(1);
    tweak(&mut config);
    Gateway::start(config).await
}

async fn run(client: &mut WsClient, id: &str, agent: &str, input: &str) -> Vec<Value> {
    client
        .send_json(json!({
            "type": "run_agent", "id": id, "agent": agent, "input": input, "tools": ["calculator"],
        }))
        .await;
    client.transcript(id).await
}

fn last(frames: &[Value]) -> (&str, &str) {
    let last = frames.last().unwrap();
    (
        last["type"].as_str().unwrap_or_default(),
        last["reason"]
            .as_str()
            .or(last["code"].as_str())
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misbehaviour_of_a_backend_ends_its_run_with_one_clear_event() {
    let services = Services::spawn(Backend::Embedded).await;
    let scripted = Scripted::default();
    let gateway = gateway(&services, &scripted).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;

    let cases = [
        (
            "run-garbage",
            "garbage",
            "hello",
            ("agent_failed", "protocol_error"),
        ),
        (
            "run-big",
            "scripted",
            "oversized",
            ("agent_failed", "protocol_error"),
        ),
        (
            "run-twice",
            "scripted",
            "twice",
            ("agent_failed", "protocol_error"),
        ),
        (
            "run-unknown",
            "scripted",
            "unknown call",
            ("agent_failed", "protocol_error"),
        ),
        (
            "run-undeclared",
            "scripted",
            "undeclared tool",
            ("agent_failed", "protocol_error"),
        ),
        (
            "run-flood",
            "scripted",
            "flood",
            ("agent_failed", "protocol_error"),
        ),
        (
            "run-silent",
            "scripted",
            "silent",
            ("agent_failed", "idle_timeout"),
        ),
        ("run-gone", "gone", "hello", ("error", "agent_unavailable")),
    ];
    for (id, agent, input, expected) in cases {
        let frames = run(&mut client, id, agent, input).await;
        assert_eq!(last(&frames), expected, "{input}: {frames:?}");
        let terminals = frames
            .iter()
            .filter(|f| matches!(f["type"].as_str(), Some("agent_completed" | "agent_failed")))
            .count();
        assert!(terminals <= 1, "{input}: {frames:?}");
    }

    // The connection, and well-behaved backends, are unharmed.
    let frames = run(&mut client, "run-ok", "scripted", "hello").await;
    assert_eq!(last(&frames).0, "agent_completed", "{frames:?}");
    assert_eq!(streamed(&frames), "Hello, world.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_gets_the_run_and_a_token_for_its_own_name() {
    let services = Services::spawn(Backend::Embedded).await;
    let scripted = Scripted::default();
    let gateway = gateway(&services, &scripted).await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client
        .send_json(json!({
            "type": "run_agent", "id": "run-1", "agent": "scripted", "input": "hello",
            "tools": ["calculator"], "metadata": {"ticket": "T-42"},
        }))
        .await;
    let frames = client.transcript("run-1").await;
    assert_eq!(last(&frames).0, "agent_completed");

    let (metadata, start) = scripted.calls.lock().unwrap()[0].clone();
    let Some(In::Start(start)) = start else {
        panic!("the first message is start")
    };
    assert_eq!(start.run_id, frames[0]["run_id"].as_str().unwrap());
    assert_eq!(start.agent, "scripted");
    assert_eq!(start.tools, ["calculator"]);
    assert_eq!(start.plan, "free");
    assert_eq!(start.client_metadata["ticket"], "T-42");
    assert!(!start.user_id.is_empty() && !start.session_id.is_empty());

    let authorization = metadata.get("authorization").unwrap().to_str().unwrap();
    let token = authorization.strip_prefix("Bearer ").unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "scripted", "a token for this backend only");
    assert_eq!(claims["scope"], "agent.run", "and for nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_token_stream_gets_every_delta_merged_and_stays_connected() {
    let services = Services::spawn(Backend::Embedded).await;
    let scripted = Scripted::default();
    let gateway = gateway_with(&services, &scripted, |config| {
        config.send_queue = 8;
        config.agent_max_messages_per_second = 1_000_000;
    })
    .await;
    let pair = services.register().await;
    let (mut client, _) = gateway.connected(&pair.access_token).await;
    client
        .send_json(
            json!({"type": "run_agent", "id": "run-1", "agent": "scripted", "input": "long"}),
        )
        .await;
    // Read nothing while the backend streams: far more deltas than the queue holds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let frames = client.transcript("run-1").await;

    let expected: String = (0..LONG_ANSWER).map(long_delta).collect();
    assert!(
        streamed(&frames) == expected,
        "no text lost, none repeated, in order"
    );
    let deltas = frames.iter().filter(|f| f["type"] == "agent_delta").count();
    assert!(
        deltas < LONG_ANSWER,
        "merged while the client was not reading: {deltas}"
    );
    assert_eq!(last(&frames).0, "agent_completed");
    client.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(
        client.next_of("pong").await["id"],
        "p",
        "not closed with 4010"
    );
}
