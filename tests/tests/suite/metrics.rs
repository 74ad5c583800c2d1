//! Metrics (CONTRACT §7) as an operator's Prometheus sees them: each service's `/metrics`
//! scraped before and after a scenario on the real binaries, and every counter the scenario
//! touches checked to have moved by exactly what happened: a connection, a garbage and a forged
//! token, an agent run, a publish, and a message over the plan's rate limit.
//!
//! The second test checks the shape the contract promises: the families exist with their
//! types, durations are `_seconds` histograms with a `seconds` unit and buckets from below a
//! millisecond to seconds, and each histogram is consistent (cumulative buckets, `+Inf` equal to
//! `_count`).

use std::collections::BTreeMap;

use serde_json::json;
use tollgate_integration::{scrape::Scrape, *};

/// What a scenario changed on one service: `after - before` of a sum of samples.
struct Delta<'a> {
    service: &'static str,
    before: &'a Scrape,
    after: &'a Scrape,
}

impl Delta<'_> {
    fn of(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.after.sum(name, labels) - self.before.sum(name, labels)
    }

    #[track_caller]
    fn assert(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        assert_eq!(
            self.of(name, labels),
            expected,
            "{} {name}{labels:?}",
            self.service
        );
    }
}

/// The three services' `/metrics` at one moment.
struct Pages {
    gateway: Scrape,
    usage: Scrape,
    auth: Scrape,
}

impl Pages {
    async fn of(cluster: &Cluster) -> Self {
        Self {
            gateway: cluster.gateway().scrape().await,
            usage: cluster.usage.scrape().await,
            auth: cluster.auth.scrape().await,
        }
    }

    /// The changes since `before`: gateway, usage-service, auth-service.
    fn since<'a>(&'a self, before: &'a Self) -> [Delta<'a>; 3] {
        let delta = |service, before, after| Delta {
            service,
            before,
            after,
        };
        [
            delta("ws-gateway", &before.gateway, &self.gateway),
            delta("usage-service", &before.usage, &self.usage),
            delta("auth-service", &before.auth, &self.auth),
        ]
    }
}

/// Sends metered messages until one is refused for the plan's message rate; answers how many
/// were counted before it.
async fn message_until_rate_limited(client: &mut WsClient) -> u32 {
    for counted in 0..100 {
        let reply = client.metered(&format!("flood-{counted}")).await;
        match reply["type"].as_str() {
            _ if is_counted(&reply) => {}
            Some("rate_limited") => return counted,
            _ => panic!("an unexpected reply: {reply}"),
        }
    }
    panic!("100 messages within a minute and none refused on the free plan");
}

/// The scenario: a garbage and a forged token refused, one connection with an agent run, a
/// published event and messages up to the first refused for the rate; answers how many
/// messages were allowed.
async fn scenario(cluster: &Cluster) -> f64 {
    let gateway = cluster.gateway();
    let user = cluster.register().await;
    let publisher = cluster.publish_token().await;
    for (token, reason) in [
        ("not-a-jwt".to_owned(), "token_malformed"),
        (forge::foreign_signed(&user.access_token), "unknown_key"),
    ] {
        let refused = WsClient::connect(gateway, Present::Header(&token))
            .await
            .unwrap_err();
        assert_eq!((refused.status, refused.code()), (401, reason));
    }
    let (mut client, _) = WsClient::connected(gateway, &user.access_token).await;
    let open = gateway.scrape().await;
    assert_eq!(open.sum("tollgate_gateway_connections_active", &[]), 1.0);
    assert_eq!(open.sum(BREAKER, &[]), 0.0, "the breaker is closed");

    client
        .run_agent("run-metered", "What is 6 * 7?", &["calculator"])
        .await;
    let run = client.transcript("run-metered").await;
    assert_eq!(kinds(&run).last(), Some(&"agent_completed"), "{run:?}");
    let event = json!({"user_id": user.user_id, "data": {"n": 1}});
    assert_eq!(publish(gateway, Some(&publisher), &event).await.0, 202);
    client.event_where("n", &json!(1)).await;
    // The run's request was the first message (the plan allows about 30 a minute; how many
    // exactly depends on how long the test takes, so the answers are counted instead).
    let allowed_messages = 1.0 + f64::from(message_until_rate_limited(&mut client).await);
    client.close().await;
    let closed = eventually(PATIENCE, || async {
        gateway
            .metric("tollgate_gateway_connections_active")
            .await
            .eq(&0.0)
    })
    .await;
    assert!(closed, "the closed connection is still counted as active");
    allowed_messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_a_scenario_did() {
    // No lease renewal within the test, however slow the machine: it would count as one more
    // connection decision.
    let cluster = Cluster::builder()
        .gateway_env("GATEWAY_LEASE_TTL", "1h")
        .start()
        .await;
    let before = Pages::of(&cluster).await;
    let allowed_messages = scenario(&cluster).await;
    let after = Pages::of(&cluster).await;
    let [gateway, usage, auth] = after.since(&before);

    // Tokens: each outcome by its reason; only the good token reached auth-service.
    let outcomes = "tollgate_gateway_auth_outcomes_total";
    gateway.assert(outcomes, &[], 3.0);
    for (outcome, reason) in [
        ("accepted", "validated"),
        ("rejected", "token_malformed"),
        ("rejected", "unknown_key"),
    ] {
        gateway.assert(outcomes, &[("outcome", outcome), ("reason", reason)], 1.0);
    }
    auth.assert(
        "tollgate_auth_outcomes_total",
        &[("operation", "validate"), ("outcome", "ok")],
        1.0,
    );
    auth.assert(
        "tollgate_rpc_server_duration_seconds_count",
        &[("method", "/tollgate.auth.v1.AuthService/ValidateToken")],
        1.0,
    );
    gateway.assert(
        "tollgate_gateway_upstream_rpc_duration_seconds_count",
        &[("method", "ValidateToken"), ("outcome", "ok")],
        1.0,
    );

    // Limits, as the gateway decided them (three upgrades got past the address limit) ...
    let decisions = [
        ("connect", "allowed", 3.0),
        ("connections", "allowed", 1.0),
        ("messages", "allowed", allowed_messages),
        ("messages", "denied", 1.0),
        ("agent_runs", "allowed", 1.0),
        ("tool_calls", "allowed", 1.0),
    ];
    let decided = "tollgate_gateway_rate_limit_decisions_total";
    for (kind, outcome, count) in decisions {
        gateway.assert(decided, &[("kind", kind), ("outcome", outcome)], count);
    }
    let total = decisions.iter().map(|(_, _, count)| count).sum();
    gateway.assert(decided, &[], total);
    // ... and as usage-service did, with what it counted.
    let decided = "tollgate_usage_decisions_total";
    for (kind, outcome, count) in [
        ("connection", "allowed", 1.0),
        ("messages", "allowed", allowed_messages),
        ("messages", "RATE_LIMITED", 1.0),
        ("agent_runs", "allowed", 1.0),
        ("tool_calls", "allowed", 1.0),
        ("authorize", "allowed", 1.0),
    ] {
        usage.assert(decided, &[("kind", kind), ("outcome", outcome)], count);
    }
    let consumed = "tollgate_usage_consumed_total";
    usage.assert(consumed, &[("meter", "messages")], allowed_messages);
    usage.assert(consumed, &[("meter", "agent_runs")], 1.0);
    usage.assert(consumed, &[("meter", "tool_calls")], 1.0);
    // Every consume is one decision and one latency observation at usage-service. The gateway
    // sends them in `ConsumeMany` calls, a consume or more each; both sides count the same calls.
    let consumes = allowed_messages + 1.0 + 1.0 + 1.0;
    usage.assert(
        "tollgate_usage_consume_duration_seconds_count",
        &[],
        consumes,
    );
    let method = "/tollgate.usage.v1.UsageService/ConsumeMany";
    let served = usage.of(
        "tollgate_rpc_server_duration_seconds_count",
        &[("method", method), ("code", "OK")],
    );
    assert!(
        (1.0..=consumes).contains(&served),
        "{served} calls for {consumes} consumes"
    );
    gateway.assert(
        "tollgate_gateway_upstream_rpc_duration_seconds_count",
        &[("method", "ConsumeMany"), ("outcome", "ok")],
        served,
    );

    // The run, by its agent and how it ended.
    let runs = "tollgate_gateway_agent_runs_total";
    gateway.assert(runs, &[("agent", "demo"), ("outcome", "completed")], 1.0);
    gateway.assert(runs, &[], 1.0);

    // Events, and the connection's end.
    gateway.assert("tollgate_gateway_events_published_total", &[], 1.0);
    gateway.assert("tollgate_gateway_events_delivered_total", &[], 1.0);
    gateway.assert("tollgate_gateway_send_queue_drops_total", &[], 0.0);
    gateway.assert("tollgate_gateway_connections_active", &[], 0.0);
}

/// Families every service exposes, with their type; histograms are named by their unit.
const FAMILIES: [(Binary, &[(&str, &str)]); 3] = [
    (
        Binary::Gateway,
        &[
            ("tollgate_gateway_connections_active", "gauge"),
            ("tollgate_gateway_auth_breaker_state", "gauge"),
            ("tollgate_gateway_revocation_watch_up", "gauge"),
            ("tollgate_gateway_auth_outcomes", "counter"),
            ("tollgate_gateway_connections_closed", "counter"),
            ("tollgate_gateway_rate_limit_decisions", "counter"),
            ("tollgate_gateway_events_published", "counter"),
            ("tollgate_gateway_events_delivered", "counter"),
            ("tollgate_gateway_bus_events_received", "counter"),
            ("tollgate_gateway_send_queue_drops", "counter"),
            ("tollgate_gateway_revocations", "counter"),
            ("tollgate_gateway_agent_runs", "counter"),
            (
                "tollgate_gateway_upstream_rpc_duration_seconds",
                "histogram",
            ),
        ],
    ),
    (
        Binary::Usage,
        &[
            ("tollgate_usage_decisions", "counter"),
            ("tollgate_usage_consumed", "counter"),
            ("tollgate_usage_plan_changes", "counter"),
            ("tollgate_usage_consume_duration_seconds", "histogram"),
            ("tollgate_rpc_server_duration_seconds", "histogram"),
        ],
    ),
    (
        Binary::Auth,
        &[
            ("tollgate_auth_outcomes", "counter"),
            ("tollgate_auth_session_revocations", "counter"),
            ("tollgate_rpc_server_duration_seconds", "histogram"),
        ],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contract_metric_is_exposed_with_its_type_unit_and_buckets() {
    let cluster = Cluster::start().await;
    // A family is exposed once it has a series, so touch every one: a run, a plan change, and
    // a revocation that closes the connection.
    let user = cluster.register().await;
    let (mut client, _) = WsClient::connected(cluster.gateway(), &user.access_token).await;
    client
        .run_agent("run-shape", "What is 1 + 1?", &["calculator"])
        .await;
    client.transcript("run-shape").await;
    cluster.change_plan(&user.user_id, "pro").await;
    cluster.logout_all(&user).await;
    assert_eq!(client.closed().await, 4004);

    for (binary, families) in FAMILIES {
        let service = match binary {
            Binary::Gateway => cluster.gateway(),
            Binary::Usage => &cluster.usage,
            Binary::Auth => &cluster.auth,
            Binary::DemoAgent => continue,
        };
        let name = binary.name();
        // The last counters move just after the close frame is sent.
        let scrape = eventually_some(PATIENCE, || async {
            let scrape = service.scrape().await;
            families
                .iter()
                .all(|(family, _)| scrape.kind(family).is_some())
                .then_some(scrape)
        })
        .await
        .unwrap_or_default();
        for (family, kind) in families {
            assert_eq!(
                scrape.kind(family),
                Some(*kind),
                "{name}: # TYPE of {family}"
            );
            if *kind == "histogram" {
                assert_eq!(
                    scrape.unit(family),
                    Some("seconds"),
                    "{name}: # UNIT of {family}"
                );
                assert_histograms(name, &scrape, family);
            }
        }
    }
}

/// Each series of the histogram: buckets from sub-millisecond to seconds and `+Inf`,
/// cumulative, the last equal to `_count`.
fn assert_histograms(service: &str, scrape: &Scrape, family: &str) {
    let series = scrape.series(family);
    assert!(!series.is_empty(), "{service}: {family} has no series");
    for labels in series {
        let buckets = scrape.buckets(family, &labels);
        let bounds: Vec<f64> = buckets.iter().map(|(bound, _)| *bound).collect();
        assert!(
            bounds.first().is_some_and(|first| *first < 0.001)
                && bounds
                    .iter()
                    .any(|bound| (1.0..f64::INFINITY).contains(bound))
                && bounds.last() == Some(&f64::INFINITY),
            "{service}: {family}{labels:?} buckets {bounds:?}"
        );
        assert!(
            bounds.windows(2).all(|pair| pair[0] < pair[1])
                && buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
            "{service}: {family}{labels:?} not cumulative: {buckets:?}"
        );
        let count = series_value(scrape, &format!("{family}_count"), &labels);
        assert_eq!(
            buckets.last().map(|(_, n)| *n),
            Some(count),
            "{service}: {family}{labels:?}"
        );
        assert!(
            count >= 1.0,
            "{service}: {family}{labels:?} observed nothing"
        );
    }
}

fn series_value(scrape: &Scrape, name: &str, labels: &BTreeMap<String, String>) -> f64 {
    let pairs: Vec<(&str, &str)> = labels
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    scrape.sum(name, &pairs)
}
