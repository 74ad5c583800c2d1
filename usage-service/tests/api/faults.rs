//! Redis and PostgreSQL cut off through a fault proxy: the documented fallbacks hold, nothing
//! unacknowledged is billed, nothing acknowledged is lost, and the service recovers by itself.

use std::{sync::Arc, time::Duration};

use tollgate_shared::fault_proxy::FaultProxy;
use tonic::Code;
use usage_service::config::RedisDownMode;

use crate::helpers::*;

async fn proxied(url: &str) -> (FaultProxy, String) {
    FaultProxy::in_front_of(url).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_in_local_mode_limits_locally_and_keeps_the_ledger() {
    let (proxy, app) = with_redis_behind(RedisDownMode::Local).await;
    let user = new_user();
    assert!(
        app.consume(&user, "agent_runs", 10, &key())
            .await
            .unwrap()
            .allowed
    );
    proxy.cut();
    // Limits are now counted in this process: still enforced.
    let mut allowed = 0;
    for _ in 0..40 {
        if app
            .consume(&user, "messages", 1, &key())
            .await
            .unwrap()
            .allowed
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 30, "the local limiter enforces the plan's rate");
    assert!(
        app.consume(&user, "agent_runs", 5, &key())
            .await
            .unwrap()
            .allowed
    );
    // Billable units counted locally are billed as ever (messages are rate-only: no rows).
    let usage = app.usage_of(&user).await;
    assert_eq!(
        (used(&usage, "messages"), used(&usage, "agent_runs")),
        (0, 15)
    );
    proxy.restore();
    let recovered = eventually(Duration::from_secs(10), || async {
        let _ = app.consume(&user, "tool_calls", 1, &key()).await;
        !app.usage.limiter_degraded()
    })
    .await;
    assert!(recovered, "the limiter did not go back to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_in_local_mode_resumes_quotas_from_the_ledger() {
    let (proxy, app) = with_redis_behind(RedisDownMode::Local).await;
    let user = new_user();
    spend(&app, &user, "agent_runs", 50).await;
    spend(&app, &user, "tool_calls", 195).await;

    // The local limiter takes over each quota where the ledger says it stands.
    proxy.cut();
    assert_eq!(allowed_of(&app, &user, "tool_calls", 10).await, 5);
    assert_eq!(allowed_of(&app, &user, "agent_runs", 10).await, 10);
    proxy.restore();
    let recovered = eventually(Duration::from_secs(10), || async {
        let _ = app.consume(&new_user(), "messages", 1, &key()).await;
        !app.usage.limiter_degraded()
    })
    .await;
    assert!(recovered, "the limiter did not go back to Redis");
    spend(&app, &user, "agent_runs", 20).await;

    // A second outage starts from the ledger again (80 used), not from what this process
    // counted during the first one (60).
    proxy.cut();
    assert_eq!(allowed_of(&app, &user, "agent_runs", 30).await, 20);
    let usage = app.usage_of(&user).await;
    assert_eq!(
        (used(&usage, "agent_runs"), used(&usage, "tool_calls")),
        (100, 200),
        "never more than the plan's quotas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_in_closed_mode_refuses_and_bills_nothing() {
    let (proxy, app) = with_redis_behind(RedisDownMode::Closed).await;
    let user = new_user();
    proxy.cut();
    assert_refused(
        app.consume(&user, "agent_runs", 1, &key()).await,
        Code::Unavailable,
        "unavailable",
    );
    assert_eq!(used(&app.usage_of(&user).await, "agent_runs"), 0);
    proxy.restore();
    let recovered = eventually(Duration::from_secs(10), || async {
        app.consume(&user, "agent_runs", 1, &key())
            .await
            .is_ok_and(|answer| answer.allowed)
    })
    .await;
    assert!(recovered, "consume did not recover after Redis came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_never_acknowledges_and_loses_nothing_acknowledged() {
    let auth = Auth::spawn(Backend::PostgresRedis).await;
    let database = Arc::new(TestDatabase::create(Backend::PostgresRedis).await);
    let (proxy, url) = proxied(&database.url).await;
    let mut config = config(Backend::PostgresRedis, &database, &auth);
    config.database_url = url.into();
    let app = TestApp::start(config, database, auth).await;
    let user = new_user();
    // Warm the user's context so the outage hits the ledger, not the subscription read.
    assert!(
        app.consume(&user, "agent_runs", 2, &key())
            .await
            .unwrap()
            .allowed
    );

    proxy.cut();
    let mut acknowledged = 2;
    for _ in 0..5 {
        match app.consume(&user, "agent_runs", 1, &key()).await {
            Ok(answer) if answer.allowed => acknowledged += 1,
            Ok(answer) => panic!("unexpected denial {answer:?}"),
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
    }
    proxy.restore();
    let recovered = eventually(Duration::from_secs(20), || async {
        app.consume(&user, "agent_runs", 1, &key())
            .await
            .is_ok_and(|answer| answer.allowed)
    })
    .await;
    assert!(
        recovered,
        "consume did not recover after PostgreSQL came back"
    );
    acknowledged += 1;
    // The ledger holds exactly what was acknowledged, and the live quota agrees: refused
    // calls were given back, so the remaining quota is the plan's minus the ledger.
    assert_eq!(used(&app.usage_of(&user).await, "agent_runs"), acknowledged);
    let probe = app.consume(&user, "agent_runs", 1, &key()).await.unwrap();
    assert_eq!(probe.remaining, 100 - acknowledged - 1);
}
