//! `gateway-memory`: the resident memory an idle WebSocket connection costs ws-gateway (see
//! `BENCHMARKS.md`).
//!
//! auth-service and usage-service run in this process (embedded SQLite, in-process engine, a
//! plan that allows every connection); ws-gateway runs as its own process, the release binary
//! given by `--gateway-bin`, so its resident set size (`VmRSS`) holds only the gateway. The
//! probe opens `--connections` authenticated connections, lets them idle, and reports the RSS
//! growth per connection. Nothing is asserted.

use std::{
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use futures::{StreamExt, stream};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, protocol::WebSocketConfig};
use tollgate_proto::auth::v1::{RegisterRequest, auth_service_client::AuthServiceClient};
use tollgate_shared::shutdown::Shutdown;

const SECRET: &str = "gateway-memory-secret-0123456789";
const PLANS: &str = r#"
[[plans]]
id = "free"
max_connections = 1000000
messages_per_minute = 1000000
tools = ["search", "calculator"]
"#;

#[derive(Debug, Parser)]
struct Args {
    /// The ws-gateway binary (a release build).
    #[arg(long, default_value = "target/release/ws-gateway")]
    gateway_bin: String,
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// How long the connections idle before the measurement.
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
    /// The gateway's `RUST_LOG` (at `info` each connection's span is recorded).
    #[arg(long, default_value = "info")]
    rust_log: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gateway-memory: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let plans = dir.path().join("plans.toml");
    std::fs::write(&plans, PLANS)?;
    let shutdown = Shutdown::new();

    let mut auth_config = auth_service::Config::for_tests(&format!(
        "sqlite://{}",
        dir.path().join("auth.db").display()
    ));
    auth_config.service_clients = auth_service::clients::ClientRegistry::parse(&format!(
        "ws-gateway:{SECRET}:auth.validate+usage.check+agent.run"
    ))
    .map_err(anyhow::Error::msg)?;
    let auth = auth_service::Application::build(auth_config, shutdown.clone()).await?;
    let auth_url = format!("http://{}", auth.grpc_addr());
    tokio::spawn(auth.run_until_stopped());

    let mut usage_config = usage_service::Config::for_tests(
        &format!("sqlite://{}", dir.path().join("usage.db").display()),
        &auth_url,
    );
    usage_config.plans_file = Some(plans);
    let usage = usage_service::Application::build(usage_config, shutdown.clone()).await?;
    let usage_url = format!("http://{}", usage.grpc_addr());
    tokio::spawn(usage.run_until_stopped());

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut gateway = Command::new(&args.gateway_bin)
        .env_clear()
        .env("GATEWAY_ADDR", &addr)
        .env("AUTH_SERVICE_URL", &auth_url)
        .env("USAGE_SERVICE_URL", &usage_url)
        .env("SERVICE_CLIENT_SECRET", SECRET)
        .env("GATEWAY_CONNECT_RATE", "100000000")
        .env("RUST_LOG", &args.rust_log)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.gateway_bin))?;
    let pid = gateway.id();
    let result = measure(&args, &addr, &auth_url, pid).await;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = gateway.wait();
    shutdown.trigger();
    result
}

async fn measure(args: &Args, addr: &str, auth_url: &str, pid: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    while reqwest_ready(addr).await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the gateway never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = tollgate_shared::grpc::channel(auth_url, Duration::from_secs(30))?;
    let token = AuthServiceClient::new(channel)
        .register(RegisterRequest {
            email: "memory@example.com".into(),
            password: "correct horse battery staple".into(),
        })
        .await?
        .into_inner()
        .access_token;
    // Client sockets with small buffers: their memory is this process's, not measured, but it
    // keeps the probe light.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let connect = |token: String| async move {
        let mut request = format!("ws://{addr}/ws").into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
        // Read `connected`, so the connection is fully set up when counted.
        ws.next().await.context("closed")??;
        anyhow::Ok(ws)
    };
    // One connection first, so one-off allocations (pools, caches) are in the baseline.
    let warm = connect(token.clone()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid)?;
    let opening = Instant::now();
    let opened: Vec<_> = stream::iter(0..args.connections)
        .map(|_| connect(token.clone()))
        .buffer_unordered(args.parallel)
        .collect()
        .await;
    let took = opening.elapsed();
    let failed = opened.iter().filter(|result| result.is_err()).count();
    if let Some(Err(err)) = opened.iter().find(|result| result.is_err()) {
        eprintln!("first failure: {err:#}");
    }
    let connected = opened.len() - failed;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 / connected.max(1) as f64;
    println!(
        "connections: {connected} open ({failed} failed) in {:.1} s",
        took.as_secs_f64()
    );
    println!(
        "gateway RSS: {before} KiB before, {after} KiB after {} s idle",
        args.idle_seconds
    );
    println!("per idle connection: {per:.2} KiB");
    drop(opened);
    drop(warm);
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("gateway RSS 3 s after closing them: {} KiB", rss_kib(pid)?);
    Ok(())
}

async fn reqwest_ready(addr: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    anyhow::ensure!(response.starts_with("HTTP/1.1 200"), "not ready");
    Ok(())
}
