//! The baseline of the connect phase: an unauthenticated WebSocket echo server on the same
//! server stack as ws-gateway, so that "connects per second" can be read as a fraction of what
//! the stack itself allows on this machine.
//!
//! What is the same as the gateway: axum's `serve` over a Tokio `TcpListener` with
//! `TCP_NODELAY` on accepted sockets, connect info, the `/ws` route, and the WebSocket
//! settings of `ws-gateway/src/handshake.rs` (`configure`) at the gateway's defaults: the
//! `tollgate.v1` subprotocol, 64 KiB frame and message limits (`GATEWAY_MAX_FRAME_BYTES`), a
//! 1 KiB read buffer, unbuffered writes and a write-buffer cap of four of the largest outgoing
//! frames. It runs as a process of its own on a multi-threaded runtime with one worker per
//! core, as `#[tokio::main]` gives the gateway. Right after the upgrade it sends a first
//! frame of the shape and size of the gateway's `connected`, then echoes text and binary
//! frames until the client closes.
//!
//! What is missing is exactly what the connect phase measures: the token check, the
//! usage-service lease and profile, the per-address rate limit, the hub, the connection's
//! timers and tasks, its tracing span and metrics.
//!
//! The parent starts it as `ws-loadgen --serve-echo`; it prints its address on the first line
//! of stdout and stops when its stdin closes, so it cannot outlive the parent.

use std::{future::IntoFuture as _, net::SocketAddr};

use anyhow::Context as _;
use axum::{
    Router,
    extract::ws::{Message, WebSocket, WebSocketUpgrade},
    response::Response,
    routing::get,
    serve::ListenerExt as _,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

/// The first frame, shaped and sized like the gateway's `connected` (ids are UUIDs, the
/// connection id a simple UUID).
pub const GREETING: &str = r#"{"type":"connected","connection_id":"0197a3c2e0f47c1b9d5e8f6a7b8c9d0e","session_id":"0197a3c2-e0f4-7c1b-9d5e-8f6a7b8c9d0e","user_id":"0197a3c2-e0f4-7c1b-9d5e-8f6a7b8c9d0f","plan":"free","roles":[],"expires_at":1767225600}"#;

/// ws-gateway's defaults, as `handshake::configure` applies them.
const SUBPROTOCOL: &str = "tollgate.v1";
const MAX_FRAME_BYTES: usize = 65_536;
const PUBLISH_MAX_BYTES: usize = 65_536;
const READ_BUFFER: usize = 1024;

/// Serves until stdin closes. Blocks; builds its own runtime like `#[tokio::main]` does.
pub fn serve_until_stdin_closes() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut stdout = tokio::io::stdout();
        stdout.write_all(format!("{addr}\n").as_bytes()).await?;
        stdout.flush().await?;
        let router = Router::new().route("/ws", get(upgrade));
        let server = axum::serve(
            listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            router.into_make_service_with_connect_info::<SocketAddr>(),
        );
        // Served from a worker, as the services' `main` does (`shared::process::run`).
        let server = tokio::spawn(server.into_future());
        tokio::select! {
            served = server => served.context("the server task failed")?.context("serving"),
            () = stdin_closed() => Ok(()),
        }
    })
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0_u8; 64];
    while let Ok(read) = stdin.read(&mut buffer).await {
        if read == 0 {
            return;
        }
    }
}

async fn upgrade(ws: WebSocketUpgrade) -> Response {
    let largest_outgoing = MAX_FRAME_BYTES.max(PUBLISH_MAX_BYTES) + 1024;
    ws.protocols([SUBPROTOCOL])
        .max_frame_size(MAX_FRAME_BYTES)
        .max_message_size(MAX_FRAME_BYTES)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * largest_outgoing)
        .on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    if socket.send(Message::Text(GREETING.into())).await.is_err() {
        return;
    }
    // A close from the client is answered by tungstenite on the next read, which then ends
    // the stream; the socket is closed when it is dropped.
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Text(_) | Message::Binary(_))
            && socket.send(message).await.is_err()
        {
            return;
        }
    }
}
