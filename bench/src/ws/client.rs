//! The WebSocket client side, as a real client does it: a TCP connection per WebSocket with
//! `TCP_NODELAY`, the token in the `Authorization` header of the upgrade request, the
//! `connected` frame read before anything else, and a proper close handshake at the end.
//!
//! The client waits for the server's close and the end of the stream before it drops the
//! socket. Besides being correct, this leaves the `TIME_WAIT` state on the server's side of
//! each connection, so tens of thousands of connects in a row do not run the client out of
//! ephemeral ports.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest as _, protocol::WebSocketConfig},
};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single client step (upgrade, a frame, a close) may take before it counts as a
/// failure; far above anything healthy, so only a stuck connection hits it.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Small client buffers: a load generator holding a thousand sockets should not spend its
/// share of the CPU on zeroing 128 KiB read buffers (tungstenite's default) per connection.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens a WebSocket to `url` presenting `token` as a bearer token.
pub async fn open(url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config()), true),
    )
    .await
    .context("upgrade timed out")??;
    Ok(ws)
}

/// The next text frame; pings and pongs are skipped (tungstenite answers pings itself).
pub async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let frame = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .context("no frame in time")?;
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(close))) => anyhow::bail!("closed by the server: {close:?}"),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => anyhow::bail!("the stream ended"),
        }
    }
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(borrow, rename = "type")]
    kind: &'a str,
}

/// Opens a WebSocket and reads its first frame, which must be `connected`.
pub async fn open_connected(url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut ws = open(url, token).await?;
    let first = next_text(&mut ws).await?;
    let kind = serde_json::from_str::<Typed<'_>>(&first)
        .map(|typed| typed.kind == "connected")
        .unwrap_or(false);
    anyhow::ensure!(kind, "the first frame was not `connected`: {first}");
    Ok(ws)
}

/// Sends a close frame and waits for the server's close and the end of the stream.
pub async fn close(mut ws: Ws) -> anyhow::Result<()> {
    ws.close(None).await?;
    tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(frame) = ws.next().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await
    .context("the server did not finish the close handshake")
}

/// One whole connect: upgrade, `connected`, close.
pub async fn connect_once(url: &str, token: &str) -> anyhow::Result<()> {
    close(open_connected(url, token).await?).await
}
