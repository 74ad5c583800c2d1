//! The stack under load, as `gateway-memory` sets it up: auth-service and usage-service in
//! this process on the embedded default (SQLite files in a temporary directory, the in-process
//! engine, no Redis), on a Tokio runtime of their own with one worker per core; ws-gateway as
//! a separate process from its release binary; the echo baseline ([`super::echo`]) as a
//! second child process; and, when asked, the `demo-agent` release binary as a third, routed
//! as agent `remote` next to the in-process `demo` (`GATEWAY_AGENTS`), plus any backend the
//! caller serves itself (the delta phase's).
//!
//! Why the embedded default: it is what `cargo run --release` runs, it needs no server, and
//! on two cores a PostgreSQL and a Redis process would take CPU from the gateway that the
//! numbers are about. The gateway then runs on the in-process engine too (one node).
//!
//! Everything the run could be throttled by is opened up and said so: the plan allows a
//! million connections per user and more messages, agent runs and tool calls than a run can
//! use (the quotas are still counted, so the full metering path runs), and the gateway's
//! per-address connect rate (`GATEWAY_CONNECT_RATE`, 120 per minute by default) is raised to a
//! billion, since every client connects from 127.0.0.1.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, ChildStdin, Command},
    sync::oneshot,
};
use tollgate_proto::auth::v1::{
    IssueServiceTokenRequest, RegisterRequest, auth_service_client::AuthServiceClient,
};
use tollgate_shared::{grpc::TracedChannel, shutdown::Shutdown};

use crate::{cores, random_alphanumeric, random_lowercase};

/// Limits no run reaches: every connect, message, agent run and tool call is allowed.
pub const PLANS: &str = r#"
[[plans]]
id = "free"
max_connections = 1000000
messages_per_minute = 4000000000
agent_runs_per_month = 1000000000000
tool_calls_per_day = 1000000000000
tools = ["search", "calculator"]
"#;

/// Connection attempts per address per minute the gateway is given.
pub const CONNECT_RATE: u64 = 1_000_000_000;

const PASSWORD: &str = "correct horse battery staple";

/// A registered user and its access token (valid for 15 minutes, longer than a run).
#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub token: String,
}

/// How the stack is started.
#[derive(Debug)]
pub struct Settings {
    /// The ws-gateway release binary.
    pub gateway_bin: PathBuf,
    /// `RUST_LOG` of the gateway.
    pub rust_log: String,
    /// Where the gateway's log (JSON lines on stdout) goes; discarded when `None`.
    pub gateway_log: Option<PathBuf>,
    /// The `demo-agent` release binary, started and routed as agent [`REMOTE_AGENT`] (the demo
    /// agent stays routed in process as `demo`).
    pub demo_agent_bin: Option<PathBuf>,
    /// Further agent backends the gateway routes to: name and address.
    pub backends: Vec<(String, SocketAddr)>,
    /// Bill messages (a ledger row each) instead of the default catalogue's rate-only meter.
    pub billable_messages: bool,
    /// The gateway's `GATEWAY_MESSAGE_BUDGET`, when not its default.
    pub message_budget: Option<u64>,
    /// The Node baseline's script, started when given.
    pub node_baseline: Option<PathBuf>,
}

/// The audience of the access tokens auth-service issues here (its default).
const AUDIENCE: &str = "tollgate";

/// The catalogue the stack runs: [`PLANS`], with messages billable when asked.
fn catalogue(billable_messages: bool) -> String {
    if billable_messages {
        format!("[[meters]]\nname = \"messages\"\nbillable = true\n{PLANS}")
    } else {
        PLANS.to_owned()
    }
}

/// The agent name of the `demo-agent` process.
pub const REMOTE_AGENT: &str = "remote";

/// auth-service and usage-service on their own runtime and thread.
#[derive(Debug)]
struct Services {
    auth: SocketAddr,
    usage: SocketAddr,
    shutdown: Shutdown,
    thread: JoinHandle<anyhow::Result<()>>,
}

/// A server running as a child process.
#[derive(Debug)]
pub struct ChildServer {
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    /// The echo server stops when its stdin closes.
    stdin: Option<ChildStdin>,
}

impl ChildServer {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

#[derive(Debug)]
pub struct Stack {
    pub gateway: ChildServer,
    pub echo: ChildServer,
    /// The Node baseline ([`super::node`]), when asked for.
    pub node: Option<ChildServer>,
    /// The `demo-agent` process, when started.
    pub agent: Option<ChildServer>,
    auth: SocketAddr,
    publisher_secret: String,
    gateway_secret: String,
    services: Services,
    _dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let plans = dir.path().join("plans.toml");
        std::fs::write(&plans, catalogue(settings.billable_messages))?;
        let gateway_secret = random_alphanumeric(32);
        let publisher_secret = random_alphanumeric(32);
        let services = start_services(dir.path(), &gateway_secret, &publisher_secret, plans)
            .await
            .context("starting auth-service and usage-service")?;
        let agent = match &settings.demo_agent_bin {
            Some(bin) => Some(start_demo_agent(bin, &settings.rust_log).await?),
            None => None,
        };
        let mut routes = vec!["demo=builtin".to_owned()];
        let remote = agent
            .as_ref()
            .map(|agent| (REMOTE_AGENT.to_owned(), agent.addr));
        for (name, addr) in remote.iter().chain(&settings.backends) {
            routes.push(format!("{name}=http://{addr}"));
        }
        let gateway =
            start_gateway(settings, &services, &gateway_secret, &routes.join(","), &[]).await?;
        let echo = start_echo().await?;
        let mut stack = Self {
            gateway,
            echo,
            node: None,
            agent,
            auth: services.auth,
            publisher_secret,
            gateway_secret,
            services,
            _dir: dir,
        };
        if let Some(script) = &settings.node_baseline {
            stack.node = Some(super::node::start(&stack, script, AUDIENCE).await?);
        }
        Ok(stack)
    }

    pub(super) fn auth_client(&self) -> anyhow::Result<AuthServiceClient<TracedChannel>> {
        let channel =
            tollgate_shared::grpc::channel(&format!("http://{}", self.auth), STARTUP_PATIENCE)?;
        Ok(AuthServiceClient::new(channel))
    }

    /// Registers `count` users, a few at a time (each registration hashes a password).
    pub async fn register(&self, count: usize) -> anyhow::Result<Vec<User>> {
        let client = self.auth_client()?;
        let run = random_lowercase(8);
        stream::iter(0..count)
            .map(|index| {
                let mut client = client.clone();
                let email = format!("loadgen-{run}-{index}@example.com");
                async move {
                    let pair = client
                        .register(RegisterRequest {
                            email,
                            password: PASSWORD.into(),
                        })
                        .await
                        .context("registering a user")?
                        .into_inner();
                    anyhow::Ok(User {
                        id: pair.user_id,
                        token: pair.access_token,
                    })
                }
            })
            .buffered(2 * cores())
            .try_collect()
            .await
    }

    /// A service token of the `backend` client: audience `ws-gateway`, scope `publish`.
    pub async fn publish_token(&self) -> anyhow::Result<String> {
        Ok(self
            .auth_client()?
            .issue_service_token(IssueServiceTokenRequest {
                client_id: "backend".into(),
                client_secret: self.publisher_secret.clone(),
                audience: "ws-gateway".into(),
                scopes: vec!["publish".into()],
            })
            .await
            .context("issuing the publisher's service token")?
            .into_inner()
            .access_token)
    }

    /// `count` more gateway processes on the same services, each with `env` on top of the
    /// usual settings (the built-in agent only), started one after another.
    pub async fn more_gateways(
        &self,
        settings: &Settings,
        count: usize,
        env: &[(&str, String)],
    ) -> anyhow::Result<Vec<ChildServer>> {
        let mut gateways = Vec::with_capacity(count);
        for _ in 0..count {
            let started = start_gateway(
                settings,
                &self.services,
                &self.gateway_secret,
                "demo=builtin",
                env,
            )
            .await;
            match started {
                Ok(gateway) => gateways.push(gateway),
                Err(err) => {
                    stop_gateways(gateways).await?;
                    return Err(err);
                }
            }
        }
        Ok(gateways)
    }

    /// Stops the gateway (SIGTERM, so it drains), the echo server and the services.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Self {
            gateway,
            echo,
            node,
            agent,
            services,
            ..
        } = self;
        let stopped = stop_gateway(gateway).await;
        stop_child(echo).await;
        if let Some(node) = node {
            stop_child(node).await;
        }
        if let Some(agent) = agent {
            stop_child(agent).await;
        }
        services.shutdown.trigger();
        let thread = services.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining the services' thread")?
            .map_err(|_| anyhow::anyhow!("the services' thread panicked"))?;
        stopped.and(joined)
    }
}

/// How long anything may take to start.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

async fn start_services(
    dir: &Path,
    gateway_secret: &str,
    publisher_secret: &str,
    plans: PathBuf,
) -> anyhow::Result<Services> {
    let sqlite = |name: &str| format!("sqlite://{}", dir.join(name).display());
    let mut auth_config = auth_service::Config::for_tests(&sqlite("auth.db"));
    // The gateway's client and the publishing backend, as in ws-gateway's tests.
    auth_config.service_clients = auth_service::clients::ClientRegistry::parse(&format!(
        "ws-gateway:{gateway_secret}:auth.validate+usage.check+agent.run,backend:{publisher_secret}:publish"
    ))
    .map_err(anyhow::Error::msg)?;
    auth_config.login_max_per_address = u64::MAX;
    let usage_db = sqlite("usage.db");

    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let (ready, addresses) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("services")
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("services-main".into())
        .spawn(move || {
            runtime.block_on(async move {
                let auth = auth_service::Application::build(auth_config, stop.clone()).await?;
                let auth_addr = auth.grpc_addr();
                let mut usage_config =
                    usage_service::Config::for_tests(&usage_db, &format!("http://{auth_addr}"));
                usage_config.plans_file = Some(plans);
                let usage = usage_service::Application::build(usage_config, stop.clone()).await?;
                let _ = ready.send((auth_addr, usage.grpc_addr()));
                let (auth, usage) =
                    tokio::join!(auth.run_until_stopped(), usage.run_until_stopped());
                auth.and(usage)
            })
        })?;
    let Ok((auth, usage)) = addresses.await else {
        let outcome = tokio::task::spawn_blocking(move || thread.join()).await?;
        return match outcome {
            Ok(Err(err)) => Err(err),
            _ => Err(anyhow::anyhow!("the services stopped while starting")),
        };
    };
    Ok(Services {
        auth,
        usage,
        shutdown,
        thread,
    })
}

/// A free port on 127.0.0.1, for a child that binds its address itself (as `gateway-memory`
/// does), so the address is known without parsing its log.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The demo agent as its own process (no caller check: `AUTH_JWKS_URL` unset), ready once its
/// port accepts connections.
async fn start_demo_agent(bin: &Path, rust_log: &str) -> anyhow::Result<ChildServer> {
    let addr = free_addr()?;
    let mut child = Command::new(bin)
        .env_clear()
        .env("AGENT_ADDR", addr.to_string())
        .env("AGENT_NAME", REMOTE_AGENT)
        .env("AGENT_SHUTDOWN_GRACE", "1s")
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release -p demo-agent`)",
                bin.display()
            )
        })?;
    let pid = child.id().context("demo-agent exited at once")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("demo-agent exited while starting: {status}");
        }
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < STARTUP_PATIENCE,
            "demo-agent never listened on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ChildServer {
        addr,
        pid,
        child,
        stdin: None,
    })
}

async fn start_gateway(
    settings: &Settings,
    services: &Services,
    secret: &str,
    agents: &str,
    env: &[(&str, String)],
) -> anyhow::Result<ChildServer> {
    let addr = free_addr()?;
    let stdout = match &settings.gateway_log {
        Some(path) => Stdio::from(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let mut child = Command::new(&settings.gateway_bin)
        .env_clear()
        .env("GATEWAY_ADDR", addr.to_string())
        .env("AUTH_SERVICE_URL", format!("http://{}", services.auth))
        .env("USAGE_SERVICE_URL", format!("http://{}", services.usage))
        .env("SERVICE_CLIENT_SECRET", secret)
        .env("GATEWAY_CONNECT_RATE", CONNECT_RATE.to_string())
        .env("GATEWAY_SHUTDOWN_GRACE", "5s")
        .env("GATEWAY_AGENTS", agents)
        .env("RUST_LOG", &settings.rust_log)
        .envs(
            settings
                .message_budget
                .map(|budget| ("GATEWAY_MESSAGE_BUDGET", budget.to_string())),
        )
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .stdin(Stdio::null())
        .stdout(stdout)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release -p ws-gateway`)",
                settings.gateway_bin.display()
            )
        })?;
    let pid = child.id().context("the gateway exited at once")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the gateway exited while starting: {status}");
        }
        if let Ok((status, _)) = super::http::get(addr, "/readyz").await
            && status.is_success()
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < STARTUP_PATIENCE,
            "the gateway never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(ChildServer {
        addr,
        pid,
        child,
        stdin: None,
    })
}

async fn start_echo() -> anyhow::Result<ChildServer> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut command = Command::new(exe);
    command.arg("--serve-echo").env_clear();
    spawn_server(command, "the echo server").await
}

/// Starts a server that prints its address on the first line of stdout and stops when its
/// stdin closes.
pub(super) async fn spawn_server(mut command: Command, what: &str) -> anyhow::Result<ChildServer> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = child
        .id()
        .with_context(|| format!("{what} exited at once"))?;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{what}'s stdout"))?;
    let line = tokio::time::timeout(STARTUP_PATIENCE, BufReader::new(stdout).lines().next_line())
        .await
        .with_context(|| format!("{what} did not start in time"))??
        .with_context(|| format!("{what} exited while starting"))?;
    let addr: SocketAddr = line
        .trim()
        .parse()
        .with_context(|| format!("{what} printed {line:?}"))?;
    Ok(ChildServer {
        addr,
        pid,
        stdin: child.stdin.take(),
        child,
    })
}

/// Stops gateways started by [`Stack::more_gateways`], each as [`stop_gateway`] does.
pub async fn stop_gateways(gateways: Vec<ChildServer>) -> anyhow::Result<()> {
    let mut result = Ok(());
    for gateway in gateways {
        result = result.and(stop_gateway(gateway).await);
    }
    result
}

/// SIGTERM, so the gateway drains as in production; killed if it takes too long.
async fn stop_gateway(mut gateway: ChildServer) -> anyhow::Result<()> {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &gateway.pid.to_string()])
        .status();
    match tokio::time::timeout(Duration::from_secs(15), gateway.child.wait()).await {
        Ok(status) => {
            let status = status?;
            anyhow::ensure!(status.success(), "the gateway exited with {status}");
            Ok(())
        }
        Err(_) => {
            let _ = gateway.child.kill().await;
            anyhow::bail!("the gateway did not stop within 15 s of SIGTERM; killed")
        }
    }
}

/// Closing its stdin stops the echo server; demo-agent gets SIGTERM. Killed if it lingers.
async fn stop_child(mut server: ChildServer) {
    if server.stdin.take().is_none() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &server.pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(5), server.child.wait())
        .await
        .is_err()
    {
        let _ = server.child.kill().await;
    }
}
