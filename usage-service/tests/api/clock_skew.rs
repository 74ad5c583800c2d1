//! Replicas whose clocks disagree: quota windows and billing periods follow the clock the
//! replicas share (Redis's), so a replica whose clock is a month off neither opens a second quota
//! for the same user nor bills another period.

use std::sync::Arc;

use usage_service::clock::Clock;

use crate::helpers::*;

const DAY_MS: i64 = 24 * 3600 * 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_skewed_clocks_share_one_quota_window_and_one_billing_period() {
    let a = TestApp::spawn(Backend::PostgresRedis).await;
    let mut skewed = a.config.clone();
    // 40 days fast: another billing month and another day.
    skewed.clock = Clock::skewed(40 * DAY_MS);
    let b = TestApp::start(skewed, Arc::clone(&a.database), Arc::clone(&a.auth)).await;
    let user = new_user();

    // The free plan allows 100 agent runs a month and 200 tool calls a day. B goes first, so
    // its first call is made before it has ever seen the shared clock.
    let mut runs = 0;
    let mut tools = 0;
    for call in 0..240 {
        let replica = if call % 2 == 0 { &b } else { &a };
        if replica
            .consume(&user, "agent_runs", 1, &key())
            .await
            .unwrap()
            .allowed
        {
            runs += 1;
        }
        if replica
            .consume(&user, "tool_calls", 1, &key())
            .await
            .unwrap()
            .allowed
        {
            tools += 1;
        }
    }
    assert_eq!(runs, 100, "the monthly quota held across both replicas");
    assert_eq!(tools, 200, "the daily quota held across both replicas");

    // Both bill the same period, from the same ledger rows.
    let (seen_by_a, seen_by_b) = (a.usage_of(&user).await, b.usage_of(&user).await);
    assert_eq!(seen_by_a.period_start, seen_by_b.period_start);
    assert_eq!(used(&seen_by_a, "agent_runs"), 100);
    assert_eq!(used(&seen_by_b, "agent_runs"), 100);
    assert_eq!(used(&seen_by_b, "tool_calls"), 200);

    // The per-minute message rate is judged on Redis's clock too: 30 across both, not 30 each.
    let started = std::time::Instant::now();
    let mut messages = 0;
    for call in 0..60 {
        let replica = if call % 2 == 0 { &a } else { &b };
        if replica
            .consume(&user, "messages", 1, &key())
            .await
            .unwrap()
            .allowed
        {
            messages += 1;
        }
    }
    // The burst of 30, plus one more every 2 s that the loop took.
    let refilled = started.elapsed().as_secs() / 2 + 1;
    assert!(
        (30..=30 + refilled).contains(&messages),
        "{messages} messages allowed; the budget was 30 + {refilled}"
    );
}
