//! The floor under the agent-run ratio: what one run's conversation costs over bare tonic
//! between two processes, against the same conversation over in-process channels, with no
//! gateway, usage-service or WebSocket around it.
//!
//! The conversation has the shape of `ws-loadgen`'s runs: a stream opened with `start`, a tool
//! request answered by a decision, a second one, then the end (three round trips and the
//! stream's close). The backend is a trivial one in a child process (this binary, `serve`),
//! reached over loopback TCP and over a Unix socket, or with `--demo-agent <bin>` the real demo
//! agent, for the cost of its own messages (thinking, results, deltas). The caller is a bare
//! `AgentBackendClient` on a plain channel, so whatever the gateway's external route costs
//! beyond these numbers is the gateway's own.
//!
//! ```sh
//! cargo run --release -p tollgate-bench --example agent_hop_floor
//! cargo run --release -p tollgate-bench --example agent_hop_floor -- --demo-agent target/release/demo-agent
//! ```

use std::{
    net::{SocketAddr, TcpListener},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::{Stream, StreamExt, stream::BoxStream};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{UnixListener, UnixStream},
    sync::mpsc,
};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tollgate_proto::agent::v1::{
    AgentMessage, Completed, GatewayMessage, Start, ToolDecision, ToolRequest,
    agent_backend_client::AgentBackendClient,
    agent_backend_server::{AgentBackend, AgentBackendServer},
    agent_message::Kind as FromBackend,
    gateway_message::Kind as ToBackend,
};
use tonic::{Request, Response, Status, Streaming};

/// Tool requests per conversation (a round trip each, after the one of `start`).
const TOOL_CALLS: u32 = 2;
/// Measured seconds per route and round; the routes alternate.
const SLICE: Duration = Duration::from_secs(2);
const ROUNDS: usize = 4;

/// The trivial backend: answers `start` and each decision with the next tool request, then
/// `completed`, and ends its stream.
async fn trivial_agent(
    mut inbound: impl Stream<Item = GatewayMessage> + Unpin,
    outbound: mpsc::Sender<AgentMessage>,
) {
    let mut answered = 0;
    while inbound.next().await.is_some() {
        answered += 1;
        let kind = if answered <= TOOL_CALLS {
            FromBackend::ToolRequest(ToolRequest {
                call_id: answered.to_string(),
                tool: "calculator".into(),
                input_json: "\"6 * 7\"".into(),
            })
        } else {
            FromBackend::Completed(Completed {
                output: "42".into(),
            })
        };
        let message = AgentMessage { kind: Some(kind) };
        if outbound.send(message).await.is_err() || answered > TOOL_CALLS {
            return;
        }
    }
}

struct Trivial;

#[tonic::async_trait]
impl AgentBackend for Trivial {
    type RunStream = BoxStream<'static, Result<AgentMessage, Status>>;

    async fn run(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let inbound = request
            .into_inner()
            .filter_map(|message| async { message.ok() });
        let (outbound, messages) = mpsc::channel(16);
        tokio::spawn(trivial_agent(Box::pin(inbound), outbound));
        Ok(Response::new(ReceiverStream::new(messages).map(Ok).boxed()))
    }
}

fn start() -> GatewayMessage {
    GatewayMessage {
        kind: Some(ToBackend::Start(Start {
            run_id: "9f1c2f43-3f59-4b8e-9d6a-0c2b8f1e7a11".into(),
            agent: "remote".into(),
            input: "What is 6 * 7?".into(),
            tools: vec!["calculator".into(), "search".into()],
            ..Start::default()
        })),
    }
}

fn allow(call_id: String) -> GatewayMessage {
    GatewayMessage {
        kind: Some(ToBackend::ToolDecision(ToolDecision {
            call_id,
            allowed: true,
            ..ToolDecision::default()
        })),
    }
}

/// The caller's side of one conversation: allows every tool request, reads to the end.
async fn converse(
    to_backend: mpsc::Sender<GatewayMessage>,
    mut from_backend: impl Stream<Item = AgentMessage> + Unpin,
) -> anyhow::Result<()> {
    let mut completed = false;
    while let Some(message) = from_backend.next().await {
        match message.kind {
            Some(FromBackend::ToolRequest(request)) => {
                to_backend.send(allow(request.call_id)).await?;
            }
            Some(FromBackend::Completed(_)) => completed = true,
            _ => {}
        }
    }
    anyhow::ensure!(completed, "the backend ended without completing");
    Ok(())
}

async fn over_grpc(client: &AgentBackendClient<tonic::transport::Channel>) -> anyhow::Result<()> {
    let (to_backend, inbound) = mpsc::channel(8);
    to_backend.send(start()).await?;
    let response = client.clone().run(ReceiverStream::new(inbound)).await?;
    let from_backend = response
        .into_inner()
        .filter_map(|message| async { message.ok() });
    converse(to_backend, Box::pin(from_backend)).await
}

async fn over_channels() -> anyhow::Result<()> {
    let (to_backend, inbound) = mpsc::channel(8);
    let (outbound, from_backend) = mpsc::channel(32);
    to_backend.send(start()).await?;
    let agent = tokio::spawn(trivial_agent(ReceiverStream::new(inbound), outbound));
    converse(to_backend, ReceiverStream::new(from_backend)).await?;
    agent.await?;
    Ok(())
}

/// This process's CPU time so far (user + system), in clock ticks of 10 ms.
fn cpu_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let tick = |index: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(index)
            .context("short /proc/self/stat")?
            .parse()?)
    };
    Ok(tick(11)? + tick(12)?)
}

/// Runs `conversation` in a closed loop for one slice: p50 and the caller's CPU per run.
async fn slice<F, Fut>(name: &str, conversation: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let ticks = cpu_ticks()?;
    let mut times = Vec::new();
    let until = Instant::now() + SLICE;
    while Instant::now() < until {
        let began = Instant::now();
        conversation().await?;
        times.push(began.elapsed());
    }
    times.sort();
    let runs = u64::try_from(times.len())?.max(1);
    let cpu_us = (cpu_ticks()? - ticks) * 10_000 / runs;
    println!(
        "{name}: {} runs, p50 {:?}, caller CPU {cpu_us} µs per run",
        times.len(),
        times[times.len() / 2],
    );
    Ok(())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, addr, socket] = args.as_slice()
        && mode == "serve"
    {
        let tcp = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(AgentBackendServer::new(Trivial))
            .serve(addr.parse()?);
        let unix = tonic::transport::Server::builder()
            .add_service(AgentBackendServer::new(Trivial))
            .serve_with_incoming(UnixListenerStream::new(UnixListener::bind(socket)?));
        let (tcp, unix) = tokio::join!(tcp, unix);
        tcp?;
        unix?;
        return Ok(());
    }
    let addr = free_addr()?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("backend.sock");
    let mut command = match args.as_slice() {
        [_, flag, bin] if flag == "--demo-agent" => {
            let mut command = tokio::process::Command::new(bin);
            command
                .env("AGENT_ADDR", addr.to_string())
                .env("AGENT_NAME", "remote")
                .env("RUST_LOG", "warn");
            command
        }
        [_] => {
            let mut command = tokio::process::Command::new(&args[0]);
            command.args(["serve", &addr.to_string()]).arg(&socket);
            command
        }
        _ => anyhow::bail!("usage: agent_hop_floor [--demo-agent <demo-agent binary>]"),
    };
    let mut backend = command.stdout(Stdio::null()).kill_on_drop(true).spawn()?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let channel = loop {
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(err).context("the backend never listened"),
        }
    };
    let client = AgentBackendClient::new(channel);
    let demo = args.len() == 3;
    let unix_client = if demo {
        None
    } else {
        let socket = socket.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        });
        // The URI only names the stream's authority; the connector reaches the socket.
        let channel = tonic::transport::Endpoint::from_static("http://backend.local")
            .connect_with_connector(connector)
            .await?;
        Some(AgentBackendClient::new(channel))
    };
    for _ in 0..ROUNDS {
        slice("gRPC, two processes, TCP ", || over_grpc(&client)).await?;
        if let Some(unix_client) = &unix_client {
            slice("gRPC, two processes, Unix", || over_grpc(unix_client)).await?;
            slice("channels, one process    ", over_channels).await?;
        }
    }
    backend.kill().await?;
    Ok(())
}
