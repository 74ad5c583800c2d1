use std::sync::Arc;

use futures::future::join_all;
use tollgate_proto::usage::v1::{self as pb, DenyReason};
use tonic::Code;

use crate::{both_backends, helpers::*};

async fn the_message_rate_allows_the_plan_limit_then_says_when_to_retry(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    for expected_remaining in (0..30).rev() {
        let answer = app.consume(&user, "messages", 1, &key()).await.unwrap();
        assert!(answer.allowed);
        assert_eq!(answer.remaining, expected_remaining);
        assert_eq!(answer.limit, 30);
    }
    let denied = app.consume(&user, "messages", 1, &key()).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.reason(), DenyReason::RateLimited);
    assert!(
        denied.retry_after_ms > 0 && denied.retry_after_ms <= 60_000,
        "{denied:?}"
    );
    assert_eq!(denied.upgrade_to.as_deref(), Some("pro"));
    // Messages are rate-only in the default catalogue: limited exactly, never a ledger row.
    assert_eq!(used(&app.usage_of(&user).await, "messages"), 0);
}

async fn quotas_are_exhausted_and_billed_exactly(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    assert!(
        app.consume(&user, "agent_runs", 60, &key())
            .await
            .unwrap()
            .allowed
    );
    assert!(
        app.consume(&user, "agent_runs", 40, &key())
            .await
            .unwrap()
            .allowed
    );
    let over = app.consume(&user, "agent_runs", 1, &key()).await.unwrap();
    assert_eq!(
        (over.allowed, over.reason(), over.remaining),
        (false, DenyReason::QuotaExceeded, 0)
    );
    let usage = app.usage_of(&user).await;
    assert_eq!(used(&usage, "agent_runs"), 100);
    assert_eq!(usage.plan_id, "free");
    assert_eq!(
        usage
            .meters
            .iter()
            .find(|m| m.meter == "agent_runs")
            .unwrap()
            .limit,
        Some(100)
    );
}

async fn a_retried_key_counts_once_and_a_changed_amount_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    let retry = key();
    let first = app.consume(&user, "tool_calls", 5, &retry).await.unwrap();
    let second = app.consume(&user, "tool_calls", 5, &retry).await.unwrap();
    assert!(first.allowed && second.allowed);
    // A caller that lets its clients choose keys must tell the retry from the first call: a
    // reused key that looked new would buy a second action for one unit.
    assert!(!first.replayed && second.replayed, "{first:?} {second:?}");
    assert_eq!(used(&app.usage_of(&user).await, "tool_calls"), 5);
    assert_refused(
        app.consume(&user, "tool_calls", 6, &retry).await,
        Code::AlreadyExists,
        "idempotency_conflict",
    );
    assert_refused(
        app.consume(&user, "agent_runs", 5, &retry).await,
        Code::AlreadyExists,
        "idempotency_conflict",
    );
    // Keys belong to a user: another user may use the same one.
    assert!(
        app.consume(&new_user(), "tool_calls", 6, &retry)
            .await
            .unwrap()
            .allowed
    );
}

async fn parallel_consumes_never_exceed_the_limit(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let user = new_user();
    let answers = join_all((0..64).map(|_| {
        let (app, user) = (Arc::clone(&app), user.clone());
        tokio::spawn(async move { app.consume(&user, "messages", 1, &key()).await.unwrap() })
    }))
    .await;
    let allowed = answers
        .into_iter()
        .filter(|answer| answer.as_ref().unwrap().allowed)
        .count();
    assert_eq!(allowed, 30);
}

async fn the_ledger_survives_a_restart_and_agrees_with_the_answers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (config, database, auth) = (
        app.config.clone(),
        Arc::clone(&app.database),
        Arc::clone(&app.auth),
    );
    let user = new_user();
    let mut acknowledged = 0;
    for amount in [3, 7, 11, 13, 80] {
        if app
            .consume(&user, "agent_runs", amount, &key())
            .await
            .unwrap()
            .allowed
        {
            acknowledged += amount;
        }
    }
    assert_eq!(acknowledged, 34);
    app.stop().await;
    let restarted = TestApp::start(config, database, auth).await;
    assert_eq!(
        used(&restarted.usage_of(&user).await, "agent_runs"),
        acknowledged
    );
}

/// A restart (on the embedded default, the in-process limiter's counters go with the process)
/// takes each quota up where the ledger says it stands.
async fn quotas_resume_from_the_ledger_after_a_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (config, database, auth) = (
        app.config.clone(),
        Arc::clone(&app.database),
        Arc::clone(&app.auth),
    );
    let user = new_user();
    spend(&app, &user, "agent_runs", 95).await;
    spend(&app, &user, "tool_calls", 198).await;
    app.stop().await;
    let restarted = TestApp::start(config, database, auth).await;
    assert_eq!(allowed_of(&restarted, &user, "agent_runs", 10).await, 5);
    assert_eq!(allowed_of(&restarted, &user, "tool_calls", 5).await, 2);
    let usage = restarted.usage_of(&user).await;
    assert_eq!(
        (used(&usage, "agent_runs"), used(&usage, "tool_calls")),
        (100, 200)
    );
}

/// An agent run whose backend could not be reached is given back: the ledger no longer bills
/// it, the quota has room for it again, and giving it back twice gives back once.
async fn a_refund_gives_back_a_counted_key_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    let run = key();
    spend(&app, &user, "agent_runs", 99).await;
    assert!(
        app.consume(&user, "agent_runs", 1, &run)
            .await
            .unwrap()
            .allowed
    );
    let full = app.consume(&user, "agent_runs", 1, &key()).await.unwrap();
    assert!(!full.allowed, "the quota of 100 is used up");

    assert!(app.refund(&user, "agent_runs", 1, &run).await.unwrap());
    assert_eq!(used(&app.usage_of(&user).await, "agent_runs"), 99);
    assert!(
        app.consume(&user, "agent_runs", 1, &key())
            .await
            .unwrap()
            .allowed,
        "the refunded run's room is back"
    );
    let again = app.consume(&user, "agent_runs", 1, &key()).await.unwrap();
    assert!(!again.allowed, "and only that much");

    // Twice, or for what was never counted, or with another amount: nothing.
    assert!(!app.refund(&user, "agent_runs", 1, &run).await.unwrap());
    assert!(!app.refund(&user, "agent_runs", 1, &key()).await.unwrap());
    let other = key();
    assert!(
        app.consume(&user, "tool_calls", 3, &other)
            .await
            .unwrap()
            .allowed
    );
    assert!(!app.refund(&user, "tool_calls", 1, &other).await.unwrap());
    assert_eq!(used(&app.usage_of(&user).await, "tool_calls"), 3);
    assert_eq!(used(&app.usage_of(&user).await, "agent_runs"), 100);
    assert_refused(
        app.refund(&user, "agent_runs", 1, &format!("refund:{run}"))
            .await,
        Code::InvalidArgument,
        "invalid_request",
    );
}

/// A gateway reserves a user's messages several at a time and gives back what it did not
/// spend: the rate has room for exactly those again, a second refund gives nothing, and a
/// billable meter cannot be given back in part (its ledger row is all or nothing).
async fn a_rate_only_reservation_is_given_back_in_part_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    let reservation = key();
    let reserved = app.consume(&user, "messages", 20, &reservation).await;
    let reserved = reserved.unwrap();
    assert!(reserved.allowed && reserved.rate_only, "{reserved:?}");
    spend(&app, &user, "messages", 10).await;
    let full = app.consume(&user, "messages", 1, &key()).await.unwrap();
    assert!(!full.allowed, "30 a minute: 20 reserved and 10 spent");

    // Keeping all of it, or more, gives nothing back: a bad request, not a silent no-op.
    for keep in [20, 21] {
        assert_refused(
            app.refund_keeping(&user, "messages", (20, keep), &reservation)
                .await,
            Code::InvalidArgument,
            "invalid_request",
        );
    }
    // 5 of the 20 were spent: 15 come back, and only once.
    let refund = app.refund_keeping(&user, "messages", (20, 5), &reservation);
    assert!(refund.await.unwrap());
    let again = app.refund_keeping(&user, "messages", (20, 5), &reservation);
    assert!(
        !again.await.unwrap(),
        "a repeated refund gives nothing more"
    );
    let whole = app.refund(&user, "messages", 20, &reservation).await;
    assert!(!whole.unwrap(), "nor does a refund of the whole");
    spend(&app, &user, "messages", 15).await;
    let full = app.consume(&user, "messages", 1, &key()).await.unwrap();
    assert!(!full.allowed, "exactly the 15 unspent came back");
    // The key still counts its 5: reusing it for the same 20 is a conflict, not a replay.
    let reused = app.consume(&user, "messages", 20, &reservation).await;
    assert!(reused.is_err() || !reused.unwrap().allowed);

    let run = key();
    let counted = app.consume(&user, "tool_calls", 3, &run).await.unwrap();
    assert!(counted.allowed && !counted.rate_only);
    for keep in [1, 3, 4] {
        assert_refused(
            app.refund_keeping(&user, "tool_calls", (3, keep), &run)
                .await,
            Code::InvalidArgument,
            "invalid_request",
        );
    }
    assert_eq!(used(&app.usage_of(&user).await, "tool_calls"), 3);
}

fn request(user: &str, meter: &str, amount: u64, key: &str) -> pb::ConsumeRequest {
    pb::ConsumeRequest {
        user_id: user.into(),
        meter: meter.into(),
        amount,
        idempotency_key: key.into(),
    }
}

/// A gateway meters many users' messages in one `ConsumeMany`: each is judged as its own
/// `Consume` would be (the limit holds across the batch, a retried key counts once), and one
/// bad request fails alone.
async fn many_consumes_in_one_call_are_each_judged_alone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (user, other) = (new_user(), new_user());
    let retry = key();
    let mut requests: Vec<_> = (0..31)
        .map(|_| request(&user, "messages", 1, &key()))
        .collect();
    requests.push(request(&other, "tool_calls", 2, &retry));
    requests.push(request(&other, "tool_calls", 2, &retry));
    requests.push(request(&other, "messages", 0, &key()));
    requests.push(request("not-a-user", "messages", 1, &key()));
    let outcomes = app
        .client()
        .consume_many(app.check(pb::ConsumeManyRequest { requests }))
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert_eq!(outcomes.len(), 35);
    let answers: Vec<_> = outcomes
        .into_iter()
        .map(|outcome| match outcome.outcome.unwrap() {
            pb::consume_outcome::Outcome::Consumed(consumed) => Ok(consumed),
            pb::consume_outcome::Outcome::Failed(failed) => Err(Code::from_i32(failed.code)),
        })
        .collect();
    let messages = &answers[..31];
    let allowed = messages
        .iter()
        .filter(|answer| answer.as_ref().is_ok_and(|consumed| consumed.allowed))
        .count();
    assert_eq!(
        allowed, 30,
        "the free plan's 30 messages a minute, and not one more"
    );
    assert!(messages.iter().any(|answer| {
        answer
            .as_ref()
            .is_ok_and(|denied| !denied.allowed && denied.reason == DenyReason::RateLimited as i32)
    }));
    let (first, again) = (answers[31].as_ref().unwrap(), answers[32].as_ref().unwrap());
    assert!(first.allowed && again.allowed, "{first:?} {again:?}");
    assert!(
        first.replayed != again.replayed,
        "one of the two is the replay"
    );
    assert_eq!(answers[33], Err(Code::InvalidArgument));
    assert_eq!(answers[34], Err(Code::InvalidArgument));
    assert_eq!(used(&app.usage_of(&other).await, "tool_calls"), 2);

    let too_many = (0..1001)
        .map(|_| request(&user, "messages", 1, &key()))
        .collect();
    assert_refused(
        app.client()
            .consume_many(app.check(pb::ConsumeManyRequest { requests: too_many }))
            .await,
        Code::InvalidArgument,
        "invalid_request",
    );
    let unauthenticated = app
        .client()
        .consume_many(pb::ConsumeManyRequest {
            requests: vec![request(&user, "messages", 1, &key())],
        })
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
}

both_backends!(
    many_consumes_in_one_call_are_each_judged_alone,
    a_refund_gives_back_a_counted_key_once,
    a_rate_only_reservation_is_given_back_in_part_once,
    quotas_resume_from_the_ledger_after_a_restart,
    the_message_rate_allows_the_plan_limit_then_says_when_to_retry,
    quotas_are_exhausted_and_billed_exactly,
    a_retried_key_counts_once_and_a_changed_amount_is_refused,
    parallel_consumes_never_exceed_the_limit,
    the_ledger_survives_a_restart_and_agrees_with_the_answers,
);
