//! Draining: shutdown closes every connection with 1001 and returns cleanly; the binary does
//! the same on SIGTERM and exits 0.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_with_1001() {
    let services = Services::spawn(Backend::Embedded).await;
    let mut gateway = Gateway::start(services.gateway_config()).await;
    let (first, second) = (services.register().await, services.register().await);
    let (mut a, _) = gateway.connected(&first.access_token).await;
    let (mut b, _) = gateway.connected(&second.access_token).await;
    let mut anonymous = gateway.connect(Present::Nothing).await.unwrap();

    gateway.trigger_shutdown();
    for client in [&mut a, &mut b, &mut anonymous] {
        assert_eq!(client.closed().await, 1001);
    }
    tokio::time::timeout(PATIENCE, gateway.stopped())
        .await
        .expect("the gateway stops within the grace period")
        .expect("and cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_drains_on_sigterm_and_exits_0() {
    let services = Services::spawn(Backend::Embedded).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ws-gateway"))
        .env_clear()
        .env("GATEWAY_ADDR", "127.0.0.1:0")
        .env("AUTH_SERVICE_URL", services.auth_url())
        .env("USAGE_SERVICE_URL", services.usage_url())
        .env("SERVICE_CLIENT_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The bound address is logged as JSON: {"addr":"127.0.0.1:…","message":"ws-gateway listening"}.
    let addr = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if log["message"] == "ws-gateway listening" {
                return log["addr"]
                    .as_str()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .unwrap();
            }
        }
        panic!("the gateway never said where it listens");
    })
    .await
    .unwrap();
    let ready = eventually(PATIENCE, || async {
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(ready, "the binary never became ready");

    let pair = services.register().await;
    let url = format!("ws://{addr}/ws");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", pair.access_token).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut client = WsClient { ws, protocol: None };
    client.expect("connected").await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(client.closed().await, 1001);
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}
