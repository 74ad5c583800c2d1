//! Phase (a) of `ws-loadgen`: authenticated connects per second against the echo baseline.
//!
//! Closed-loop clients each open a WebSocket with `Authorization: Bearer <access token>`, read
//! `connected` and close, again and again; the same loop runs against the echo server in
//! alternating slices (ABBA). This runs at several numbers of clients: the echo server is
//! bound by CPU from a few clients on, while each gateway connect waits for usage-service's
//! lease round trip, so the gateway needs more clients in flight to keep the cores busy.

use std::sync::Arc;

use tonic::Status;

use crate::{
    load::{Calls, Measurement, Plan},
    ws::{
        client,
        observe::{self, AUTH_OUTCOMES, Counters, ServerCpu},
        stack::{Stack, User},
        table::Row,
    },
};

/// The target from the issue.
const MIN_RATIO: f64 = 0.6;

/// A connecting client: where it connects, with which token.
type Connector = (Arc<str>, Arc<str>);

async fn connect_call((url, token): Connector) -> (Connector, Result<(), Status>) {
    let result = client::connect_once(&url, &token)
        .await
        .map_err(|err| Status::internal(format!("{err:#}")));
    ((url, token), result)
}

/// The connect phase at each level of `--connect-concurrency`. The target is judged at the
/// level where the gateway connects fastest, against the echo server measured in the same
/// slices: levels run one after the other, and the machine's speed drifts between them more
/// than it does between the interleaved slices of one level.
pub async fn run(
    levels: &[usize],
    plan: &Plan,
    stack: &Stack,
    users: &[User],
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut peak: Option<(Measurement, Measurement)> = None;
    let mut errors = 0;
    for &callers in levels {
        let (echo, gateway) =
            connect_level(plan, stack, users, callers.max(1), rows, notes).await?;
        errors += echo.errors + gateway.errors;
        let faster = peak
            .as_ref()
            .is_none_or(|(_, best)| gateway.ops_per_sec() > best.ops_per_sec());
        if faster {
            peak = Some((echo, gateway));
        }
    }
    let Some((echo, gateway)) = peak else {
        return Ok(());
    };
    let ratio = gateway.ops_per_sec() / echo.ops_per_sec().max(f64::MIN_POSITIVE);
    rows.push(Row {
        phase: "Authenticated connect at its peak".into(),
        relative: format!(
            "{ratio:.2} × echo ({:.0}/s at {} clients)",
            echo.ops_per_sec(),
            echo.concurrency
        ),
        target: format!("≥ {MIN_RATIO} × echo"),
        met: Some(ratio >= MIN_RATIO && errors == 0),
        ..Row::closed_loop("", &gateway, None)
    });
    Ok(())
}

/// Both servers at `callers` clients, alternating slice by slice.
async fn connect_level(
    plan: &Plan,
    stack: &Stack,
    users: &[User],
    callers: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<(Measurement, Measurement)> {
    // The same requests to both servers, token included (the echo server ignores it).
    let states = |url: String| -> Vec<Connector> {
        let url: Arc<str> = url.into();
        (0..callers)
            .map(|index| {
                (
                    Arc::clone(&url),
                    users[index % users.len()].token.clone().into(),
                )
            })
            .collect()
    };
    let mut echo_calls = Calls::new(states(stack.echo.ws_url()), connect_call);
    let mut gateway_calls = Calls::new(states(stack.gateway.ws_url()), connect_call);
    let mut baseline = ServerCpu::new(&mut echo_calls, stack.echo.pid);
    let mut subject = ServerCpu::new(&mut gateway_calls, stack.gateway.pid);
    let before = Counters::scrape(stack.gateway.addr).await?;
    let (echo, gateway) = plan.against(&mut baseline, &mut subject).await;
    let delta = Counters::scrape(stack.gateway.addr).await?.since(&before);

    let ratio = gateway.ops_per_sec() / echo.ops_per_sec().max(f64::MIN_POSITIVE);
    rows.push(Row {
        relative: "baseline".into(),
        ..Row::closed_loop("WebSocket echo connect (baseline)", &echo, baseline.split())
    });
    rows.push(Row {
        relative: format!("{ratio:.2} × echo"),
        ..Row::closed_loop("Authenticated connect", &gateway, subject.split())
    });
    let accepted = delta.sum(AUTH_OUTCOMES, &["outcome=\"accepted\""]);
    notes.push(format!(
        "Authenticated connect, {callers} clients: {accepted:.0} upgrades accepted during the \
         phase (warm-up and settle included); upstream calls per accepted connect: {}; token \
         checks: {}.",
        delta.upstream_per(accepted),
        observe::auth_reasons(&delta),
    ));
    for (name, measurement) in [("echo", &echo), ("gateway", &gateway)] {
        if let Some(error) = &measurement.first_error {
            notes.push(format!(
                "First error of the {name} connects at {callers} clients: {error}"
            ));
        }
    }
    Ok((echo, gateway))
}
