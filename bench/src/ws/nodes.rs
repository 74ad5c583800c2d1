//! Published events across several gateway processes on one Redis: how many Redis deliveries
//! each event costs, and the publish-to-client latency and CPU with the event history on and
//! off, measured in the same run.
//!
//! Each measurement starts its own gateway processes on the stack's services, with `REDIS_URL`,
//! a fresh `REDIS_PREFIX` and `GATEWAY_EVENT_HISTORY_TTL` (`0s` for "off"), and runs the
//! publish phase ([`super::publish`]) over them: connection `i` (user `i`, one connection per
//! user) on gateway `i % n`, publishing connections spread the same way, so most events are
//! published on a node that does not hold their user. Each gateway counts the events it took
//! from Redis (`tollgate_gateway_bus_events_received_total`); their sum over the events
//! accepted is the deliveries per event. When every node heard every event (the broadcast
//! channel this replaced) it was the number of nodes; with per-user subscriptions it is the
//! number of nodes holding a connection of the user, here one. The prefix's keys are deleted
//! afterwards.

use std::time::Duration;

use anyhow::Context as _;
use redis::AsyncCommands as _;

use super::{
    observe::Counters,
    publish::{self, Endpoint},
    stack::{self, ChildServer, Stack},
    table::{Row, quantile},
};
use crate::{random_lowercase, report::millis};

/// The target for the history-on latency.
const MAX_P99: Duration = Duration::from_millis(5);
const RECEIVED: &str = "tollgate_gateway_bus_events_received_total";
const PUBLISHED: &str = "tollgate_gateway_events_published_total";

/// One run of the phase.
#[derive(Clone, Debug)]
pub struct Settings {
    pub redis_url: String,
    /// Gateway processes.
    pub gateways: usize,
    /// The publish phase over them (its `gateways` are filled in here).
    pub publish: publish::Settings,
}

/// Runs the phase with the history off, then on.
pub async fn run(
    stack: &Stack,
    stack_settings: &stack::Settings,
    settings: &Settings,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut measured = Vec::new();
    for (label, ttl) in [("history off", "0s"), ("history on", "2m")] {
        let prefix = format!("loadgen-{}", random_lowercase(8));
        let env = [
            ("REDIS_URL", settings.redis_url.clone()),
            ("REDIS_PREFIX", prefix.clone()),
            ("GATEWAY_EVENT_HISTORY_TTL", ttl.to_owned()),
        ];
        let gateways = stack
            .more_gateways(stack_settings, settings.gateways, &env)
            .await?;
        let outcome = measure(&gateways, settings, label, rows, notes).await;
        let stopped = stack::stop_gateways(gateways).await;
        let cleaned = delete_prefix(&settings.redis_url, &prefix).await;
        measured.push(outcome?);
        stopped?;
        cleaned?;
    }
    if let [off, on] = measured.as_slice() {
        notes.push(format!(
            "Events across {} gateways, same run: gateway CPU per delivered event with the \
             history on / off = {:.2} ({:.1} / {:.1} µs); p99 on / off = {} / {}.",
            settings.gateways,
            on.cpu_per_event / off.cpu_per_event.max(f64::MIN_POSITIVE),
            on.cpu_per_event * 1e6,
            off.cpu_per_event * 1e6,
            millis(on.p99),
            millis(off.p99),
        ));
    }
    Ok(())
}

/// What one measurement feeds the comparison.
struct Measured {
    /// Gateway CPU-seconds per delivered event (all gateways).
    cpu_per_event: f64,
    p99: Duration,
}

async fn measure(
    gateways: &[ChildServer],
    settings: &Settings,
    label: &str,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Measured> {
    let mut publish = settings.publish.clone();
    publish.gateways = gateways
        .iter()
        .map(|gateway| Endpoint {
            ws_url: gateway.ws_url(),
            http_addr: gateway.addr,
            pid: gateway.pid,
        })
        .collect();
    let before = scrape_all(gateways).await?;
    let outcome = publish::run(&publish).await?;
    let after = scrape_all(gateways).await?;
    let (mut received, mut published, mut per_node) = (0.0, 0.0, Vec::new());
    for (after, before) in after.iter().zip(&before) {
        let delta = after.since(before);
        received += delta.sum(RECEIVED, &[]);
        published += delta.sum(PUBLISHED, &[]);
        per_node.push(format!("{:.0}", delta.sum(RECEIVED, &[])));
    }
    let per_event = received / published.max(1.0);
    let p99 = quantile(&outcome.latency, 0.99);
    let errors = outcome.errors();
    let name = format!("Publish → client, {} gateways, {label}", gateways.len());
    let history_on = label.ends_with(" on");
    rows.push(Row {
        relative: format!("{per_event:.2} Redis deliveries per event"),
        target: if history_on {
            format!("p99 < {}, ≈1 delivery per event", millis(MAX_P99))
        } else {
            "≈1 delivery per event".to_owned()
        },
        met: Some(per_event < 1.05 && errors == 0 && (!history_on || p99 < MAX_P99)),
        ..outcome.row(&name)
    });
    notes.push(format!(
        "{name}: {} events published ({:.0}/s offered), {} publish errors, {} lost; the \
         gateways took {received:.0} events from Redis for {published:.0} published \
         ({per_event:.3} per event; per gateway {}), where the former broadcast channel made \
         it {} per event; publisher lag p99 {}.",
        outcome.accepted,
        outcome.rate,
        outcome.publish_errors,
        outcome.lost(),
        per_node.join(" / "),
        gateways.len(),
        millis(quantile(&outcome.lag, 0.99)),
    ));
    if let Some(error) = &outcome.first_error {
        notes.push(format!("First error of {name}: {error}"));
    }
    let cpu_per_event = outcome.cpu.map_or(0.0, |cpu| {
        cpu.server / outcome.deliveries_per_sec().max(1.0)
    });
    Ok(Measured { cpu_per_event, p99 })
}

async fn scrape_all(gateways: &[ChildServer]) -> anyhow::Result<Vec<Counters>> {
    let mut all = Vec::with_capacity(gateways.len());
    for gateway in gateways {
        all.push(Counters::scrape(gateway.addr).await?);
    }
    Ok(all)
}

/// Deletes every key under `prefix` (the run's histories and counters).
async fn delete_prefix(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url).context("REDIS_URL")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis to clean up")?;
    let keys: Vec<String> = {
        let mut iter = conn.scan_match::<_, String>(format!("{prefix}:*")).await?;
        let mut keys = Vec::new();
        while let Some(key) = futures::StreamExt::next(&mut iter).await {
            keys.push(key);
        }
        keys
    };
    for chunk in keys.chunks(500) {
        let _: () = conn.del(chunk).await?;
    }
    Ok(())
}
