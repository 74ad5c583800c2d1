//! Resume latency: a thousand clients lose their connections in the middle of their runs and
//! come back at once, each resuming its run from the last event it had.
//!
//! Each of the runs streams deltas slowly from the backend of [`super::pacer`]. Its client
//! reads `agent_started` and one delta, and drops the connection; the runs go on without them.
//! A moment later every client opens a new connection (all of them first, so that connecting
//! is not timed), then all send `resume_run` at once. Measured: from a client's `resume_run` to
//! the first event of its run that follows (a replayed one), for each client, as the issue asks
//! (p99 < 50 ms at 1 000 concurrent resumes). Each resumed stream is also checked: the
//! `run_resumed` answer says `recovered: true` and the next event's `seq` is the one after the
//! client's last. The runs are cancelled at the end.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _, stream};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{
    client::{self, Ws},
    deltas::AGENT,
    pace::{Clock, Pace},
    stack::User,
    table::{Row, quantile},
};
use crate::load::new_histogram;

/// The target.
const RESUME_MAX_P99: Duration = Duration::from_millis(50);
/// Deltas per second of each run: slow, so the runs outlive the measurement.
const PER_RUN_RATE: f64 = 5.0;
/// How long the runs stream: far longer than the phase.
const RUN_LENGTH: Duration = Duration::from_secs(120);
/// How long the clients stay away, with their runs going on.
const AWAY: Duration = Duration::from_secs(1);
/// Connections being opened at once while the fleet is set up.
const OPENING_PARALLELISM: usize = 64;

#[derive(Clone, Debug)]
pub struct Settings {
    pub ws_url: String,
    /// Client `i` belongs to `users[i % users.len()]`.
    pub users: Vec<User>,
    pub clients: usize,
}

#[derive(Debug)]
pub struct Outcome {
    pub clients: usize,
    pub latency: Histogram<u64>,
    /// Clients whose resume failed or broke its stream, with the first reason.
    pub failures: usize,
    pub first_failure: Option<String>,
}

/// A client away from its run: the run and the last seq it had.
struct Away {
    user: usize,
    run_id: String,
    last_seq: u64,
}

pub async fn run(settings: &Settings, clock: Clock) -> anyhow::Result<Outcome> {
    let until = clock.micros() + RUN_LENGTH.as_micros() as u64;
    let pace = Pace::new(PER_RUN_RATE, clock.micros(), until).map_err(anyhow::Error::msg)?;
    let away: Vec<Away> = stream::iter(0..settings.clients)
        .map(|i| start_and_drop(settings, i, pace))
        .buffer_unordered(OPENING_PARALLELISM)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(AWAY).await;
    let connections: Vec<Ws> = stream::iter(&away)
        .map(|client| {
            let token = &settings.users[client.user % settings.users.len()].token;
            client::open_connected(&settings.ws_url, token)
        })
        .buffered(OPENING_PARALLELISM)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let resumed = futures::future::join_all(
        connections
            .into_iter()
            .zip(&away)
            .map(|(ws, client)| resume(ws, client)),
    )
    .await;
    let mut latency = new_histogram();
    let (mut failures, mut first_failure) = (0, None);
    for result in resumed {
        match result {
            Ok(waited) => {
                let _ = latency.record(waited.as_micros().max(1) as u64);
            }
            Err(err) => {
                failures += 1;
                first_failure.get_or_insert_with(|| format!("{err:#}"));
            }
        }
    }
    Ok(Outcome {
        clients: settings.clients,
        latency,
        failures,
        first_failure,
    })
}

/// Starts a run on a new connection, reads `agent_started` and one delta, and drops it.
async fn start_and_drop(settings: &Settings, i: usize, pace: Pace) -> anyhow::Result<Away> {
    let user = i % settings.users.len();
    let mut ws = client::open_connected(&settings.ws_url, &settings.users[user].token).await?;
    let request = serde_json::json!({
        "type": "run_agent", "agent": AGENT, "input": pace.input(), "tools": [],
    });
    ws.send(Message::text(request.to_string())).await?;
    let (mut run_id, mut last_seq) = (String::new(), 0);
    while last_seq < 2 {
        let frame: Value = serde_json::from_str(&client::next_text(&mut ws).await?)?;
        if let Some(id) = frame["run_id"].as_str() {
            run_id = id.to_owned();
        }
        last_seq = frame["seq"].as_u64().context("a run frame without seq")?;
    }
    drop(ws);
    Ok(Away {
        user,
        run_id,
        last_seq,
    })
}

/// Resumes the client's run: the time from `resume_run` to the next event of the run.
async fn resume(mut ws: Ws, client: &Away) -> anyhow::Result<Duration> {
    let request = serde_json::json!({
        "type": "resume_run", "run_id": client.run_id, "after_seq": client.last_seq,
    });
    let sent = Instant::now();
    ws.send(Message::text(request.to_string())).await?;
    let answer: Value = serde_json::from_str(&client::next_text(&mut ws).await?)?;
    anyhow::ensure!(
        answer["type"] == "run_resumed" && answer["recovered"] == true,
        "the resume was answered {answer}"
    );
    let next: Value = serde_json::from_str(&client::next_text(&mut ws).await?)?;
    let waited = sent.elapsed();
    // The replayed deltas may come merged into one frame (its seq is the last one's); the
    // backend numbers its deltas from 0 after `agent_started` (seq 1), so the frame must begin
    // with delta `last_seq - 1`: the one after the client's last, no gap, no repeat.
    let first_delta = next["text"]
        .as_str()
        .and_then(|text| text.split(':').next())
        .and_then(|index| index.parse::<u64>().ok());
    anyhow::ensure!(
        next["type"] == "agent_delta" && first_delta == Some(client.last_seq - 1),
        "after seq {} came {next}",
        client.last_seq
    );
    let cancel = serde_json::json!({"type": "cancel_run", "run_id": client.run_id});
    ws.send(Message::text(cancel.to_string())).await?;
    let _ = client::close(ws).await;
    Ok(waited)
}

pub fn report(outcome: &Outcome, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let p99 = quantile(&outcome.latency, 0.99);
    rows.push(Row {
        phase: format!("Resume → first replayed event, {} at once", outcome.clients),
        clients: format!("{} conn.", outcome.clients),
        ops: outcome.latency.len() as f64,
        p50: quantile(&outcome.latency, 0.5),
        p99,
        errors: outcome.failures as u64,
        cpu: None,
        relative: "ops: resumes measured (a count)".into(),
        target: format!("p99 < {} ms", RESUME_MAX_P99.as_millis()),
        met: Some(p99 < RESUME_MAX_P99 && outcome.failures == 0),
    });
    notes.push(format!(
        "Resumes: {} clients dropped their runs after `agent_started` and one delta, came back \
         {} s later on new connections, and resumed all at once; max {:.1} ms; failures {}{}.",
        outcome.clients,
        AWAY.as_secs(),
        outcome.latency.max() as f64 / 1000.0,
        outcome.failures,
        outcome
            .first_failure
            .as_deref()
            .map(|reason| format!(" (first: {reason})"))
            .unwrap_or_default(),
    ));
}
