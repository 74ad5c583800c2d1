//! Publish-to-client latency: events published at a fixed rate through `POST /v1/publish`,
//! received by a fleet of authenticated WebSocket connections.
//!
//! **Open loop.** A closed-loop publisher slows down when the gateway does and so hides the
//! latency it causes. Here a dispatcher schedules event `n` at `start + n / rate` whatever
//! happens, and hands it to one of several publishing connections (HTTP/1.1 keep-alive, one
//! request in flight each). Each event carries its sequence number and the time its request
//! was sent (`data: {"seq", "sent_us"}`, microseconds since a process-wide epoch); the
//! receiving connection subtracts that from the time it read the frame. Publisher and
//! receivers share the process and its monotonic clock, so no clock sync is involved.
//!
//! What the latency includes: the HTTP request to the gateway (service-token check, body
//! parsing), the gateway's bus and hub, the connection's send queue and writer, the kernel's
//! loopback, and the receiving task being scheduled. What it excludes, and reports separately
//! as *publisher lag*: the time an event waited for a free publishing connection after its
//! scheduled time. A large lag means the offered rate was not kept up, and the latency figures
//! then describe a lower rate than the target.
//!
//! **Counting.** Events scheduled during the warm-up are not measured. For each measured event
//! the gateway accepted (202), every connection of its user should receive it once; what did
//! not arrive by the end of the drain period is lost (delivery is at most once: a lagging bus
//! listener or a full send queue drops events, and the gateway counts those too).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode, header::HeaderValue};
use serde::Deserialize;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::Message;

use super::{
    client::{self, Ws},
    http::HttpConnection,
    observe::{Split, sample_process},
    stack::User,
    table::{Row, quantile},
};
use crate::{cpu::sample_window, load::new_histogram};

/// Connections being opened at once while the fleet is set up.
const OPENING_PARALLELISM: usize = 64;

/// A gateway process of a publish phase.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ws_url: String,
    pub http_addr: SocketAddr,
    /// Its pid, for its CPU.
    pub pid: u32,
}

/// One publish phase.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Connection `i` goes to `gateways[i % n]`, publishing connection `j` to
    /// `gateways[j % n]`; the server CPU is theirs summed.
    pub gateways: Vec<Endpoint>,
    /// The publisher's service token (scope `publish`).
    pub token: String,
    /// Connection `i` belongs to `users[i % users.len()]`; events go to these users in turn.
    pub users: Vec<User>,
    pub connections: usize,
    /// Events published per second; each reaches every connection of its user.
    pub rate: f64,
    /// Publishing connections (requests in flight at most).
    pub publishers: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// How long after the last publish the receivers keep listening.
    pub drain: Duration,
}

/// What a publish phase measured.
#[derive(Debug)]
pub struct Outcome {
    pub connections: usize,
    pub users: usize,
    pub rate: f64,
    pub window: Duration,
    /// Measured events the gateway accepted.
    pub accepted: u64,
    pub publish_errors: u64,
    /// Deliveries owed for the accepted events (one per connection of the user).
    pub expected: u64,
    pub received: u64,
    /// Publish-to-client latency of the measured deliveries, in microseconds.
    pub latency: Histogram<u64>,
    /// Send time minus scheduled time of the measured events, in microseconds.
    pub lag: Histogram<u64>,
    /// Connections that ended before the end of the phase.
    pub closed_early: usize,
    /// Connections whose close handshake at the end failed.
    pub close_errors: usize,
    pub first_error: Option<String>,
    pub cpu: Option<Split>,
}

impl Outcome {
    /// What went wrong, counted together: failed publishes, lost events, early or failed closes.
    pub fn errors(&self) -> u64 {
        self.publish_errors + self.lost() + (self.closed_early + self.close_errors) as u64
    }

    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    pub fn deliveries_per_sec(&self) -> f64 {
        self.received as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    pub fn publishes_per_sec(&self) -> f64 {
        self.accepted as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The results row of the phase named `phase`: deliveries per second, latency, errors and
    /// CPU; what it is judged against is the caller's to fill in.
    pub fn row(&self, phase: &str) -> Row {
        Row {
            phase: phase.to_owned(),
            clients: format!("{} conn.", self.connections),
            ops: self.deliveries_per_sec(),
            p50: quantile(&self.latency, 0.5),
            p99: quantile(&self.latency, 0.99),
            errors: self.errors(),
            cpu: self.cpu,
            relative: "—".into(),
            target: "—".into(),
            met: None,
        }
    }
}

/// An event on its way to a publishing connection.
#[derive(Clone, Copy, Debug)]
struct Scheduled {
    seq: u64,
    user: usize,
    at: Instant,
    measured: bool,
}

#[derive(Debug, Default)]
struct PublisherReport {
    accepted: u64,
    errors: u64,
    expected: u64,
    lag: Option<Histogram<u64>>,
    first_error: Option<String>,
}

#[derive(Debug, Default)]
struct Receipts {
    /// (sequence number, latency in µs) of every event received.
    events: Vec<(u64, u64)>,
    ended_early: Option<String>,
    close_error: Option<String>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, rename = "type")]
    kind: &'a str,
    data: Option<EventData>,
}

#[derive(Deserialize)]
struct EventData {
    seq: u64,
    sent_us: u64,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Runs one phase: opens the fleet, publishes for `warmup + measure`, drains, closes.
pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!settings.users.is_empty(), "no users to publish to");
    anyhow::ensure!(
        !settings.gateways.is_empty(),
        "no gateway to publish through"
    );
    let gateways = &settings.gateways;
    let users = settings.users.len();
    let mut per_user = vec![0_u64; users];
    for index in 0..settings.connections {
        per_user[index % users] += 1;
    }
    let per_user = Arc::new(per_user);
    let epoch = Instant::now();

    let fleet: Vec<Ws> = stream::iter(0..settings.connections)
        .map(|index| {
            let token = settings.users[index % users].token.clone();
            let url = gateways[index % gateways.len()].ws_url.clone();
            async move {
                client::open_connected(&url, &token)
                    .await
                    .with_context(|| format!("opening connection {index}"))
            }
        })
        .buffer_unordered(OPENING_PARALLELISM)
        .try_collect()
        .await?;
    let (stop, stopped) = watch::channel(false);
    let receivers: Vec<JoinHandle<Receipts>> = fleet
        .into_iter()
        .map(|ws| tokio::spawn(receive(ws, epoch, stopped.clone())))
        .collect();

    let authorization = HeaderValue::from_str(&format!("Bearer {}", settings.token))?;
    let mut senders = Vec::with_capacity(settings.publishers);
    let mut publishers = Vec::with_capacity(settings.publishers);
    let user_ids: Arc<Vec<String>> =
        Arc::new(settings.users.iter().map(|user| user.id.clone()).collect());
    for index in 0..settings.publishers.max(1) {
        let addr = gateways[index % gateways.len()].http_addr;
        let connection = HttpConnection::connect(addr).await?;
        let (sender, events) = mpsc::unbounded_channel();
        senders.push(sender);
        publishers.push(tokio::spawn(publish(
            connection,
            addr,
            authorization.clone(),
            Arc::clone(&user_ids),
            Arc::clone(&per_user),
            events,
            epoch,
        )));
    }

    // Dispatch on schedule.
    let total = (settings.rate * (settings.warmup + settings.measure).as_secs_f64()).round() as u64;
    let first_measured = (settings.rate * settings.warmup.as_secs_f64()).ceil() as u64;
    let start = Instant::now();
    let own_cpu = sample_window(start + settings.warmup, settings.measure);
    let server_cpu: Vec<_> = gateways
        .iter()
        .map(|gateway| sample_process(gateway.pid, start + settings.warmup, settings.measure))
        .collect();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut emitted = 0_u64;
    while emitted < total {
        ticker.tick().await;
        let due = ((start.elapsed().as_secs_f64() * settings.rate) as u64 + 1).min(total);
        while emitted < due {
            let event = Scheduled {
                seq: emitted,
                user: (emitted % users as u64) as usize,
                at: start + Duration::from_secs_f64(emitted as f64 / settings.rate),
                measured: emitted >= first_measured,
            };
            let publisher = (emitted % senders.len() as u64) as usize;
            senders[publisher]
                .send(event)
                .map_err(|_| anyhow::anyhow!("publisher {publisher} stopped"))?;
            emitted += 1;
        }
    }
    drop(senders);

    let mut outcome = Outcome {
        connections: settings.connections,
        users,
        rate: settings.rate,
        window: settings.measure,
        accepted: 0,
        publish_errors: 0,
        expected: 0,
        received: 0,
        latency: new_histogram(),
        lag: new_histogram(),
        closed_early: 0,
        close_errors: 0,
        first_error: None,
        cpu: None,
    };
    for publisher in publishers {
        let report = publisher.await.context("a publisher panicked")?;
        outcome.accepted += report.accepted;
        outcome.publish_errors += report.errors;
        outcome.expected += report.expected;
        if let Some(lag) = report.lag {
            let _ = outcome.lag.add(&lag);
        }
        if outcome.first_error.is_none() {
            outcome.first_error = report.first_error;
        }
    }
    tokio::time::sleep(settings.drain).await;
    let _ = stop.send(true);
    for receiver in receivers {
        let receipts = receiver.await.context("a receiver panicked")?;
        for (seq, latency) in receipts.events {
            if seq >= first_measured {
                outcome.received += 1;
                outcome.latency.saturating_record(latency);
            }
        }
        if let Some(reason) = receipts.ended_early {
            outcome.closed_early += 1;
            outcome
                .first_error
                .get_or_insert(format!("a connection ended early: {reason}"));
        }
        if let Some(reason) = receipts.close_error {
            outcome.close_errors += 1;
            outcome
                .first_error
                .get_or_insert(format!("closing a connection: {reason}"));
        }
    }
    let own = tokio::task::spawn_blocking(move || own_cpu.join().ok().flatten()).await?;
    let server = tokio::task::spawn_blocking(move || {
        server_cpu
            .into_iter()
            .map(|sampler| sampler.join().ok().flatten())
            .sum::<Option<f64>>()
    })
    .await?;
    outcome.cpu = Split::new(own, server);
    Ok(outcome)
}

/// One publishing connection: sends its events in order, one request in flight.
async fn publish(
    mut connection: HttpConnection,
    addr: SocketAddr,
    authorization: HeaderValue,
    user_ids: Arc<Vec<String>>,
    per_user: Arc<Vec<u64>>,
    mut events: mpsc::UnboundedReceiver<Scheduled>,
    epoch: Instant,
) -> PublisherReport {
    let mut report = PublisherReport {
        lag: Some(new_histogram()),
        ..PublisherReport::default()
    };
    while let Some(event) = events.recv().await {
        let now = Instant::now();
        let sent_us = micros(now.duration_since(epoch));
        let body = format!(
            r#"{{"user_id":"{}","data":{{"seq":{},"sent_us":{sent_us}}}}}"#,
            user_ids[event.user], event.seq
        );
        let result = connection
            .send(
                Method::POST,
                "/v1/publish",
                Some(&authorization),
                Some(Bytes::from(body)),
            )
            .await;
        let failure = match result {
            Ok((StatusCode::ACCEPTED, _)) => None,
            Ok((status, body)) => Some(format!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&body)
            )),
            Err(err) => {
                // The connection is gone; the next event gets a new one.
                if let Ok(fresh) = HttpConnection::connect(addr).await {
                    connection = fresh;
                }
                Some(format!("publish failed: {err:#}"))
            }
        };
        if event.measured {
            if let Some(lag) = report.lag.as_mut() {
                lag.saturating_record(micros(now.saturating_duration_since(event.at)));
            }
            match failure {
                None => {
                    report.accepted += 1;
                    report.expected += per_user[event.user];
                }
                Some(message) => {
                    report.errors += 1;
                    report.first_error.get_or_insert(message);
                }
            }
        }
    }
    report
}

/// One receiving connection: timestamps every event until told to stop, then closes.
async fn receive(mut ws: Ws, epoch: Instant, mut stop: watch::Receiver<bool>) -> Receipts {
    let mut receipts = Receipts::default();
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            frame = ws.next() => frame,
        };
        let received = micros(epoch.elapsed());
        match frame {
            Some(Ok(Message::Text(text))) => {
                if let Ok(Frame {
                    kind: "event",
                    data: Some(data),
                }) = serde_json::from_str::<Frame<'_>>(text.as_str())
                {
                    receipts
                        .events
                        .push((data.seq, received.saturating_sub(data.sent_us)));
                }
            }
            Some(Ok(Message::Close(close))) => {
                receipts.ended_early = Some(format!("closed by the server: {close:?}"));
                return receipts;
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                receipts.ended_early = Some(err.to_string());
                return receipts;
            }
            None => {
                receipts.ended_early = Some("the stream ended".into());
                return receipts;
            }
        }
    }
    if let Err(err) = client::close(ws).await {
        receipts.close_error = Some(format!("{err:#}"));
    }
    receipts
}
