use std::time::Duration;

use serde_json::json;
use tollgate_shared::engine::RelayLimit;

use super::*;
use crate::{
    history::HistorySettings,
    hub::{ConnectionHandle, Mailbox},
    protocol::Outbound,
};

fn embedded(max_frame_bytes: usize) -> (Delivery, Arc<Hub>) {
    let metrics = GatewayMetrics::default();
    let hub = Hub::new(metrics.clone());
    let engine = Engine::local();
    let history = EventHistory::new(
        engine.clone(),
        HistorySettings {
            ttl: Duration::from_secs(60),
            size: 100,
        },
    );
    let (interest, task) = engine.interest(RelayLimit::default(), Shutdown::new());
    assert!(task.is_none(), "no subscriber without redis");
    let delivery = Delivery::new(
        hub.clone(),
        Arc::new(history),
        interest,
        metrics,
        max_frame_bytes,
    );
    (delivery, hub)
}

fn next_json(mailbox: &Mailbox) -> Value {
    match mailbox.try_next() {
        Some(Outbound::Text(text)) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("a text frame, not {other:?}"),
    }
}

#[test]
fn the_event_frame_is_the_contract_frame() {
    let data = json!({"hello": ["wörld", 1]});
    let built: Value = serde_json::from_str(event_frame(7, &data.to_string()).as_str()).unwrap();
    let reference = ServerMessage::Event {
        data: &data,
        seq: 7,
    }
    .encode();
    assert_eq!(
        built,
        serde_json::from_str::<Value>(reference.as_str()).unwrap()
    );
    assert_eq!(parse("12 {\"a\":1}"), Some((12, "{\"a\":1}")));
    for bad in ["", "12", "x {}", "0 {}", "-1 {}", "12 "] {
        assert_eq!(parse(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn published_events_are_numbered_and_reach_the_users_open_connections() {
    let (delivery, hub) = embedded(1024);
    let user = Uuid::new_v4();
    let (handle, mailbox) = ConnectionHandle::new("c1".into(), 8);
    let _registration = hub.register(user, Uuid::new_v4(), Arc::clone(&handle));

    assert_eq!(delivery.publish(user, &json!({"n": 1})).await, Ok(Some(1)));
    assert!(mailbox.try_next().is_none(), "held until the gate opens");
    delivery.open(&handle, None);
    assert_eq!(
        next_json(&mailbox),
        json!({"type": "event", "data": {"n": 1}, "seq": 1})
    );
    assert_eq!(delivery.publish(user, &json!({"n": 2})).await, Ok(Some(2)));
    assert_eq!(next_json(&mailbox)["seq"], 2);
    assert_eq!(
        delivery.publish(Uuid::new_v4(), &json!(0)).await,
        Ok(Some(1))
    );
    assert!(mailbox.try_next().is_none(), "another user's event");
}

#[tokio::test]
async fn a_resumed_connection_gets_the_missed_events_then_live_ones_once() {
    let (delivery, hub) = embedded(1024);
    let user = Uuid::new_v4();
    for n in 1..=3 {
        delivery.publish(user, &json!({"n": n})).await.unwrap();
    }
    let (handle, mailbox) = ConnectionHandle::new("c1".into(), 8);
    let _registration = hub.register(user, Uuid::new_v4(), Arc::clone(&handle));
    let resumed = delivery.resume(user, Since::new(1).unwrap()).await.unwrap();
    // Published while the history was being read: both in the replay's future and live.
    delivery.publish(user, &json!({"n": 4})).await.unwrap();
    delivery.open(&handle, Some(resumed));
    assert_eq!(
        next_json(&mailbox),
        json!({"type": "events_resumed", "since": 1, "recovered": true, "replayed": 2})
    );
    let seqs: Vec<Value> = (0..3).map(|_| next_json(&mailbox)["seq"].clone()).collect();
    assert_eq!(seqs, [json!(2), json!(3), json!(4)]);
    assert!(mailbox.try_next().is_none());
}

#[tokio::test]
async fn an_event_over_the_limit_is_refused() {
    let (delivery, _hub) = embedded(64);
    let user = Uuid::new_v4();
    // Re-encoding may grow the data: `1E2` is written back as `100.0`.
    let data: Value = serde_json::from_str(&format!("[{}]", ["1E2"; 4].join(","))).unwrap();
    assert_eq!(
        delivery.publish(user, &data).await,
        Err(PublishError::TooLarge)
    );
    assert_eq!(delivery.publish(user, &json!([1])).await, Ok(Some(1)));
    assert!(delivery.bus_limit().max_bytes > 64);
}

/// What the bus drops, whatever the reason, shows on `/metrics` under its reason.
#[test]
fn bus_drops_are_counted_by_reason() {
    let mut registry = prometheus_client::registry::Registry::with_prefix("tollgate");
    let metrics = GatewayMetrics::register(&mut registry);
    let limit = Delivery::limit_for(1024, &metrics);
    limit.overflowed.inc();
    limit.dropped.inc();
    limit.dropped.inc();
    let mut page = String::new();
    prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
    for (reason, count) in [("queue_full", 1), ("oversized", 2), ("malformed", 0)] {
        let line =
            format!("tollgate_gateway_bus_messages_dropped_total{{reason=\"{reason}\"}} {count}");
        assert!(page.contains(&line), "no `{line}` in:\n{page}");
    }
}
