//! Agent-run round trip, in process against external: the same `run_agent` (the demo agent,
//! `calculator` and `search`) until `agent_completed`, closed loop, once routed to `demo` (the
//! demo agent inside the gateway, over channels) and once to `remote` (the `demo-agent`
//! binary as a process of its own, over gRPC on loopback), in alternating slices (ABBA).
//!
//! Both runs carry the same messages and the same usage-service calls; what the external one
//! adds is the gRPC stream (a service token on each call, HTTP/2 framing, protobuf, a loopback
//! hop each way and another process's wake-ups). The ratio of the two says what an external
//! backend costs a client, and the CPU columns where it goes: the gateway's own CPU per run,
//! and the demo-agent process's, sampled over the same slices.

use futures::SinkExt as _;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;
use tonic::Status;

use crate::{
    load::{Calls, Plan},
    ws::{
        client::{self, Ws},
        observe::{Counters, DECISIONS, ServerCpu},
        stack::{REMOTE_AGENT, Stack, User},
        table::Row,
    },
};

/// The target from the issue: external runs/s at least this fraction of in-process runs/s.
pub const MIN_RATIO: f64 = 0.8;
/// The agent name routed to the demo agent in process.
const BUILTIN_AGENT: &str = "demo";

/// A connection running one agent in a loop, and the number of its last request.
struct AgentCaller {
    ws: Ws,
    agent: &'static str,
    requests: u64,
}

#[derive(Deserialize)]
struct RunFrame<'a> {
    #[serde(borrow, rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    id: Option<&'a str>,
}

async fn run_call(mut caller: AgentCaller) -> (AgentCaller, Result<(), Status>) {
    caller.requests += 1;
    let id = caller.requests.to_string();
    let result = run_agent(&mut caller.ws, caller.agent, &id)
        .await
        .map_err(|err| Status::internal(format!("{err:#}")));
    (caller, result)
}

/// One run, from `run_agent` to `agent_completed`; both tools must have run.
async fn run_agent(ws: &mut Ws, agent: &str, id: &str) -> anyhow::Result<()> {
    let request = format!(
        r#"{{"type":"run_agent","id":"{id}","agent":"{agent}","input":"What is 6 * 7?","tools":["calculator","search"]}}"#
    );
    ws.send(Message::Text(request.into())).await?;
    let mut tools = 0;
    loop {
        let text = client::next_text(ws).await?;
        let frame: RunFrame<'_> = serde_json::from_str(&text)?;
        match (frame.kind, frame.id) {
            ("error" | "rate_limited" | "agent_failed", _) => anyhow::bail!("{text}"),
            ("tool_completed", Some(of)) if of == id => tools += 1,
            ("agent_completed", Some(of)) if of == id => {
                anyhow::ensure!(tools == 2, "the run completed with {tools} of 2 tools");
                return Ok(());
            }
            _ => {}
        }
    }
}

async fn callers(
    stack: &Stack,
    users: &[User],
    count: usize,
    agent: &'static str,
) -> anyhow::Result<Vec<AgentCaller>> {
    let url = stack.gateway.ws_url();
    let mut callers = Vec::with_capacity(count);
    for user in users.iter().cycle().take(count) {
        callers.push(AgentCaller {
            ws: client::open_connected(&url, &user.token).await?,
            agent,
            requests: 0,
        });
    }
    Ok(callers)
}

/// Both routes at each number of clients in `levels`, alternating slice by slice.
pub async fn run(
    levels: &[usize],
    plan: &Plan,
    stack: &Stack,
    users: &[User],
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let agent_pid = stack
        .agent
        .as_ref()
        .map(|agent| agent.pid)
        .ok_or_else(|| anyhow::anyhow!("the demo-agent process was not started"))?;
    let gateway_pid = stack.gateway.pid;
    for &count in levels {
        let count = count.max(1);
        let builtin_callers = callers(stack, users, count, BUILTIN_AGENT).await?;
        let remote_callers = callers(stack, users, count, REMOTE_AGENT).await?;
        let before = Counters::scrape(stack.gateway.addr).await?;
        // The callers, and with them their sockets, are dropped at the end of this block: the
        // gateway sees them go.
        let (builtin, remote, builtin_cpu, remote_cpu, agent_cpu) = {
            let mut builtin_calls = Calls::new(builtin_callers, run_call);
            let mut remote_calls = Calls::new(remote_callers, run_call);
            let mut builtin = ServerCpu::new(&mut builtin_calls, gateway_pid);
            let mut remote_gateway = ServerCpu::new(&mut remote_calls, gateway_pid);
            let (measured, agent_cpu) = {
                let mut remote = ServerCpu::new(&mut remote_gateway, agent_pid);
                let measured = plan.against(&mut builtin, &mut remote).await;
                (measured, remote.split().map(|split| split.server))
            };
            let (builtin_measured, remote_measured) = measured;
            (
                builtin_measured,
                remote_measured,
                builtin.split(),
                remote_gateway.split(),
                agent_cpu,
            )
        };
        let delta = Counters::scrape(stack.gateway.addr).await?.since(&before);

        let ratio = remote.ops_per_sec() / builtin.ops_per_sec().max(f64::MIN_POSITIVE);
        let in_process = "Agent run, demo agent in process";
        let external = "Agent run, demo-agent process over gRPC";
        rows.push(Row {
            relative: "baseline".into(),
            ..Row::closed_loop(in_process, &builtin, builtin_cpu)
        });
        rows.push(Row {
            relative: format!("{ratio:.2} × in process"),
            target: format!("≥ {MIN_RATIO} × in process"),
            met: Some(ratio >= MIN_RATIO && builtin.errors + remote.errors == 0),
            ..Row::closed_loop(external, &remote, remote_cpu)
        });
        let per_run = |cores: Option<f64>, runs_per_sec: f64| {
            cores.map_or_else(
                || "n/a".to_owned(),
                |cores| {
                    format!(
                        "{:.0} µs",
                        cores / runs_per_sec.max(f64::MIN_POSITIVE) * 1e6
                    )
                },
            )
        };
        let runs = delta.sum(DECISIONS, &["kind=\"agent_runs\"", "outcome=\"allowed\""]);
        notes.push(format!(
            "Agent runs, {count} client(s) per route: {runs:.0} runs admitted during the phase \
             (both routes, warm-up included); upstream calls per run: {}. CPU per run: the \
             gateway {} in process, {} external, plus {} in the demo-agent process \
             ({:.2} cores busy there, in the \"other\" column of the external row).",
            delta.upstream_per(runs),
            per_run(builtin_cpu.map(|cpu| cpu.server), builtin.ops_per_sec()),
            per_run(remote_cpu.map(|cpu| cpu.server), remote.ops_per_sec()),
            per_run(agent_cpu, remote.ops_per_sec()),
            agent_cpu.unwrap_or(0.0),
        ));
        for (name, measurement) in [(in_process, &builtin), (external, &remote)] {
            if let Some(error) = &measurement.first_error {
                notes.push(format!("First error of {name}, {count} client(s): {error}"));
            }
        }
    }
    Ok(())
}
