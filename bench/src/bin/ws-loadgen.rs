//! `ws-loadgen`: ws-gateway under load, in one bounded run on loopback (see `BENCHMARKS.md`).
//!
//! 1. **Connects per second.** Closed-loop clients each open a WebSocket with
//!    `Authorization: Bearer <access token>`, read `connected` and close, again and again.
//!    The baseline is the same client loop against an unauthenticated echo server on the same
//!    server stack (axum, the gateway's WebSocket settings, its own process and runtime), in
//!    alternating slices (ABBA), at several numbers of clients ([`connects`]). Each gateway
//!    connect also costs calls to auth-service and usage-service; the gateway's own counters
//!    tell how many, and the report prints them.
//! 2. **Metered messages.** Closed-loop request/reply round trips on open connections: a
//!    request the gateway meters at usage-service, against the same frame echoed by the echo
//!    server, in alternating slices ([`messages`]).
//! 3. **Publish-to-client latency.** A thousand authenticated connections receive events
//!    published at a fixed rate through `POST /v1/publish` (open loop); the latency is receive
//!    time minus send time, and events that never arrive are counted. Once with one connection
//!    per user (every event its own publish), once fanned out to several connections per user.
//! 4. **Agent-run round trip, in process against external.** `run_agent` with `calculator`
//!    and `search` until `agent_completed`, closed loop, routed to the demo agent inside the
//!    gateway and to the `demo-agent` binary over gRPC in alternating slices ([`runs`]).
//! 5. **Deltas end to end.** A thousand runs on a thousand connections, each streaming deltas
//!    at a set rate from a backend served by this process ([`pacer`]), through the gateway;
//!    latency per delta, lost deltas, merged frames ([`deltas`]).
//! 6. **Resumes.** As many runs streaming slowly from the same backend; every client drops its
//!    connection after one delta, comes back a second later and resumes, all at once; the time
//!    from `resume_run` to the first replayed event ([`resumes`]).
//!
//! 7. **Events across gateway processes** (`--phases nodes`, needs Redis at `--redis-url`):
//!    four gateway processes on one Redis, one connection per user spread over them, events
//!    published through all of them; Redis deliveries per event (the gateways' own count) and
//!    publish-to-client latency and CPU with the event history off, then on ([`nodes`]).
//!
//! Every phase lasts a fixed time and the run stops by itself; nothing is asserted.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, ValueEnum};
use tollgate_bench::{
    cores,
    load::{Plan, Timing},
    report::millis,
    ws::{
        client, connects, deltas, echo, messages, nodes,
        observe::{self, Counters, EVENTS_DELIVERED, QUEUE_DROPS},
        pace::Clock,
        pacer::DeltaBackend,
        publish, resumes, runs,
        stack::{self, Stack, User},
        table::{Row, quantile},
    },
};

/// Targets from the issue.
const PUBLISH_MAX_P99: Duration = Duration::from_millis(10);

#[derive(Debug, Parser)]
#[command(
    name = "ws-loadgen",
    about = "Loads ws-gateway on loopback: connects against an echo baseline, publish latency, agent runs in process against external, deltas end to end"
)]
struct Args {
    /// The ws-gateway binary (a release build).
    #[arg(long, default_value = "target/release/ws-gateway")]
    gateway_bin: PathBuf,
    /// Measured seconds of each workload.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Slices the measured time of the closed-loop phases is cut into (the connect phase and
    /// its baseline alternate slice by slice).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Unmeasured warm-up of each workload, in seconds.
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// Clients connecting and closing in a loop, comma separated: both servers are measured at
    /// each level in turn, and the target is judged at the level where the gateway is fastest.
    #[arg(long, value_delimiter = ',', default_values_t = [32, 64, 128])]
    connect_concurrency: Vec<usize>,
    /// Connections receiving published events.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Events delivered per second in the publish phases (published per second in the
    /// one-connection-per-user phase; divided by `--fanout` in the fan-out phase).
    #[arg(long, default_value_t = 10_000)]
    events_per_second: u64,
    /// Connections per user in the fan-out phase.
    #[arg(long, default_value_t = 10)]
    fanout: usize,
    /// Publishing HTTP connections (at most one request in flight on each).
    #[arg(long, default_value_t = 32)]
    publishers: usize,
    /// Seconds the receivers keep listening after the last publish.
    #[arg(long, default_value_t = 1)]
    drain_seconds: u64,
    /// Connections (one user each) sending metered messages in a loop, and as many to the
    /// echo baseline.
    #[arg(long, default_value_t = 200)]
    message_connections: usize,
    /// Run usage-service with `messages` billable (a ledger row per message), as before the
    /// default catalogue made it rate-only.
    #[arg(long)]
    billable_messages: bool,
    /// The gateway's `GATEWAY_MESSAGE_BUDGET` (messages of a user a node reserves at once);
    /// 1 counts every message on its own, as before budgets.
    #[arg(long)]
    message_budget: Option<u64>,
    /// Also measure the message phase against the Node baseline, this script (after `npm ci`
    /// in its directory), e.g. `bench/node-baseline/server.mjs`.
    #[arg(long)]
    node_baseline: Option<PathBuf>,
    /// Connections running agents in a loop in the loaded agent-run phase, per route (a
    /// single one per route runs first, unloaded).
    #[arg(long, default_value_t = 16)]
    run_concurrency: usize,
    /// The demo-agent binary (a release build), the external backend of the agent-run phase.
    #[arg(long, default_value = "target/release/demo-agent")]
    demo_agent_bin: PathBuf,
    /// Concurrent runs streaming deltas, one per connection.
    #[arg(long, default_value_t = 1000)]
    delta_runs: usize,
    /// Deltas per second over all runs, comma separated: one level after another.
    #[arg(long, value_delimiter = ',', default_values_t = [12_500.0, 25_000.0, 50_000.0])]
    deltas_per_second: Vec<f64>,
    /// Seconds from starting the delta runs to their measured window.
    #[arg(long, default_value_t = 2)]
    delta_warmup_seconds: u64,
    /// Redis for the `nodes` phase (its keys go under a fresh prefix, deleted afterwards).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Gateway processes in the `nodes` phase.
    #[arg(long, default_value_t = 4)]
    node_gateways: usize,
    /// Connections (one per user) in the `nodes` phase.
    #[arg(long, default_value_t = 5000)]
    node_connections: usize,
    /// Events published per second in the `nodes` phase.
    #[arg(long, default_value_t = 20_000)]
    node_events_per_second: u64,
    /// Phases to run, comma separated (default: all but `nodes`, which needs Redis).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Phase::all())]
    phases: Vec<Phase>,
    /// The gateway's `RUST_LOG`.
    #[arg(long, default_value = "info")]
    rust_log: String,
    /// Write the gateway's log here (discarded by default).
    #[arg(long)]
    gateway_log: Option<PathBuf>,
    /// Internal: serve the echo baseline (the run starts itself this way).
    #[arg(long, hide = true)]
    serve_echo: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Phase {
    Connect,
    Messages,
    Publish,
    Fanout,
    Runs,
    Deltas,
    Resume,
    Nodes,
}

impl Phase {
    fn all() -> Vec<Self> {
        vec![
            Self::Connect,
            Self::Messages,
            Self::Publish,
            Self::Fanout,
            Self::Runs,
            Self::Deltas,
            Self::Resume,
        ]
    }
}

impl Args {
    fn measure(&self) -> Duration {
        Duration::from_secs(self.seconds.max(1))
    }

    fn plan(&self) -> Plan {
        let rounds = self.rounds.max(1);
        Plan {
            warmup: Duration::from_secs(self.warmup_seconds),
            slice: Timing {
                settle: Duration::from_millis(250),
                measure: self.measure() / rounds as u32,
            },
            rounds,
        }
    }

    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// The most clients connecting at once (one at least).
    fn most_connecting(&self) -> usize {
        self.connect_concurrency
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(1)
    }

    fn users_needed(&self) -> usize {
        let mut needed = 1;
        if self.runs(Phase::Connect) {
            needed = needed.max(self.most_connecting());
        }
        if self.runs(Phase::Messages) {
            needed = needed.max(self.message_connections);
        }
        if self.runs(Phase::Publish) {
            needed = needed.max(self.connections);
        }
        if self.runs(Phase::Fanout) {
            needed = needed.max(self.connections.div_ceil(self.fanout.max(1)));
        }
        if self.runs(Phase::Runs) {
            needed = needed.max(self.run_concurrency);
        }
        if self.runs(Phase::Deltas) || self.runs(Phase::Resume) {
            needed = needed.max(self.delta_runs);
        }
        if self.runs(Phase::Nodes) {
            needed = needed.max(self.node_connections);
        }
        needed
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.serve_echo {
        return match echo::serve_until_stdin_closes() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("ws-loadgen echo server: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    // The clients get one worker per core, like the gateway's runtime and the services'.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("clients")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("ws-loadgen: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ws-loadgen: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Sockets on each side, plus upstream channels, publishers and spare.
    let fleet = args
        .connections
        .max(args.delta_runs)
        .max(args.node_connections);
    let needed = (fleet + args.publishers + args.most_connecting()) as u64 + 256;
    observe::check_open_files(needed)?;
    let backend = if args.runs(Phase::Deltas) || args.runs(Phase::Resume) {
        progress("starting the delta backend");
        Some(DeltaBackend::start(Clock::new())?)
    } else {
        None
    };
    progress(
        "starting auth-service and usage-service (SQLite), ws-gateway, the echo server and \
         demo-agent",
    );
    let stack_settings = stack::Settings {
        gateway_bin: args.gateway_bin.clone(),
        rust_log: args.rust_log.clone(),
        gateway_log: args.gateway_log.clone(),
        demo_agent_bin: args.runs(Phase::Runs).then(|| args.demo_agent_bin.clone()),
        backends: backend
            .iter()
            .map(|backend| (deltas::AGENT.to_owned(), backend.addr))
            .collect(),
        billable_messages: args.billable_messages,
        message_budget: args.message_budget,
        node_baseline: args
            .node_baseline
            .clone()
            .filter(|_| args.runs(Phase::Messages)),
    };
    let started = Stack::start(&stack_settings).await;
    let stack = match started {
        Ok(stack) => stack,
        Err(err) => {
            if let Some(backend) = backend {
                let _ = backend.stop().await;
            }
            return Err(err);
        }
    };
    let measured = tokio::select! {
        measured = measure(&args, &stack, &stack_settings, backend.as_ref()) => measured,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // The gateway first: it holds the backends' streams.
    let stopped = stack.stop().await;
    let backend_stopped = match backend {
        Some(backend) => backend.stop().await,
        None => Ok(()),
    };
    let report = measured?;
    println!("{report}");
    stopped.and(backend_stopped)
}

fn progress(message: &str) {
    eprintln!("ws-loadgen: {message}");
}

async fn measure(
    args: &Args,
    stack: &Stack,
    stack_settings: &stack::Settings,
    backend: Option<&DeltaBackend>,
) -> anyhow::Result<String> {
    let count = args.users_needed();
    progress(&format!("registering {count} users"));
    let users = stack.register(count).await?;
    // One connect end to end before anything is measured: usage-service answers, the
    // gateway's channels are up.
    let gateway = stack.gateway.ws_url();
    let first = users
        .first()
        .map(|user| user.token.clone())
        .unwrap_or_default();
    client::connect_once(&gateway, &first).await?;

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if args.runs(Phase::Connect) {
        progress("connects: echo baseline and gateway, alternating");
        connects::run(
            &args.connect_concurrency,
            &args.plan(),
            stack,
            &users,
            &mut rows,
            &mut notes,
        )
        .await?;
    }
    if args.runs(Phase::Messages) {
        progress("metered messages: echo baseline and gateway, alternating");
        messages::run(
            args.message_connections,
            &args.plan(),
            stack,
            &users,
            &mut rows,
            &mut notes,
        )
        .await?;
    }
    let publish_token = stack.publish_token().await?;
    let publish_settings = |users: &[User], rate: f64| publish::Settings {
        gateways: vec![publish::Endpoint {
            ws_url: gateway.clone(),
            http_addr: stack.gateway.addr,
            pid: stack.gateway.pid,
        }],
        token: publish_token.clone(),
        users: users.to_vec(),
        connections: args.connections,
        rate,
        publishers: args.publishers,
        warmup: Duration::from_secs(args.warmup_seconds),
        measure: args.measure(),
        drain: Duration::from_secs(args.drain_seconds),
    };
    let events = args.events_per_second as f64;
    if args.runs(Phase::Publish) {
        progress(&format!(
            "publish: {} connections of {} users, {events} events/s",
            args.connections, args.connections
        ));
        let settings = publish_settings(&users[..args.connections.min(users.len())], events);
        publish_phase(stack, &settings, &mut rows, &mut notes).await?;
    }
    if args.runs(Phase::Fanout) {
        let fanout = args.fanout.max(1);
        let fanned = args.connections.div_ceil(fanout).min(users.len());
        progress(&format!(
            "publish, fanned out: {} connections of {fanned} users, {} events/s published",
            args.connections,
            events / fanout as f64
        ));
        let settings = publish_settings(&users[..fanned], events / fanout as f64);
        publish_phase(stack, &settings, &mut rows, &mut notes).await?;
    }
    if args.runs(Phase::Nodes) {
        let connections = args.node_connections.min(users.len());
        progress(&format!(
            "events across {} gateways on Redis: {connections} connections, {} events/s, \
             history off then on",
            args.node_gateways, args.node_events_per_second
        ));
        let mut publish =
            publish_settings(&users[..connections], args.node_events_per_second as f64);
        publish.connections = connections;
        let settings = nodes::Settings {
            redis_url: args.redis_url.clone(),
            gateways: args.node_gateways.max(1),
            publish,
        };
        nodes::run(stack, stack_settings, &settings, &mut rows, &mut notes).await?;
    }
    if args.runs(Phase::Runs) {
        progress("agent runs: in process and external, alternating; one client, then several");
        let levels = [1, args.run_concurrency.max(1)];
        runs::run(&levels, &args.plan(), stack, &users, &mut rows, &mut notes).await?;
    }
    if let Some(backend) = backend.filter(|_| args.runs(Phase::Deltas)) {
        progress(&format!(
            "deltas: {} runs at {:?} deltas/s in total",
            args.delta_runs, args.deltas_per_second
        ));
        let settings = deltas::Settings {
            ws_url: gateway.clone(),
            users: users.clone(),
            runs: args.delta_runs.max(1),
            rates: args.deltas_per_second.clone(),
            warmup: Duration::from_secs(args.delta_warmup_seconds),
            measure: args.measure(),
            gateway_pid: stack.gateway.pid,
        };
        deltas_phase(&settings, stack, backend, &mut rows, &mut notes).await?;
    }
    if let Some(backend) = backend.filter(|_| args.runs(Phase::Resume)) {
        progress(&format!(
            "resumes: {} runs dropped and resumed at once",
            args.delta_runs
        ));
        let settings = resumes::Settings {
            ws_url: gateway.clone(),
            users: users.clone(),
            clients: args.delta_runs.max(1),
        };
        let outcome = resumes::run(&settings, backend.clock()).await?;
        resumes::report(&outcome, &mut rows, &mut notes);
    }

    let mut out = format!(
        "ws-loadgen: {} cores; auth-service and usage-service in-process (SQLite, in-process \
         engine); ws-gateway {} as its own process (RUST_LOG={}, GATEWAY_CONNECT_RATE={}); \
         {} s measured per workload.\n\n",
        cores(),
        args.gateway_bin.display(),
        args.rust_log,
        stack::CONNECT_RATE,
        args.measure().as_secs(),
    );
    out.push_str(
        "| Phase | Clients | ops/s | p50 | p99 | Errors | CPU loadgen / server / other | CPU per op loadgen / server | Relative | Target | Met |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n",
    );
    for row in &rows {
        out.push_str(&row.render());
        out.push('\n');
    }
    out.push_str(
        "\nCPU, in cores kept busy during the measured windows: this process (clients, \
         auth-service, usage-service, the delta backend) / the server under test (ws-gateway, \
         or the echo server for the baseline) / everything else (the demo-agent process \
         included); per op, the first two divided by ops/s \
         (an op is a connect, a delivered event, an agent run or a delta).\n\n",
    );
    for note in notes {
        out.push_str(&format!("- {note}\n"));
    }
    Ok(out)
}

async fn publish_phase(
    stack: &Stack,
    settings: &publish::Settings,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let before = Counters::scrape(stack.gateway.addr).await?;
    let outcome = publish::run(settings).await?;
    let delta = Counters::scrape(stack.gateway.addr).await?.since(&before);
    let per_user = settings.connections.div_ceil(outcome.users.max(1));
    let name = format!(
        "Publish → client, {} users × {per_user} conn.",
        outcome.users
    );
    let p99 = quantile(&outcome.latency, 0.99);
    let kept_up = outcome.publishes_per_sec() >= 0.99 * outcome.rate;
    let errors = outcome.errors();
    rows.push(Row {
        relative: format!("{:.0} publishes/s", outcome.publishes_per_sec()),
        target: format!(
            "{:.0} events/s, p99 < {}, none lost",
            outcome.rate * per_user as f64,
            millis(PUBLISH_MAX_P99)
        ),
        met: Some(p99 < PUBLISH_MAX_P99 && errors == 0 && kept_up),
        ..outcome.row(&name)
    });
    notes.push(format!(
        "{name}: {} events published ({:.0}/s offered), {} publish errors; {} deliveries \
         owed, {} received, {} lost; latency p99.9 {}, max {}; publisher lag p50 {}, p99 {}; \
         connections ended early {}, failed closes {}; the gateway counted {:.0} deliveries \
         queued and {:.0} send-queue drops; upstream calls during the phase (opening and \
         closing the connections; a publish makes none): {}.",
        outcome.accepted,
        outcome.rate,
        outcome.publish_errors,
        outcome.expected,
        outcome.received,
        outcome.lost(),
        millis(quantile(&outcome.latency, 0.999)),
        millis(Duration::from_micros(outcome.latency.max())),
        millis(quantile(&outcome.lag, 0.5)),
        millis(quantile(&outcome.lag, 0.99)),
        outcome.closed_early,
        outcome.close_errors,
        delta.sum(EVENTS_DELIVERED, &[]),
        delta.sum(QUEUE_DROPS, &[]),
        delta.upstream_totals(),
    ));
    if let Some(error) = &outcome.first_error {
        notes.push(format!("First error of {name}: {error}"));
    }
    Ok(())
}

async fn deltas_phase(
    settings: &deltas::Settings,
    stack: &Stack,
    backend: &DeltaBackend,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let before = Counters::scrape(stack.gateway.addr).await?;
    let outcomes = deltas::run(settings, backend, backend.clock()).await?;
    let delta = Counters::scrape(stack.gateway.addr).await?.since(&before);
    for outcome in &outcomes {
        deltas::report(outcome, rows, notes);
    }
    notes.push(format!(
        "Deltas, all levels: upstream calls {}.",
        delta.upstream_totals()
    ));
    Ok(())
}
