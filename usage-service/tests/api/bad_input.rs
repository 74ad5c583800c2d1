use tollgate_proto::usage::v1::{AuthorizeRequest, ConsumeRequest, GetUsageRequest};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{both_backends, helpers::*};

async fn malformed_requests_get_invalid_argument(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    let huge_key = "k".repeat(129);
    for (user_id, meter, amount, key_, what) in [
        ("not-a-uuid", "messages", 1, "k1", "malformed user"),
        ("", "messages", 1, "k2", "empty user"),
        (user.as_str(), "Bytes!", 1, "k3", "malformed meter"),
        (user.as_str(), "messages", 0, "k4", "zero amount"),
        (
            user.as_str(),
            "messages",
            u64::MAX,
            "k5",
            "overflowing amount",
        ),
        (
            user.as_str(),
            "messages",
            1_000_001,
            "k6",
            "amount over the maximum",
        ),
        (user.as_str(), "messages", 1, "", "empty key"),
        (
            user.as_str(),
            "messages",
            1,
            huge_key.as_str(),
            "oversized key",
        ),
        (
            user.as_str(),
            "messages",
            1,
            "k'; DROP TABLE ledger;--",
            "hostile key",
        ),
    ] {
        let result = app.consume(user_id, meter, amount, key_).await;
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(reason(&status), "invalid_request", "{what}");
    }
    for action in ["tool:Teleport", "", "admin:everything", "tool:search\u{0}"] {
        assert_refused(
            app.authorize(&user, action).await,
            Code::InvalidArgument,
            "invalid_request",
        );
    }
    // Well-formed names the catalogue does not declare are refused by name.
    assert_refused(
        app.authorize(&user, "tool:teleport").await,
        Code::InvalidArgument,
        "unknown_tool",
    );
    assert_refused(
        app.consume(&user, "bytes", 1, "k7").await,
        Code::InvalidArgument,
        "unknown_meter",
    );
    // Nothing was counted by any of it.
    assert_eq!(used(&app.usage_of(&user).await, "messages"), 0);
}

async fn only_service_tokens_with_the_right_scope_are_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = || AuthorizeRequest {
        user_id: new_user(),
        action: "tool:search".into(),
    };
    let missing = app.client().authorize(request()).await;
    assert_refused(missing, Code::Unauthenticated, "token_missing");
    let garbage = app
        .client()
        .authorize(with_bearer(request(), "not.a.token"))
        .await;
    assert_refused(garbage, Code::Unauthenticated, "token_malformed");
    // A token for another audience (an end user's, or one meant for auth-service) is refused.
    let elsewhere = app.auth.token("gateway", "auth-service").await;
    assert_refused(
        app.client()
            .authorize(with_bearer(request(), &elsewhere))
            .await,
        Code::Unauthenticated,
        "wrong_audience",
    );
    // The right audience without the scope.
    let outsider = app.auth.token("outsider", "usage-service").await;
    assert_refused(
        app.client()
            .authorize(with_bearer(request(), &outsider))
            .await,
        Code::PermissionDenied,
        "insufficient_scope",
    );
    // The gateway may check but not administer.
    let change = tollgate_proto::usage::v1::ChangePlanRequest {
        user_id: new_user(),
        plan_id: "pro".into(),
        immediate: false,
        idempotency_key: key(),
        reason: String::new(),
    };
    assert_refused(
        app.client().change_plan(app.check(change)).await,
        Code::PermissionDenied,
        "insufficient_scope",
    );
    let usage = GetUsageRequest {
        user_id: new_user(),
        at: 0,
    };
    app.client().get_usage(app.check(usage)).await.unwrap();
    let consume = ConsumeRequest {
        user_id: new_user(),
        meter: "messages".into(),
        amount: 1,
        idempotency_key: key(),
    };
    assert!(
        app.client()
            .consume(app.check(consume))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
}

async fn health_readiness_and_metrics_are_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = new_user();
    app.consume(&user, "messages", 1, &key()).await.unwrap();
    let ready = eventually(std::time::Duration::from_secs(10), || async {
        reqwest_get(&format!("{}/readyz", app.http_base)).await.0 == 200
    })
    .await;
    assert!(ready, "never ready");
    assert_eq!(
        reqwest_get(&format!("{}/healthz", app.http_base)).await.0,
        200
    );
    let (_, metrics) = reqwest_get(&format!("{}/metrics", app.http_base)).await;
    assert!(
        metrics.contains("tollgate_usage_decisions_total{kind=\"messages\",outcome=\"allowed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_usage_consume_duration_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_rpc_server_duration_seconds_bucket"),
        "{metrics}"
    );
}

/// Reflection answers in both versions (grpcio-reflection, evans and older grpcurl speak only
/// v1alpha) and lists this process's services, not every service Tollgate has.
async fn reflection_lists_only_what_this_process_serves(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let reflected =
        tollgate_shared::testing::reflect(app.grpc_addr, "tollgate.usage.v1.UsageService").await;
    let expected = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "tollgate.usage.v1.UsageService",
    ];
    assert_eq!(reflected.v1, expected);
    assert_eq!(reflected.v1alpha, expected);
    assert!(reflected.v1alpha_files_for_symbol >= 1, "{reflected:?}");
}

/// Request paths are chosen by the caller before authentication: a flood of random ones must
/// not grow `/metrics` (nor name spans) without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_request_paths_add_no_metric_series() {
    let app = TestApp::spawn(Backend::Embedded).await;
    app.consume(&new_user(), "messages", 1, &key())
        .await
        .unwrap();
    let series = |metrics: &str| {
        metrics
            .lines()
            .filter(|line| line.starts_with("tollgate_rpc_server_duration_seconds_count{"))
            // The labels, not the count that follows them.
            .filter_map(|line| line.split_once('}').map(|(labels, _)| labels.to_owned()))
            .collect::<Vec<_>>()
    };
    let before = series(&reqwest_get(&format!("{}/metrics", app.http_base)).await.1);

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..2_000 {
        let path = format!("/random{i}.{}/Method{i}", uuid::Uuid::new_v4().simple());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(()),
                http::uri::PathAndQuery::try_from(path).unwrap(),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }

    let after = series(&reqwest_get(&format!("{}/metrics", app.http_base)).await.1);
    let added: Vec<_> = after.iter().filter(|line| !before.contains(line)).collect();
    assert!(
        added.len() <= 1
            && added.iter().all(|line| {
                line.contains("method=\"unknown\"") && line.contains("code=\"UNIMPLEMENTED\"")
            }),
        "2 000 random paths added {} series: {added:?}",
        added.len()
    );
    assert_eq!(after.len(), before.len() + added.len());
}

/// A minimal HTTP GET over a real TCP connection: status and body.
async fn reqwest_get(url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let (host, path) = address.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

both_backends!(
    malformed_requests_get_invalid_argument,
    only_service_tokens_with_the_right_scope_are_accepted,
    health_readiness_and_metrics_are_served,
    reflection_lists_only_what_this_process_serves,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_keys_that_verify_callers_are_loaded() {
    let database = TestDatabase::create(Backend::Embedded).await;
    // auth-service is unreachable: usage-service runs but must not claim to be ready.
    let config = usage_service::Config::for_tests(&database.url, "http://127.0.0.1:1");
    let shutdown = tollgate_shared::shutdown::Shutdown::new();
    let app = usage_service::Application::build(config, shutdown.clone())
        .await
        .unwrap();
    let base = format!("http://{}", app.http_addr());
    let server = tokio::spawn(app.run_until_stopped());
    let alive = eventually(std::time::Duration::from_secs(10), || async {
        reqwest_get(&format!("{base}/healthz")).await.0 == 200
    })
    .await;
    assert!(alive);
    assert_eq!(reqwest_get(&format!("{base}/readyz")).await.0, 503);
    shutdown.trigger();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn becomes_ready_by_itself_once_auth_service_answers() {
    let auth = Auth::spawn(Backend::Embedded).await;
    let (proxy, auth_url) = tollgate_shared::fault_proxy::FaultProxy::in_front_of(&auth.url)
        .await
        .unwrap();
    proxy.cut();
    let database = TestDatabase::create(Backend::Embedded).await;
    let config = usage_service::Config::for_tests(&database.url, &auth_url);
    let shutdown = tollgate_shared::shutdown::Shutdown::new();
    let app = usage_service::Application::build(config, shutdown.clone())
        .await
        .unwrap();
    let base = format!("http://{}", app.http_addr());
    let grpc = format!("http://{}", app.grpc_addr());
    let server = tokio::spawn(app.run_until_stopped());
    let alive = eventually(std::time::Duration::from_secs(10), || async {
        reqwest_get(&format!("{base}/healthz")).await.0 == 200
    })
    .await;
    assert!(alive);
    assert_eq!(reqwest_get(&format!("{base}/readyz")).await.0, 503);
    // gRPC health (what a Kubernetes gRPC readiness probe asks) agrees with /readyz.
    assert_eq!(grpc_health(&grpc).await, Some(ServingStatus::NotServing));
    proxy.restore();
    let ready = eventually(std::time::Duration::from_secs(20), || async {
        reqwest_get(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    assert!(
        ready,
        "usage-service did not become ready after auth-service came back"
    );
    let serving = eventually(std::time::Duration::from_secs(10), || async {
        grpc_health(&grpc).await == Some(ServingStatus::Serving)
    })
    .await;
    assert!(serving, "gRPC health did not follow readiness");
    shutdown.trigger();
    server.await.unwrap().unwrap();
}

async fn grpc_health(url: &str) -> Option<ServingStatus> {
    let channel = tollgate_shared::grpc::channel(url, std::time::Duration::from_secs(5)).ok()?;
    let request = HealthCheckRequest {
        service: "tollgate.usage.v1.UsageService".into(),
    };
    let answer = HealthClient::new(channel).check(request).await.ok()?;
    ServingStatus::try_from(answer.into_inner().status).ok()
}
