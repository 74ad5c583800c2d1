//! Seed batch 3, the boundaries between the services: which credentials each internal call
//! needs, how the gateway obtains its own, how a user's identity travels from the token to the
//! usage ledger, how runs and published events share one connection, and how the services
//! wait for one another at startup.

use serde_json::json;
use tollgate_integration::{Binary, *};
use tollgate_proto::usage::v1::ChangePlanRequest;
use tollgate_shared::testing::with_bearer;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_calls_need_a_service_token_with_the_right_audience_and_scope() {
    let cluster = Cluster::start().await;
    let user = cluster.register().await;
    let validate = |bearer: Option<String>| {
        let mut client = cluster.auth_client();
        let token = user.access_token.clone();
        async move {
            let request = tollgate_proto::auth::v1::ValidateTokenRequest { token };
            let request = match &bearer {
                Some(bearer) => with_bearer(request, bearer),
                None => tonic::Request::new(request),
            };
            client.validate_token(request).await.map(|_| ())
        }
    };
    // ValidateToken: only for services, only with `auth.validate`.
    assert_eq!(
        validate(None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let as_user = validate(Some(user.access_token.clone())).await.unwrap_err();
    assert_eq!(as_user.code(), Code::Unauthenticated);
    let publisher = cluster
        .service_token("backend", "auth-service", &["publish"])
        .await;
    let refused = validate(Some(publisher)).await.unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::PermissionDenied, "insufficient_scope")
    );
    validate(Some(
        cluster
            .service_token("tester", "auth-service", &["auth.validate"])
            .await,
    ))
    .await
    .unwrap();
    // Clients get only the scopes they were given, and only with their secret.
    let greedy = cluster
        .try_service_token("backend", "usage-service", &["usage.admin"])
        .await;
    assert_eq!(reason(&greedy.unwrap_err()), "invalid_scope");
    let form = "grant_type=client_credentials&client_id=backend&client_secret=wrong-secret-0123456789&audience=ws-gateway&scope=publish";
    let response = reqwest::Client::new()
        .post(cluster.auth.http_url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");

    // usage-service: a user's token, or a token for another audience, is no credential; a
    // reading scope does not change plans.
    for token in [
        user.access_token.clone(),
        cluster
            .service_token("tester", "ws-gateway", &["usage.check"])
            .await,
    ] {
        let request = tollgate_proto::usage::v1::GetSubscriptionRequest {
            user_id: user.user_id.clone(),
        };
        let refused = cluster
            .usage_client()
            .get_subscription(with_bearer(request, &token))
            .await;
        assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    }
    let reader = cluster
        .service_token("tester", "usage-service", &["usage.check"])
        .await;
    let change = ChangePlanRequest {
        user_id: user.user_id.clone(),
        plan_id: "pro".into(),
        immediate: true,
        idempotency_key: key(),
        reason: "not allowed".into(),
    };
    let refused = cluster
        .usage_client()
        .change_plan(with_bearer(change, &reader))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(cluster.subscription(&user.user_id).await.plan_id, "free");

    // The gateway's publish API: the `publish` scope, for the gateway's audience.
    let gateway = cluster.gateway();
    let event = json!({"user_id": user.user_id, "data": {}});
    let wrong_audience = cluster
        .service_token("backend", "usage-service", &["publish"])
        .await;
    let wrong_scope = cluster
        .service_token("tester", "ws-gateway", &["auth.validate"])
        .await;
    for (token, status) in [
        (None, 401),
        (Some(user.access_token.as_str()), 401),
        (Some(wrong_audience.as_str()), 401),
        (Some(wrong_scope.as_str()), 403),
    ] {
        assert_eq!(publish(gateway, token, &event).await.0, status, "{token:?}");
    }
    let publisher = cluster.publish_token().await;
    let (status, _) = publish(gateway, Some(&publisher), &json!({"user_id": "nobody"})).await;
    assert_eq!(status, 400);
    // And a service token is not a user's: it opens no connection.
    let refused = WsClient::connect(gateway, Present::Header(&publisher))
        .await
        .unwrap_err();
    assert_eq!(refused.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_wrong_credentials_never_gets_ready_and_starts_once_fixed() {
    let cluster = Cluster::start().await;
    let mut env = cluster.gateway_env();
    env.retain(|(name, _)| name != "GATEWAY_ADDR" && name != "SERVICE_CLIENT_SECRET");
    env.push(("GATEWAY_ADDR".into(), "127.0.0.1:0".into()));
    env.push((
        "SERVICE_CLIENT_SECRET".into(),
        "not-the-secret-0123456789abcdef".into(),
    ));
    let mut misconfigured = Service::start(Binary::Gateway, env).await;
    let refused = eventually(PATIENCE, || async {
        misconfigured
            .log()
            .contains("fetching a service token failed")
    })
    .await;
    assert!(refused, "{}", misconfigured.log());
    assert!(
        !misconfigured.is_ready().await,
        "ready without service tokens"
    );
    assert!(
        !misconfigured.log().contains("not-the-secret"),
        "the secret was logged"
    );

    misconfigured.set_env("SERVICE_CLIENT_SECRET", cluster.client_secret());
    misconfigured.restart().await;
    misconfigured.ready().await;
    let user = cluster.register().await;
    WsClient::connected(&misconfigured, &user.access_token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_authorized_and_billed_to_the_token_s_user_while_events_stream_alongside() {
    let cluster = Cluster::builder()
        .gateway_env("GATEWAY_AGENT_THINK_DELAY", "200ms")
        .start()
        .await;
    let (user, bystander) = (cluster.register().await, cluster.register().await);
    let acknowledgements = Acknowledgements::default();
    acknowledgements.track(&user.user_id);
    acknowledgements.track(&bystander.user_id);
    let gateway = cluster.gateway();
    let (mut client, _) = WsClient::connected(gateway, &user.access_token).await;
    let (mut other, _) = WsClient::connected(gateway, &bystander.access_token).await;

    client
        .run_agent("run-1", "What is 6 * 7?", &["calculator", "search"])
        .await;
    // A backend publishes while the run is under way: the event interleaves, the run's own
    // frames keep their order.
    let token = cluster.publish_token().await;
    let event = json!({"user_id": user.user_id, "data": {"note": "mid-run"}});
    assert_eq!(publish(gateway, Some(&token), &event).await.0, 202);
    let mut run = Vec::new();
    let mut events = Vec::new();
    while run
        .last()
        .is_none_or(|frame: &serde_json::Value| frame["type"] != "agent_completed")
    {
        match client.recv().await {
            Received::Json(frame) if frame["type"] == "event" => events.push(frame),
            Received::Json(frame) => {
                acknowledgements.observe(&user.user_id, &frame);
                run.push(frame);
            }
            other => panic!("the connection ended mid-run: {other:?}"),
        }
    }
    assert_eq!(
        kinds(&run),
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "tool_executing",
            "tool_completed",
            "agent_delta",
            "agent_completed",
        ]
    );
    let run_id = &run[0]["run_id"];
    assert!(
        run.iter()
            .all(|frame| &frame["run_id"] == run_id && frame["id"] == "run-1")
    );
    assert_eq!(run[3]["output"]["value"].as_f64(), Some(42.0), "{}", run[3]);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["note"], "mid-run");

    // usage-service billed the user whose token opened the connection, and nobody else.
    assert_ledger_matches(&cluster, &acknowledgements).await;
    let usage = cluster.usage_of(&user.user_id).await;
    assert_eq!(
        (usage["messages"], usage["agent_runs"], usage["tool_calls"]),
        (0, 1, 2),
        "one run and its two tools billed (messages are rate-only)"
    );
    assert_eq!(other.ping("bystander").await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_before_auth_service_wait_for_it_and_get_ready_by_themselves() {
    let mut cluster = Cluster::start().await;
    cluster.auth.kill_9();
    // usage-service and the gateway start while auth-service is down: they listen, but are
    // not ready without its keys and tokens.
    cluster.usage.restart().await;
    cluster.gateways[0].restart().await;
    assert!(!cluster.usage.is_ready().await);
    assert!(!cluster.gateway().is_ready().await);

    cluster.auth.restart().await;
    cluster.usage.ready().await;
    cluster.gateway().ready().await;
    let user = cluster.register().await;
    let (mut client, _) = WsClient::connected(cluster.gateway(), &user.access_token).await;
    assert_eq!(client.ping("ready").await["type"], "pong");
}
