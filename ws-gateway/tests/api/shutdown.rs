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
async fn the_binary_drains_on_sigterm_exits_0_and_never_logs_a_token() {
    let services = Services::spawn(Backend::Embedded).await;
    let secret_file = std::env::temp_dir().join(format!("gateway-secret-{}", uuid::Uuid::new_v4()));
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ws-gateway"))
        .env_clear()
        .env("GATEWAY_ADDR", "127.0.0.1:0")
        .env("AUTH_SERVICE_URL", services.auth_url())
        .env("USAGE_SERVICE_URL", services.usage_url())
        // The secret comes from a file, as Docker and Kubernetes secrets are mounted.
        .env("SERVICE_CLIENT_SECRET_FILE", &secret_file)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let streams: [(Box<dyn std::io::Read + Send>, bool); 2] = [
        (Box::new(child.stdout.take().unwrap()), true),
        (Box::new(child.stderr.take().unwrap()), false),
    ];
    let mut readers = Vec::new();
    for (stream, announces) in streams {
        let (log, address_tx) = (std::sync::Arc::clone(&log), address_tx.clone());
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                // The bound address is logged as JSON: {"addr":"127.0.0.1:…","message":"ws-gateway listening"}.
                if announces
                    && let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == "ws-gateway listening"
                {
                    let _ = address_tx.send(json["addr"].as_str().unwrap_or_default().to_owned());
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        }));
    }
    let addr: std::net::SocketAddr =
        tokio::task::spawn_blocking(move || address_rx.recv_timeout(PATIENCE))
            .await
            .unwrap()
            .expect("the gateway never said where it listens")
            .parse()
            .unwrap();
    let ready = eventually(PATIENCE, || async {
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    assert!(ready, "the binary never became ready");

    let pair = services.register().await;
    let mut client = WsClient::attempt(addr, None, Present::Header(&pair.access_token))
        .await
        .expect("the binary accepts the connection");
    client.expect("connected").await;

    // Tokens in every position, good and bad, while the gateway logs at debug level.
    let other = services.register().await;
    let forged = format!("{}x", other.access_token);
    for (name, value) in [
        (
            "sec-websocket-protocol",
            format!("tollgate.v1, bearer.{}", other.access_token),
        ),
        (
            "sec-websocket-protocol",
            format!("tollgate.v1, bearer.{forged}"),
        ),
        ("authorization", format!("Bearer {forged}")),
    ] {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}/ws"),
            )
            .unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
        drop(tokio_tungstenite::connect_async(request).await);
    }

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
    let _ = std::fs::remove_file(&secret_file);
    for reader in readers {
        reader.join().unwrap();
    }
    let log = log.lock().unwrap();
    assert!(log.contains("ws-gateway listening"), "the log was captured");
    for secret in [&pair.access_token, &other.access_token, &forged, SECRET] {
        // A JWT's signature alone is enough to recognise it.
        let tail = &secret[secret.len() - 24..];
        assert!(!log.contains(tail), "a secret reached the log");
    }
}
