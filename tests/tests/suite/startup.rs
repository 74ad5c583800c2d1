//! A gateway as an operator starts it: its listeners, and what it logs. A start in the normal
//! order (auth-service first, then the services that need it) is quiet, so a WARN in an
//! operator's logs always means something; a real outage still warns.

use std::time::Duration;

use tollgate_integration::*;

/// The status of `GET url`.
async fn status(url: &str) -> u16 {
    reqwest::get(url)
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        .status()
        .as_u16()
}

/// As deployed (`GATEWAY_ADMIN_ADDR`, which the cluster sets), readiness and metrics are on the
/// internal listener only: the public port serves clients and liveness, nothing about the
/// node's insides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_metrics_are_served_on_the_internal_listener_only() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    assert_ne!(
        gateway.admin_addr(),
        gateway.http_addr(),
        "the listening line names no internal listener"
    );
    for (path, public, internal) in [
        ("/metrics", 404, 200),
        ("/readyz", 404, 200),
        ("/healthz", 200, 200),
        ("/v1/publish", 405, 404),
    ] {
        assert_eq!(
            status(&gateway.http_url(path)).await,
            public,
            "public {path}"
        );
        assert_eq!(
            status(&gateway.admin_url(path)).await,
            internal,
            "internal {path}"
        );
    }
    assert!(
        gateway
            .metrics()
            .await
            .contains("tollgate_gateway_connections_active")
    );
    let user = cluster.register().await;
    let (client, _) = WsClient::connected(gateway, &user.access_token).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_start_logs_no_warning_and_an_outage_does() {
    let mut cluster = Cluster::builder().auth_behind_proxy().start().await;
    // A gateway started after auth-service is up and ready, on a link slow enough that its
    // first calls go out before its first service token is back.
    cluster.auth_proxy().delay(Duration::from_millis(150));
    // Its first client comes at once, before the gateway is ready: it is served as at any other
    // time, not as if auth-service and usage-service were down.
    let user = cluster.register().await;
    let gateway = Service::start(Binary::Gateway, cluster.gateway_env()).await;
    let (client, _) = WsClient::connected(&gateway, &user.access_token).await;
    client.close().await;
    gateway.ready().await;
    let watching = eventually(PATIENCE, || async {
        gateway.metric("tollgate_gateway_revocation_watch_up").await == 1.0
    })
    .await;
    assert!(watching, "the gateway never followed revocations");
    for service in [&cluster.auth, &cluster.usage, cluster.gateway(), &gateway] {
        assert_eq!(
            service.warnings(),
            Vec::<String>::new(),
            "{} warned on a normal start",
            service.binary().name()
        );
    }

    cluster.auth.kill_9();
    let warned = eventually(PATIENCE, || async { !gateway.warnings().is_empty() }).await;
    assert!(
        warned,
        "auth-service went away and the gateway did not warn:\n{}",
        gateway.log()
    );
}
