//! The per-address connection limit behind a load balancer (`TRUSTED_PROXIES`): clients the
//! trusted proxy forwards for are counted one by one, while a client that is not the proxy
//! cannot pick its address by writing `X-Forwarded-For` itself. 127.0.0.1 plays the proxy.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};
use tollgate_shared::client_addr::TrustedProxies;

use crate::{both_backends, helpers::*};

const BUDGET: u64 = 3;

/// One upgrade attempt (no token: it would proceed to in-band auth) from `from`, claiming to
/// forward for `forwarded_for`; the HTTP status it got.
async fn attempt(gateway: SocketAddr, from: [u8; 4], forwarded_for: &str) -> u16 {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(gateway).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {gateway}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         X-Forwarded-For: {forwarded_for}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

async fn forwarded_clients_are_limited_one_by_one_and_forged_headers_are_ignored(backend: Backend) {
    let services = Services::spawn(backend).await;
    let mut config = services.gateway_config();
    config.connect_rate = BUDGET;
    config.trusted_proxies = TrustedProxies::parse("127.0.0.1/32").unwrap();
    let gateway = Gateway::start(config).await;
    let (proxy, stranger) = ([127, 0, 0, 1], [127, 0, 0, 2]);

    for _ in 0..BUDGET {
        assert_eq!(attempt(gateway.addr, proxy, "198.51.100.1").await, 101);
    }
    assert_eq!(attempt(gateway.addr, proxy, "198.51.100.1").await, 429);
    // Another client behind the same proxy has a budget of its own…
    assert_eq!(attempt(gateway.addr, proxy, "198.51.100.2").await, 101);
    // …but prepending a made-up address does not buy the first one a new budget.
    assert_eq!(
        attempt(gateway.addr, proxy, "203.0.113.50, 198.51.100.1").await,
        429
    );

    // A peer that is not a trusted proxy is counted as itself, whatever it claims.
    for index in 0..BUDGET {
        let forged = format!("203.0.113.{index}");
        assert_eq!(attempt(gateway.addr, stranger, &forged).await, 101);
    }
    assert_eq!(attempt(gateway.addr, stranger, "203.0.113.99").await, 429);
}

both_backends!(forwarded_clients_are_limited_one_by_one_and_forged_headers_are_ignored);
