use super::*;
use serde_json::json;
use tollgate_shared::testing::{redis_prefix, redis_url};

fn settings(ttl: Duration, size: usize) -> HistorySettings {
    HistorySettings { ttl, size }
}

#[test]
fn since_accepts_whole_numbers_only() {
    assert_eq!(Since::parse("0"), Ok(Since(0)));
    assert_eq!(Since::parse("42"), Ok(Since(42)));
    assert_eq!(Since::parse("-1"), Err(SinceError::Negative));
    for bad in [
        "",
        "abc",
        "1.5",
        "1e3",
        "+3",
        " 3",
        "0x10",
        "-",
        "18446744073709551616",
    ] {
        assert_eq!(Since::parse(bad), Err(SinceError::NotANumber), "{bad:?}");
    }
    assert_eq!(
        Since::parse(&(MAX_SEQ + 1).to_string()),
        Err(SinceError::NotANumber)
    );
    assert_eq!(Since::from_json(&json!(7)), Ok(Since(7)));
    assert_eq!(Since::from_json(&json!(-7)), Err(SinceError::Negative));
    for bad in [
        json!("7"),
        json!(1.5),
        json!(null),
        json!([1]),
        json!(MAX_SEQ + 1),
    ] {
        assert_eq!(Since::from_json(&bad), Err(SinceError::NotANumber), "{bad}");
    }
}

#[test]
fn channels_carry_the_user_as_their_hash_tag() {
    let user = Uuid::new_v4();
    assert_eq!(channel(user), format!("gateway:events:{{{user}}}"));
    assert_eq!(user_of(&channel(user)), Some(user));
    assert_eq!(user_of("gateway:events:{nope}"), None);
    assert_eq!(user_of("auth:revocations"), None);
}

/// The behaviour both stores share, whatever keeps the events.
async fn recovers_all_or_nothing(history: &EventHistory, publish: impl AsyncFn(Uuid, &str) -> u64) {
    let user = Uuid::new_v4();
    let none = |recovered| Recovery {
        recovered,
        events: Vec::new(),
    };
    // No history yet: everything after 0 is held (nothing), anything later is unknown.
    assert_eq!(history.since(user, Since(0)).await, Ok(none(true)));
    assert_eq!(history.since(user, Since(3)).await, Ok(none(false)));

    for n in 1..=5 {
        assert_eq!(publish(user, &format!("{{\"n\":{n}}}")).await, n);
    }
    assert_eq!(history.last(user).await, Ok(5));
    let recovery = history.since(user, Since(3)).await.unwrap();
    assert!(recovery.recovered);
    let seqs: Vec<u64> = recovery.events.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, [4, 5]);
    assert_eq!(&*recovery.events[0].1, "{\"n\":4}");
    assert_eq!(history.since(user, Since(5)).await, Ok(none(true)));
    assert_eq!(
        history.since(user, Since(9)).await,
        Err(SinceError::Ahead { since: 9, last: 5 }.into())
    );
    // Size 3: events 1 and 2 were trimmed, so a client at 1 cannot be brought up to date.
    assert_eq!(history.since(user, Since(1)).await, Ok(none(false)));
    assert_eq!(history.since(user, Since(2)).await.unwrap().events.len(), 3);
    // Another user's numbers are their own.
    assert_eq!(publish(Uuid::new_v4(), "{}").await, 1);
}

#[tokio::test]
async fn the_embedded_history_numbers_keeps_and_trims() {
    let history = EventHistory::new(Engine::local(), settings(Duration::from_secs(60), 3));
    recovers_all_or_nothing(&history, async |user, data| {
        history.append_local(user, data, |_| {})
    })
    .await;
}

#[tokio::test]
async fn the_redis_history_numbers_keeps_and_trims() {
    let engine = Engine::redis(&redis_url(), &redis_prefix()).await.unwrap();
    let history = EventHistory::new(engine, settings(Duration::from_secs(60), 3));
    recovers_all_or_nothing(&history, async |user, data| {
        history.append_and_publish(user, data).await.unwrap()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_expired_embedded_history_is_not_recovered_but_numbers_go_on() {
    let history = EventHistory::new(Engine::local(), settings(Duration::from_secs(120), 100));
    let user = Uuid::new_v4();
    history.append_local(user, "{}", |_| {});
    history.append_local(user, "{}", |_| {});
    tokio::time::advance(Duration::from_secs(121)).await;
    let recovery = history.since(user, Since(1)).await.unwrap();
    assert!(!recovery.recovered && recovery.events.is_empty());
    assert_eq!(history.append_local(user, "{}", |_| {}), 3);
    // A client that had seen 2 is fully caught up by 3 alone.
    assert_eq!(history.since(user, Since(2)).await.unwrap().events.len(), 1);
}

#[tokio::test]
async fn an_expired_redis_history_is_not_recovered() {
    let engine = Engine::redis(&redis_url(), &redis_prefix()).await.unwrap();
    let history = EventHistory::new(engine, settings(Duration::from_millis(200), 100));
    let user = Uuid::new_v4();
    history.append_and_publish(user, "{}").await.unwrap();
    history.append_and_publish(user, "{}").await.unwrap();
    assert!(history.since(user, Since(0)).await.unwrap().recovered);
    let expired = tollgate_shared::testing::eventually(Duration::from_secs(5), || async {
        !history.since(user, Since(1)).await.unwrap().recovered
    })
    .await;
    assert!(expired, "the history expired");
    assert_eq!(history.last(user).await, Ok(2), "the counter outlives it");
}

#[tokio::test]
async fn without_history_events_are_numbered_but_not_recovered() {
    let history = EventHistory::new(Engine::local(), settings(Duration::ZERO, 100));
    let user = Uuid::new_v4();
    assert_eq!(history.append_local(user, "{}", |_| {}), 1);
    assert_eq!(history.append_local(user, "{}", |_| {}), 2);
    assert!(!history.since(user, Since(1)).await.unwrap().recovered);
    assert!(history.since(user, Since(2)).await.unwrap().recovered);
}
