//! Deltas end to end: a thousand runs on a thousand WebSocket connections, each streaming
//! `delta`s from the backend of [`super::pacer`] at a set rate, through the gateway, to the
//! client.
//!
//! Each connection sends one `run_agent` to the `deltas` agent per level, whose input tells the
//! backend the per-run rate and the measured window ([`Pace`]), then reads frames until the
//! run's `agent_completed`. A frame's text is one or more records (the gateway merges a slow
//! reader's consecutive deltas), each split back out: every delta counts, and its latency is
//! the frame's arrival time minus the record's own send time. A record sent inside the window
//! is measured; the backend counts what it sent inside the same window, and what never arrived
//! is lost. Within a run the sequence numbers must arrive in order without gaps, and
//! `agent_completed` carries how many deltas the run sent, so each run is also checked whole.
//!
//! The levels (total deltas per second) run one after the other on the same connections.

use std::{borrow::Cow, collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _, TryStreamExt as _, stream};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::{
    client::{self, STEP_TIMEOUT, Ws},
    observe::{Split, sample_process, sample_threads},
    pace::{Clock, MAX_PER_RUN_RATE, Pace},
    pacer::{DeltaBackend, Tally},
    stack::User,
    table::{Row, quantile},
};
use crate::{cpu::sample_window, load::new_histogram, report::millis};

/// The agent name the gateway routes to the delta backend.
pub const AGENT: &str = "deltas";
/// Targets from the issue.
const DELTAS_PER_SECOND: f64 = 50_000.0;
const DELTA_MAX_P99: Duration = Duration::from_millis(10);
/// Connections being opened at once while the fleet is set up.
const OPENING_PARALLELISM: usize = 64;

/// The delta phase.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ws_url: String,
    /// Connection `i` belongs to `users[i % users.len()]`.
    pub users: Vec<User>,
    /// Concurrent runs, one per connection.
    pub runs: usize,
    /// Deltas per second over all runs, one level after another.
    pub rates: Vec<f64>,
    /// Time from the `run_agent`s to the measured window (the runs all start meanwhile).
    pub warmup: Duration,
    pub measure: Duration,
    pub gateway_pid: u32,
}

/// What one level measured.
#[derive(Debug)]
pub struct Outcome {
    pub runs: usize,
    /// Deltas per second offered over all runs.
    pub rate: f64,
    pub window: Duration,
    /// The backend's side over the level.
    pub tally: Tally,
    /// Measured deltas received.
    pub received: u64,
    /// Latency of the measured deltas, in µs.
    pub latency: Histogram<u64>,
    pub frames: u64,
    /// Frames that carried more than one delta.
    pub merged_frames: u64,
    /// Records out of sequence (a gap, a repeat) or unreadable.
    pub disorder: u64,
    /// Deltas a run's `agent_completed` counted that its client never saw (whole runs, window or
    /// not).
    pub missing_in_runs: u64,
    /// Runs that did not end in `agent_completed`.
    pub failed_runs: u64,
    pub first_error: Option<String>,
    pub cpu: Option<Split>,
    /// Cores kept busy by each group of this process's threads, by thread name.
    pub threads: BTreeMap<String, f64>,
}

impl Outcome {
    /// Measured deltas the backend sent that never arrived.
    pub fn lost(&self) -> u64 {
        self.tally.measured.saturating_sub(self.received)
    }

    pub fn received_per_sec(&self) -> f64 {
        self.received as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    pub fn sent_per_sec(&self) -> f64 {
        self.tally.measured as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Everything that should not happen: lost, out of order, failed runs, runs cut.
    pub fn errors(&self) -> u64 {
        self.lost() + self.disorder + self.missing_in_runs + self.failed_runs + self.tally.runs_cut
    }
}

/// One delta's record: `<seq>:<sent µs>`.
pub fn parse_record(record: &str) -> Option<(u64, u64)> {
    let (seq, sent) = record.split_once(':')?;
    Some((seq.parse().ok()?, sent.parse().ok()?))
}

/// What one connection saw of its run.
#[derive(Debug, Default)]
struct Receipts {
    /// Latencies of the measured deltas, in µs.
    latencies: Vec<u64>,
    /// Deltas of the whole run.
    total: u64,
    next_seq: u64,
    frames: u64,
    merged_frames: u64,
    disorder: u64,
    missing: u64,
    failure: Option<String>,
}

impl Receipts {
    fn delta(&mut self, text: &str, received_us: u64, pace: &Pace) {
        self.frames += 1;
        let mut records = 0;
        for record in text.split_terminator(';') {
            records += 1;
            let Some((seq, sent_us)) = parse_record(record) else {
                self.disorder += 1;
                continue;
            };
            if seq != self.next_seq {
                self.disorder += 1;
            }
            self.next_seq = seq + 1;
            self.total += 1;
            if pace.measures(sent_us) {
                self.latencies.push(received_us.saturating_sub(sent_us));
            }
        }
        if records > 1 {
            self.merged_frames += 1;
        }
    }

    fn completed(&mut self, output: &str) {
        match output.parse::<u64>() {
            Ok(sent) => self.missing = sent.saturating_sub(self.total),
            Err(_) => self.failure = Some(format!("agent_completed with output {output:?}")),
        }
    }
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    output: Option<Cow<'a, str>>,
    /// The `run_agent` request's id, on every event of its run.
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// Opens the connections, runs every level, closes them.
pub async fn run(
    settings: &Settings,
    backend: &DeltaBackend,
    clock: Clock,
) -> anyhow::Result<Vec<Outcome>> {
    anyhow::ensure!(!settings.users.is_empty(), "no users to run agents as");
    let mut fleet: Vec<Ws> = stream::iter(0..settings.runs)
        .map(|index| {
            let token = settings.users[index % settings.users.len()].token.clone();
            let url = settings.ws_url.clone();
            async move {
                client::open_connected(&url, &token)
                    .await
                    .with_context(|| format!("opening connection {index}"))
            }
        })
        .buffer_unordered(OPENING_PARALLELISM)
        .try_collect()
        .await?;
    let mut outcomes = Vec::new();
    for (level, &rate) in settings.rates.iter().enumerate() {
        let (kept, outcome) = run_level(settings, backend, clock, fleet, level, rate).await?;
        fleet = kept;
        outcomes.push(outcome);
    }
    futures::future::join_all(fleet.into_iter().map(client::close)).await;
    Ok(outcomes)
}

async fn run_level(
    settings: &Settings,
    backend: &DeltaBackend,
    clock: Clock,
    fleet: Vec<Ws>,
    level: usize,
    rate: f64,
) -> anyhow::Result<(Vec<Ws>, Outcome)> {
    let runs = fleet.len().max(1);
    let per_run = rate / runs as f64;
    anyhow::ensure!(
        per_run <= MAX_PER_RUN_RATE,
        "{rate} deltas/s over {runs} runs is {per_run} per run, above the gateway's flood limit"
    );
    backend.take_tally().await?;
    let from_us = clock.micros() + micros(settings.warmup);
    let until_us = from_us + micros(settings.measure);
    let pace = Pace::new(per_run, from_us, until_us).map_err(anyhow::Error::msg)?;
    let from = clock.instant(from_us);
    let own_cpu = sample_window(from, settings.measure);
    let gateway_cpu = sample_process(settings.gateway_pid, from, settings.measure);
    let threads = sample_threads(from, settings.measure);

    let id = format!("deltas-{level}");
    let request = format!(
        r#"{{"type":"run_agent","id":"{id}","agent":"{AGENT}","input":"{}","tools":[]}}"#,
        pace.input()
    );
    let tasks: Vec<_> = fleet
        .into_iter()
        .map(|ws| tokio::spawn(drive_run(ws, request.clone(), id.clone(), pace, clock)))
        .collect();
    let mut outcome = Outcome {
        runs,
        rate,
        window: settings.measure,
        tally: Tally::default(),
        received: 0,
        latency: new_histogram(),
        frames: 0,
        merged_frames: 0,
        disorder: 0,
        missing_in_runs: 0,
        failed_runs: 0,
        first_error: None,
        cpu: None,
        threads: BTreeMap::new(),
    };
    let mut kept = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (ws, receipts) = task.await.context("a run's client panicked")?;
        kept.extend(ws);
        outcome.received += receipts.latencies.len() as u64;
        for latency in receipts.latencies {
            outcome.latency.saturating_record(latency);
        }
        outcome.frames += receipts.frames;
        outcome.merged_frames += receipts.merged_frames;
        outcome.disorder += receipts.disorder;
        outcome.missing_in_runs += receipts.missing;
        if let Some(failure) = receipts.failure {
            outcome.failed_runs += 1;
            outcome.first_error.get_or_insert(failure);
        }
    }
    outcome.tally = backend.take_tally().await?;
    let own = tokio::task::spawn_blocking(move || own_cpu.join().ok().flatten()).await?;
    let gateway = tokio::task::spawn_blocking(move || gateway_cpu.join().ok().flatten()).await?;
    outcome.cpu = Split::new(own, gateway);
    outcome.threads = tokio::task::spawn_blocking(move || threads.join().ok().flatten())
        .await?
        .unwrap_or_default();
    Ok((kept, outcome))
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// One run on one connection, from `run_agent` to `agent_completed`. The connection comes
/// back unless it broke.
async fn drive_run(
    mut ws: Ws,
    request: String,
    id: String,
    pace: Pace,
    clock: Clock,
) -> (Option<Ws>, Receipts) {
    let mut receipts = Receipts::default();
    if let Err(err) = ws.send(Message::Text(request.into())).await {
        receipts.failure = Some(format!("sending run_agent: {err}"));
        return (None, receipts);
    }
    loop {
        let frame = match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await {
            Ok(frame) => frame,
            Err(_) => {
                receipts.failure = Some("no frame in time".into());
                return (None, receipts);
            }
        };
        let received_us = clock.micros();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                receipts.failure = Some(format!("closed by the server: {close:?}"));
                return (None, receipts);
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                receipts.failure = Some(err.to_string());
                return (None, receipts);
            }
            None => {
                receipts.failure = Some("the stream ended".into());
                return (None, receipts);
            }
        };
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
            receipts.failure = Some(format!("an unreadable frame: {}", text.as_str()));
            return (Some(ws), receipts);
        };
        // A frame of an earlier level's run (one that failed before its end) is not this run's.
        if frame.id.as_deref().is_some_and(|of| of != id) {
            continue;
        }
        match (&*frame.kind, frame.text, frame.output) {
            ("agent_delta", Some(delta), _) => receipts.delta(&delta, received_us, &pace),
            ("agent_completed", _, Some(output)) => {
                receipts.completed(&output);
                return (Some(ws), receipts);
            }
            ("agent_failed" | "error" | "rate_limited" | "run_cancelled", _, _) => {
                receipts.failure = Some(format!("{} (run {id})", text.as_str()));
                return (Some(ws), receipts);
            }
            _ => {}
        }
    }
}

/// A level's row of the results table, and its note.
pub fn report(outcome: &Outcome, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let name = format!("Deltas backend → client, {} runs", outcome.runs);
    let p99 = quantile(&outcome.latency, 0.99);
    let kept_up = outcome.sent_per_sec() >= 0.99 * outcome.rate;
    let errors = outcome.errors();
    let judged = outcome.rate >= DELTAS_PER_SECOND;
    rows.push(Row {
        phase: name.clone(),
        clients: format!("{} conn.", outcome.runs),
        ops: outcome.received_per_sec(),
        p50: quantile(&outcome.latency, 0.5),
        p99,
        errors,
        cpu: outcome.cpu,
        relative: format!(
            "{:.0} offered, {:.0} sent",
            outcome.rate,
            outcome.sent_per_sec()
        ),
        target: format!(
            "{DELTAS_PER_SECOND:.0} deltas/s, p99 < {}, none lost",
            millis(DELTA_MAX_P99)
        ),
        met: judged.then_some(p99 < DELTA_MAX_P99 && errors == 0 && kept_up),
    });
    let gateway_per_delta = outcome.cpu.map_or_else(
        || "n/a".to_owned(),
        |cpu| {
            let per = cpu.server / outcome.received_per_sec().max(f64::MIN_POSITIVE);
            format!("{:.1} µs", per * 1e6)
        },
    );
    let threads: Vec<String> = outcome
        .threads
        .iter()
        .filter(|(_, cores)| **cores >= 0.005)
        .map(|(name, cores)| format!("{name} {cores:.2}"))
        .collect();
    let tally = &outcome.tally;
    notes.push(format!(
        "{name} at {:.0} deltas/s offered ({:.1} per run): {} deltas sent in the window, \
         {} received, {} lost; latency p99.9 {}, max {}; {} frames, {} of them merged \
         ({:.3} deltas per frame); out of order or unreadable {}, missing from whole runs \
         {}, failed runs {}, runs cut {}; backend lag p50 {}, p99 {}, blocked sends {}; \
         gateway CPU per delta {gateway_per_delta}; this process's CPU by threads: {}.",
        outcome.rate,
        outcome.rate / outcome.runs.max(1) as f64,
        tally.measured,
        outcome.received,
        outcome.lost(),
        millis(quantile(&outcome.latency, 0.999)),
        millis(Duration::from_micros(outcome.latency.max())),
        outcome.frames,
        outcome.merged_frames,
        (tally.measured + tally.unmeasured) as f64 / outcome.frames.max(1) as f64,
        outcome.disorder,
        outcome.missing_in_runs,
        outcome.failed_runs,
        tally.runs_cut,
        millis(quantile(&tally.lag, 0.5)),
        millis(quantile(&tally.lag, 0.99)),
        tally.blocked,
        if threads.is_empty() {
            "n/a".to_owned()
        } else {
            threads.join(", ")
        },
    ));
    if let Some(error) = &outcome.first_error {
        notes.push(format!(
            "First error of {name} at {:.0}/s: {error}",
            outcome.rate
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::pace::record;

    #[test]
    fn merged_deltas_are_split_back_into_their_records() {
        let pace = Pace::new(50.0, 1_000, 2_000).unwrap();
        let mut receipts = Receipts::default();
        receipts.delta(&record(0, 900), 1_100, &pace);
        let merged = [record(1, 1_000), record(2, 1_500), record(3, 2_000)].concat();
        receipts.delta(&merged, 2_100, &pace);
        assert_eq!(receipts.total, 4);
        assert_eq!(receipts.frames, 2);
        assert_eq!(receipts.merged_frames, 1);
        // Each measured record's own latency; 900 and 2 000 are outside the window.
        assert_eq!(receipts.latencies, vec![1_100, 600]);
        assert_eq!(receipts.disorder, 0);
        receipts.completed("4");
        assert_eq!(receipts.missing, 0);
        assert_eq!(receipts.failure, None);
    }

    #[test]
    fn gaps_repeats_and_bad_records_are_counted() {
        let pace = Pace::new(50.0, 0, 10_000).unwrap();
        let mut receipts = Receipts::default();
        receipts.delta(&[record(0, 1), record(2, 2)].concat(), 10, &pace);
        receipts.delta(&record(2, 3), 10, &pace);
        receipts.delta("7;x:1;", 10, &pace);
        assert_eq!(
            receipts.disorder, 4,
            "a gap, a repeat and two unreadable records"
        );
        assert_eq!(receipts.total, 3);
        receipts.completed("5");
        assert_eq!(receipts.missing, 2, "the run sent 5, 3 arrived");
        receipts.completed("five");
        assert!(receipts.failure.is_some());
    }

    #[test]
    fn records_parse_only_when_whole() {
        assert_eq!(parse_record("12:345"), Some((12, 345)));
        for bad in ["", "12", "12:", ":3", "a:1", "1:b", "1:2:3", "-1:2"] {
            assert_eq!(parse_record(bad), None, "{bad:?}");
        }
    }
}
