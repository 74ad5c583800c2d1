//! The test's WebSocket client: what it presents, what it reads.

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use crate::helpers::PATIENCE;

/// Where a test puts the token.
#[derive(Clone, Copy, Debug)]
pub enum Present<'a> {
    Header(&'a str),
    Subprotocol(&'a str),
    InBand(&'a str),
    Nothing,
    Headers(&'a [(&'static str, String)]),
}

/// An upgrade refused with an HTTP answer.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Refused {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// What the client read.
#[derive(Debug, PartialEq)]
pub enum Received {
    Json(Value),
    Close(Option<u16>),
    /// The stream ended without a close frame.
    End,
}

/// A WebSocket client.
pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
}

impl WsClient {
    pub async fn send_json(&mut self, value: Value) {
        self.send(Message::text(value.to_string())).await;
    }

    pub async fn send(&mut self, message: Message) {
        self.ws.send(message).await.expect("the frame is sent");
    }

    /// The next data or close frame (pings are answered by the client library).
    pub async fn recv(&mut self) -> Received {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame within the test's patience");
            match next {
                None | Some(Err(_)) => return Received::End,
                Some(Ok(Message::Text(text))) => {
                    return Received::Json(serde_json::from_str(text.as_str()).unwrap());
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Close(frame.map(|frame| u16::from(frame.code)));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next message, which must be of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        match self.recv().await {
            Received::Json(value) if value["type"] == kind => value,
            other => panic!("expected `{kind}`, got {other:?}"),
        }
    }

    /// Reads until the close frame (skipping messages) and returns its code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match self.recv().await {
                Received::Json(_) => {}
                Received::Close(code) => return code.expect("a close code"),
                Received::End => panic!("the stream ended without a close frame"),
            }
        }
    }
}
