//! Metered messages against an unmetered echo: closed-loop request/reply round trips on open
//! connections, the gateway against the echo baseline ([`super::echo`]) in alternating slices
//! (ABBA).
//!
//! Each connection sends one frame and waits for its reply, again and again. The frame is the
//! gateway's cheapest metered request, `cancel_run` of a run that does not exist: the gateway
//! counts it as one `messages` unit at usage-service (`Consume`), then answers `error {code:
//! "unknown_run"}`; anything else (`rate_limited`, `dependency_unavailable`) is an error. A
//! `ping` would not do: it is keepalive, answered by the gateway alone and never metered. The
//! echo server gets the same frame and sends it back. What the ratio prices is therefore what
//! metering a message costs (plus parsing a request and its error reply) against a server that
//! does no work per message at all. With `--node-baseline`, the gateway is measured against
//! the Node server of [`super::node`] too, in a second alternation of its own.

use futures::SinkExt as _;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;
use tonic::Status;

use crate::{
    load::{Calls, Measurement, Plan},
    ws::{
        client::{self, Ws},
        observe::{Counters, DECISIONS, ServerCpu, Split},
        stack::{Stack, User},
        table::Row,
    },
};

/// The target from the issue: metered round trips per second at least this fraction of the
/// echo's, with 1.0 as the goal.
pub const MIN_RATIO: f64 = 0.6;
/// And the gateway's p50 at most this many times the echo's.
pub const MAX_P50_RATIO: f64 = 2.0;

/// A run id no run has: the gateway looks it up and finds nothing.
const NO_RUN: &str = "00000000-0000-4000-8000-000000000000";

/// A connection in the loop: where its replies come from, and its last request's number.
struct Talker {
    ws: Ws,
    metered: bool,
    requests: u64,
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    id: Option<&'a str>,
    #[serde(borrow)]
    code: Option<&'a str>,
}

async fn talk(mut talker: Talker) -> (Talker, Result<(), Status>) {
    talker.requests += 1;
    let result = round_trip(&mut talker)
        .await
        .map_err(|err| Status::internal(format!("{err:#}")));
    (talker, result)
}

/// One request and its reply: for the gateway a counted `unknown_run`, for the echo the frame.
async fn round_trip(talker: &mut Talker) -> anyhow::Result<()> {
    let id = talker.requests.to_string();
    let request = format!(r#"{{"type":"cancel_run","id":"{id}","run_id":"{NO_RUN}"}}"#);
    talker
        .ws
        .send(Message::Text(request.clone().into()))
        .await?;
    let text = client::next_text(&mut talker.ws).await?;
    if !talker.metered {
        anyhow::ensure!(text == request, "the echo answered {text}");
        return Ok(());
    }
    let reply: Reply<'_> = serde_json::from_str(&text)?;
    anyhow::ensure!(
        reply.kind == "error" && reply.code == Some("unknown_run") && reply.id == Some(&*id),
        "the gateway answered {text}"
    );
    Ok(())
}

async fn talkers(
    url: &str,
    users: &[User],
    count: usize,
    metered: bool,
) -> anyhow::Result<Vec<Talker>> {
    let mut talkers = Vec::with_capacity(count);
    for user in users.iter().cycle().take(count) {
        talkers.push(Talker {
            ws: client::open_connected(url, &user.token).await?,
            metered,
            requests: 0,
        });
    }
    Ok(talkers)
}

/// The gateway against each baseline (the echo server, and the Node one when it runs) at
/// `connections` connections (one user each, as far as `users` go), alternating slice by
/// slice with each in turn.
pub async fn run(
    connections: usize,
    plan: &Plan,
    stack: &Stack,
    users: &[User],
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let connections = connections.max(1);
    let mut baselines = vec![("WebSocket echo", &stack.echo)];
    baselines.extend(stack.node.iter().map(|node| ("Node ws + jose", node)));
    let gateway_talkers = talkers(&stack.gateway.ws_url(), users, connections, true).await?;
    let mut gateway_calls = Calls::new(gateway_talkers, talk);
    for (name, server) in baselines {
        let baseline_talkers = talkers(&server.ws_url(), users, connections, false).await?;
        let mut baseline_calls = Calls::new(baseline_talkers, talk);
        let before = Counters::scrape(stack.gateway.addr).await?;
        let (baseline, gateway, baseline_cpu, gateway_cpu) = {
            let mut baseline = ServerCpu::new(&mut baseline_calls, server.pid);
            let mut subject = ServerCpu::new(&mut gateway_calls, stack.gateway.pid);
            let (measured, gateway) = plan.against(&mut baseline, &mut subject).await;
            (measured, gateway, baseline.split(), subject.split())
        };
        let delta = Counters::scrape(stack.gateway.addr).await?.since(&before);
        report(
            name,
            (&baseline, baseline_cpu),
            (&gateway, gateway_cpu),
            rows,
        );
        let counted = delta.sum(DECISIONS, &["kind=\"messages\"", "outcome=\"allowed\""]);
        notes.push(format!(
            "Metered messages against {name}, {connections} connections: {counted:.0} messages \
             counted during the phase (warm-up and settle included); upstream calls per \
             message: {}.",
            delta.upstream_per(counted),
        ));
        for (side, measurement) in [(name, &baseline), ("the gateway", &gateway)] {
            if let Some(error) = &measurement.first_error {
                notes.push(format!("First error of {side}'s messages: {error}"));
            }
        }
    }
    Ok(())
}

fn report(
    name: &str,
    (baseline, baseline_cpu): (&Measurement, Option<Split>),
    (gateway, gateway_cpu): (&Measurement, Option<Split>),
    rows: &mut Vec<Row>,
) {
    let ratio = gateway.ops_per_sec() / baseline.ops_per_sec().max(f64::MIN_POSITIVE);
    let p50_ratio =
        gateway.quantile(0.5).as_secs_f64() / baseline.quantile(0.5).as_secs_f64().max(1e-9);
    rows.push(Row {
        relative: "baseline".into(),
        ..Row::closed_loop(
            &format!("Message round trip, {name}"),
            baseline,
            baseline_cpu,
        )
    });
    rows.push(Row {
        relative: format!("{ratio:.2} × {name}, p50 {p50_ratio:.1} ×"),
        target: format!("≥ {MIN_RATIO} ×, p50 ≤ {MAX_P50_RATIO} ×"),
        met: Some(
            ratio >= MIN_RATIO
                && p50_ratio <= MAX_P50_RATIO
                && baseline.errors + gateway.errors == 0,
        ),
        ..Row::closed_loop("Metered message round trip", gateway, gateway_cpu)
    });
}
