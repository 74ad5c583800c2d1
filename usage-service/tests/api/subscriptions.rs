use tollgate_proto::usage::v1::{GetSubscriptionRequest, ListPlansRequest};
use tonic::Code;
use usage_service::domain::UserId;

use crate::{both_backends, helpers::*};

async fn every_user_starts_on_free_and_plans_are_listed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    let subscription = app
        .client()
        .get_subscription(app.check(GetSubscriptionRequest {
            user_id: user.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(subscription.plan_id, "free");
    assert!(subscription.period_start < subscription.period_end);
    assert_eq!(subscription.pending_plan_id, None);
    let plans = app
        .client()
        .list_plans(app.check(ListPlansRequest {}))
        .await
        .unwrap()
        .into_inner()
        .plans;
    let ids: Vec<_> = plans.iter().map(|plan| plan.id.as_str()).collect();
    assert_eq!(ids, ["free", "pro", "enterprise"]);
    assert_eq!(plans[2].agent_runs_per_month, None);
}

async fn an_upgrade_applies_to_the_very_next_request(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    let before = app.authorize(&user, "tool:code_interpreter").await.unwrap();
    assert!(!before.allowed);
    assert_eq!(before.upgrade_to.as_deref(), Some("pro"));
    let changed = app.change_plan(&user, "pro", false, &key()).await.unwrap();
    assert!(changed.applied);
    assert_eq!(changed.subscription.unwrap().plan_id, "pro");
    assert!(
        app.authorize(&user, "tool:code_interpreter")
            .await
            .unwrap()
            .allowed
    );
}

async fn a_downgrade_waits_for_the_period_end_unless_immediate(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    app.change_plan(&user, "pro", false, &key()).await.unwrap();
    let scheduled = app.change_plan(&user, "free", false, &key()).await.unwrap();
    assert!(!scheduled.applied);
    let subscription = scheduled.subscription.unwrap();
    assert_eq!(
        (
            subscription.plan_id.as_str(),
            subscription.pending_plan_id.as_deref()
        ),
        ("pro", Some("free"))
    );
    assert!(
        app.authorize(&user, "tool:web_browse")
            .await
            .unwrap()
            .allowed,
        "pro lasts until the period ends"
    );

    let immediate = app.change_plan(&user, "free", true, &key()).await.unwrap();
    assert!(immediate.applied);
    assert!(
        !app.authorize(&user, "tool:web_browse")
            .await
            .unwrap()
            .allowed
    );

    let history = app
        .usage
        .plan_history(UserId::parse(&user).unwrap())
        .await
        .unwrap();
    let steps: Vec<_> = history
        .iter()
        .map(|change| (change.from_plan.as_str(), change.to_plan.as_str()))
        .collect();
    assert_eq!(steps, [("free", "pro"), ("pro", "free"), ("pro", "free")]);
    assert!(
        history[1].effective_at_ms > history[1].created_at_ms,
        "the scheduled downgrade takes effect later"
    );
    assert_eq!(history[2].effective_at_ms, history[2].created_at_ms);
}

async fn plan_changes_are_idempotent_by_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    let change_key = key();
    let first = app
        .change_plan(&user, "pro", false, &change_key)
        .await
        .unwrap();
    let again = app
        .change_plan(&user, "pro", false, &change_key)
        .await
        .unwrap();
    assert_eq!(first.subscription, again.subscription);
    assert_eq!(first.applied, again.applied);
    assert_eq!(
        app.usage
            .plan_history(UserId::parse(&user).unwrap())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_refused(
        app.change_plan(&user, "enterprise", false, &change_key)
            .await,
        Code::AlreadyExists,
        "idempotency_conflict",
    );
    assert_refused(
        app.change_plan(&user, "platinum", false, &key()).await,
        Code::NotFound,
        "unknown_plan",
    );
}

both_backends!(
    every_user_starts_on_free_and_plans_are_listed,
    an_upgrade_applies_to_the_very_next_request,
    a_downgrade_waits_for_the_period_end_unless_immediate,
    plan_changes_are_idempotent_by_key,
);
