//! A connection flood from one address: 10 000 upgrade attempts as fast as the machine allows.
//! They are refused with 429 beyond the per-address budget, answered quickly and without error,
//! while a client at another address connects and talks as if nothing happened.

use std::{net::SocketAddr, time::Duration};

use futures::{StreamExt, stream};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

use crate::helpers::*;

const ATTEMPTS: usize = 10_000;
const IN_FLIGHT: usize = 32;
const BUDGET: u64 = 50;

/// One upgrade attempt on a fresh TCP connection from `from`; the HTTP status it got.
async fn attempt(gateway: SocketAddr, from: [u8; 4]) -> Result<u16, String> {
    let socket = TcpSocket::new_v4().map_err(|err| err.to_string())?;
    socket
        .bind(SocketAddr::from((from, 0)))
        .map_err(|err| err.to_string())?;
    let mut stream = socket
        .connect(gateway)
        .await
        .map_err(|err| err.to_string())?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {gateway}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| err.to_string())?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|err| err.to_string())?;
    let status = std::str::from_utf8(&head[9..12]).map_err(|err| err.to_string())?;
    status
        .parse()
        .map_err(|_| format!("not a status: {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_limited_without_starving_other_clients() {
    let services = Services::spawn(Backend::Embedded).await;
    let mut config = services.gateway_config();
    config.connect_rate = BUDGET;
    let gateway = Gateway::start(config).await;
    let pair = services.register().await;
    let target = gateway.addr;

    let flood = tokio::spawn(async move {
        stream::iter(0..ATTEMPTS)
            .map(|_| attempt(target, [127, 0, 0, 1]))
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
    });

    // Meanwhile, someone else, from 127.0.0.2, connects and is served.
    let other_address = std::net::IpAddr::from([127, 0, 0, 2]);
    let mut other = WsClient::attempt(
        target,
        Some(other_address),
        Present::Header(&pair.access_token),
    )
    .await
    .expect("the other address is admitted");
    assert_eq!(other.expect("connected").await["type"], "connected");
    other
        .send_json(json!({"type": "ping", "id": "during"}))
        .await;
    assert_eq!(other.expect("pong").await["id"], "during");

    let answers = tokio::time::timeout(Duration::from_secs(300), flood)
        .await
        .expect("the flood is answered in bounded time")
        .unwrap();
    let upgraded = answers.iter().filter(|a| matches!(a, Ok(101))).count();
    let limited = answers.iter().filter(|a| matches!(a, Ok(429))).count();
    let other_answers: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok(101 | 429)))
        .take(5)
        .collect();
    assert!(
        other_answers.is_empty(),
        "unexpected answers: {other_answers:?}"
    );
    // The budget is per minute; a slow run may see a little of it refill.
    assert!(
        (BUDGET as usize..=2 * BUDGET as usize).contains(&upgraded),
        "{upgraded} upgrades for a budget of {BUDGET}"
    );
    assert_eq!(upgraded + limited, ATTEMPTS);

    // The gateway is still ready, and the other client still served.
    other
        .send_json(json!({"type": "ping", "id": "after"}))
        .await;
    assert_eq!(other.expect("pong").await["id"], "after");
    assert_eq!(
        reqwest::get(gateway.url("/readyz")).await.unwrap().status(),
        200
    );
}
