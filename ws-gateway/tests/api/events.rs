//! Published events that resume: every event carries its user's `seq`, a client that
//! reconnects with `since` gets exactly what it missed and then live events, and bad `since`
//! values are refused clearly.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{both_backends, helpers::*};

/// Publishes `data` to `user` through `gateway`; answers the event's seq.
pub async fn publish_to(gateway: &Gateway, token: &str, user: &str, data: Value) -> u64 {
    let body = json!({"user_id": user, "data": data});
    let response = gateway.publish(Some(token), &body.to_string()).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    answer["seq"].as_u64().expect("the accepted event's seq")
}

/// Connects with `?since=…` and reads `connected`, then `events_resumed`.
pub async fn resumed(gateway: &Gateway, token: &str, since: u64) -> (WsClient, Value) {
    let mut client = gateway
        .connect_to(&format!("/ws?since={since}"), Present::Header(token))
        .await
        .unwrap_or_else(|refused| panic!("refused: {refused:?}"));
    client.expect("connected").await;
    let answer = client.expect("events_resumed").await;
    (client, answer)
}

/// The seqs of the next `n` frames, which must all be events.
/// A gateway (configured by `tweak`), a user and a publisher's service token.
async fn with_publisher(
    backend: Backend,
    tweak: impl FnOnce(&mut ws_gateway::Config),
) -> (
    std::sync::Arc<Services>,
    Gateway,
    tollgate_proto::auth::v1::TokenPair,
    String,
) {
    let services = Services::spawn(backend).await;
    let mut config = services.gateway_config();
    tweak(&mut config);
    let gateway = Gateway::start(config).await;
    let alice = services.register().await;
    let publisher = services
        .service_token("backend", "ws-gateway", &["publish"])
        .await;
    (services, gateway, alice, publisher)
}

async fn seqs(client: &mut WsClient, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for _ in 0..n {
        seqs.push(client.expect("event").await["seq"].as_u64().unwrap());
    }
    seqs
}

/// Closes and waits until the server has let the connection go (its lease with it).
pub async fn finish(mut client: WsClient) {
    client
        .send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    while let Some(Received::Json(_)) = client.recv_within(PATIENCE).await {}
}

/// Nothing but the answer to a ping is waiting: no duplicate, no stray event.
async fn nothing_else(client: &mut WsClient) {
    assert_eq!(client.ping("quiet").await["type"], "pong");
}

async fn a_reconnect_with_since_gets_exactly_the_missed_events_then_live_ones(backend: Backend) {
    let (_services, gateway, alice, publisher) = with_publisher(backend, |_| {}).await;
    let publish = |n: u64| publish_to(&gateway, &publisher, &alice.user_id, json!({"n": n}));

    let (mut client, _) = gateway.connected(&alice.access_token).await;
    for n in 1..=3 {
        assert_eq!(publish(n).await, n, "a user's events are numbered from 1");
    }
    for n in 1..=3 {
        let event = client.expect("event").await;
        assert_eq!(
            (event["seq"].as_u64(), &event["data"]),
            (Some(n), &json!({"n": n}))
        );
    }
    finish(client).await;

    // Missed while away: 4 and 5.
    publish(4).await;
    publish(5).await;
    let (mut client, answer) = resumed(&gateway, &alice.access_token, 3).await;
    assert_eq!(
        answer,
        json!({"type": "events_resumed", "since": 3, "recovered": true, "replayed": 2})
    );
    assert_eq!(seqs(&mut client, 2).await, [4, 5]);
    publish(6).await;
    assert_eq!(seqs(&mut client, 1).await, [6]);
    nothing_else(&mut client).await;
    finish(client).await;

    // The same through the in-band `auth` message; up to date means nothing to replay.
    let mut client = gateway.connect(Present::Nothing).await.unwrap();
    client
        .send_json(json!({"type": "auth", "token": alice.access_token, "since": 6}))
        .await;
    client.expect("connected").await;
    let answer = client.expect("events_resumed").await;
    assert_eq!(
        (answer["recovered"].as_bool(), answer["replayed"].as_u64()),
        (Some(true), Some(0))
    );
    publish(7).await;
    assert_eq!(seqs(&mut client, 1).await, [7]);
    nothing_else(&mut client).await;
}

async fn a_resume_while_events_keep_coming_has_no_gap_and_no_duplicate(backend: Backend) {
    let (_services, gateway, alice, publisher) = with_publisher(backend, |_| {}).await;
    const TOTAL: u64 = 60;
    let publishing = {
        let (gateway_url, publisher, user) = (
            gateway.url("/v1/publish"),
            publisher.clone(),
            alice.user_id.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 1..=TOTAL {
                let body = json!({"user_id": user, "data": {"n": n}});
                let response = http
                    .post(&gateway_url)
                    .bearer_auth(&publisher)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                // Paced, so that reconnections land between events as well as after them.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Reconnect again and again while the events go out; each connection resumes from the
    // last seq the previous one saw.
    let mut seen: Vec<u64> = Vec::new();
    while seen.last().copied().unwrap_or(0) < TOTAL {
        let since = seen.last().copied().unwrap_or(0);
        let (mut client, answer) = resumed(&gateway, &alice.access_token, since).await;
        assert_eq!(answer["recovered"], true, "{answer}");
        let take = 1 + seen.len() % 7;
        for _ in 0..take {
            match client.recv_within(Duration::from_secs(5)).await {
                Some(Received::Json(event)) if event["type"] == "event" => {
                    seen.push(event["seq"].as_u64().unwrap());
                }
                other => panic!("expected an event, got {other:?}"),
            }
            if seen.last() == Some(&TOTAL) {
                break;
            }
        }
        finish(client).await;
    }
    publishing.await.unwrap();
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(seen, expected, "every event once, in order");
}

async fn an_expired_history_is_not_recovered(backend: Backend) {
    let (_services, gateway, alice, publisher) = with_publisher(backend, |config| {
        config.event_history_ttl = Duration::from_millis(300);
    })
    .await;
    publish_to(&gateway, &publisher, &alice.user_id, json!(1)).await;
    publish_to(&gateway, &publisher, &alice.user_id, json!(2)).await;
    let expired = eventually(PATIENCE, || async {
        let (client, answer) = resumed(&gateway, &alice.access_token, 1).await;
        finish(client).await;
        answer["recovered"] == false
    })
    .await;
    assert!(expired, "the history expired");
    // Nothing is replayed after a lost history, and live events go on from the same count.
    let (mut client, answer) = resumed(&gateway, &alice.access_token, 1).await;
    assert_eq!(answer["replayed"], 0);
    assert_eq!(
        publish_to(&gateway, &publisher, &alice.user_id, json!(3)).await,
        3
    );
    assert_eq!(seqs(&mut client, 1).await, [3]);
    nothing_else(&mut client).await;
}

async fn bad_since_values_are_refused_clearly(backend: Backend) {
    let (_services, gateway, alice, publisher) = with_publisher(backend, |_| {}).await;

    // A user with no history: 0 is fully recovered (there is nothing), anything else is not.
    let (client, answer) = resumed(&gateway, &alice.access_token, 0).await;
    assert_eq!(
        (answer["recovered"].as_bool(), answer["replayed"].as_u64()),
        (Some(true), Some(0))
    );
    finish(client).await;
    let (client, answer) = resumed(&gateway, &alice.access_token, 5).await;
    assert_eq!(answer["recovered"], false);
    finish(client).await;

    publish_to(&gateway, &publisher, &alice.user_id, json!(1)).await;
    publish_to(&gateway, &publisher, &alice.user_id, json!(2)).await;
    for (since, says) in [
        ("-1", "must not be negative"),
        ("abc", "whole number"),
        ("1.5", "whole number"),
        ("", "whole number"),
        ("99999999999999999999", "whole number"),
        ("3", "ahead of the user's last event (2)"),
    ] {
        let refused = gateway
            .connect_to(
                &format!("/ws?since={since}"),
                Present::Header(&alice.access_token),
            )
            .await
            .expect_err("refused");
        assert_eq!(
            (refused.status, refused.code()),
            (400, "bad_request"),
            "{since}"
        );
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{since}: {message}");
    }

    // In-band: an error frame naming the problem, then 1008.
    for since in [json!(-1), json!("2"), json!(2.5), json!(3)] {
        let mut client = gateway.connect(Present::Nothing).await.unwrap();
        client
            .send_json(
                json!({"type": "auth", "id": "a", "token": alice.access_token, "since": since}),
            )
            .await;
        let error = client.expect("error").await;
        assert_eq!(error["code"], "bad_request", "{since}");
        assert!(
            error["message"].as_str().unwrap().contains("since"),
            "{error}"
        );
        assert_eq!(client.closed().await, 1008, "{since}");
    }
}

both_backends!(
    a_reconnect_with_since_gets_exactly_the_missed_events_then_live_ones,
    a_resume_while_events_keep_coming_has_no_gap_and_no_duplicate,
    an_expired_history_is_not_recovered,
    bad_since_values_are_refused_clearly,
);
