//! The test's WebSocket client, a real tokio-tungstenite client on a real TCP connection, and
//! the gateway's HTTP side (publish). Everything a client can observe is surfaced as is: the
//! HTTP answer of a refused upgrade, each JSON frame, the close code, or a stream that simply
//! ended (a killed gateway sends no close frame).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::{PATIENCE, process::Service};

/// Where the client puts its token.
#[derive(Clone, Copy, Debug)]
pub enum Present<'a> {
    /// `Authorization: Bearer <token>` on the upgrade request.
    Header(&'a str),
    /// Subprotocols `tollgate.v1, bearer.<token>`.
    Subprotocol(&'a str),
    /// A first message `{"type":"auth","token":…}`.
    InBand(&'a str),
    /// No token at all.
    Nothing,
    /// Arbitrary upgrade headers.
    Headers(&'a [(&'static str, String)]),
}

/// An upgrade answered over HTTP instead of switching protocols.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

impl Refused {
    /// `error.code` of the JSON body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// Why a connection attempt did not produce a WebSocket.
#[derive(Debug)]
pub enum NotConnected {
    Refused(Refused),
    /// No HTTP answer at all (nothing listening, reset, timeout).
    Transport(String),
}

/// One thing the client read.
#[derive(Debug, PartialEq)]
pub enum Received {
    Json(Value),
    Close(Option<u16>),
    /// The stream ended (or failed) without a close frame.
    End,
}

#[derive(Debug)]
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
}

impl WsClient {
    /// Opens `/ws` on `gateway`; panics if nothing answers over HTTP.
    pub async fn connect(gateway: &Service, present: Present<'_>) -> Result<Self, Refused> {
        match Self::attempt(gateway.http_addr(), None, present).await {
            Ok(client) => Ok(client),
            Err(NotConnected::Refused(refused)) => Err(refused),
            Err(NotConnected::Transport(err)) => panic!("the WebSocket handshake failed: {err}"),
        }
    }

    /// Connects with the token in the header and reads `connected`.
    pub async fn connected(gateway: &Service, token: &str) -> (Self, Value) {
        let mut client = Self::connect(gateway, Present::Header(token))
            .await
            .unwrap_or_else(|refused| panic!("the connection was refused: {refused:?}"));
        let connected = client.expect("connected").await;
        (client, connected)
    }

    /// One attempt, from `source` when given (any 127.x.y.z address is loopback on Linux).
    pub async fn attempt(
        addr: SocketAddr,
        source: Option<IpAddr>,
        present: Present<'_>,
    ) -> Result<Self, NotConnected> {
        Self::attempt_path(addr, "/ws", source, present).await
    }

    /// [`WsClient::attempt`] on another path (a query string, an unknown route).
    pub async fn attempt_path(
        addr: SocketAddr,
        path: &str,
        source: Option<IpAddr>,
        present: Present<'_>,
    ) -> Result<Self, NotConnected> {
        let transport = |err: &dyn std::fmt::Display| NotConnected::Transport(err.to_string());
        let mut request = format!("ws://{addr}{path}")
            .into_client_request()
            .map_err(|err| transport(&err))?;
        let headers = request.headers_mut();
        let header = |value: String| HeaderValue::from_str(&value).expect("a header value");
        let mut in_band = None;
        match present {
            Present::Header(token) => {
                headers.insert("authorization", header(format!("Bearer {token}")));
            }
            Present::Subprotocol(token) => {
                let protocols = format!("tollgate.v1, bearer.{token}");
                headers.insert("sec-websocket-protocol", header(protocols));
            }
            Present::InBand(token) => in_band = Some(token),
            Present::Nothing => {}
            Present::Headers(pairs) => {
                for (name, value) in pairs {
                    headers.append(*name, header(value.clone()));
                }
            }
        }
        let socket = TcpSocket::new_v4().map_err(|err| transport(&err))?;
        if let Some(source) = source {
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|err| transport(&err))?;
        }
        let handshake = async {
            let stream = socket.connect(addr).await.map_err(|err| transport(&err))?;
            let _ = stream.set_nodelay(true);
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
                .await
                .map_err(|err| match err {
                    tungstenite::Error::Http(response) => NotConnected::Refused(Refused {
                        status: response.status().as_u16(),
                        retry_after: response
                            .headers()
                            .get("retry-after")
                            .and_then(|value| value.to_str().ok())
                            .map(str::to_owned),
                        body: response
                            .body()
                            .as_deref()
                            .and_then(|body| serde_json::from_slice(body).ok())
                            .unwrap_or(Value::Null),
                    }),
                    other => transport(&other),
                })
        };
        let (ws, response) = tokio::time::timeout(PATIENCE, handshake)
            .await
            .map_err(|_| NotConnected::Transport("the handshake timed out".into()))??;
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut client = Self { ws, protocol };
        if let Some(token) = in_band {
            client
                .send_json(json!({"type": "auth", "token": token}))
                .await;
        }
        Ok(client)
    }

    /// Reconnects like a well-behaved client after its gateway went away: waits a random
    /// 0–`jitter` first, then retries (with the same jitter, and at least what `Retry-After`
    /// asks) until `connected` arrives or `deadline` passes. Answers `connected` and how many
    /// attempts were refused over HTTP on the way.
    pub async fn reconnect(
        addr: SocketAddr,
        token: &str,
        jitter: Duration,
        deadline: Duration,
    ) -> Result<(Self, Value, u32), String> {
        let give_up = tokio::time::Instant::now() + deadline;
        let mut refusals = 0;
        loop {
            let pause = rand::thread_rng().gen_range(Duration::ZERO..=jitter);
            tokio::time::sleep(pause).await;
            let last = match Self::attempt(addr, None, Present::Header(token)).await {
                Ok(mut client) => match client.recv().await {
                    Received::Json(frame) if frame["type"] == "connected" => {
                        return Ok((client, frame, refusals));
                    }
                    other => format!("{other:?}"),
                },
                Err(NotConnected::Refused(refused)) => {
                    refusals += 1;
                    let wait = refused
                        .retry_after
                        .as_deref()
                        .and_then(|secs| secs.parse().ok())
                        .map_or(Duration::ZERO, Duration::from_secs);
                    // Honour Retry-After, capped so the test's deadline stays meaningful.
                    tokio::time::sleep(wait.min(Duration::from_secs(2))).await;
                    format!("{} {}", refused.status, refused.body)
                }
                Err(NotConnected::Transport(err)) => err,
            };
            if tokio::time::Instant::now() >= give_up {
                return Err(format!("never reconnected; last attempt: {last}"));
            }
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send(Message::text(value.to_string())).await;
    }

    pub async fn send(&mut self, message: Message) {
        self.ws.send(message).await.expect("the frame is sent");
    }

    /// Sends without panicking (the server may have closed already).
    pub async fn try_send_json(&mut self, value: Value) -> bool {
        self.ws.send(Message::text(value.to_string())).await.is_ok()
    }

    /// The next data or close frame, within the test's patience (pings are answered by the
    /// client library).
    pub async fn recv(&mut self) -> Received {
        self.recv_within(PATIENCE)
            .await
            .unwrap_or_else(|| panic!("nothing arrived within {PATIENCE:?}"))
    }

    /// The next data or close frame, or None if nothing arrives within `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                None | Some(Err(_)) => Received::End,
                Some(Ok(Message::Text(text))) => Received::Json(
                    serde_json::from_str(text.as_str()).expect("the server sends JSON"),
                ),
                Some(Ok(Message::Close(frame))) => {
                    Received::Close(frame.map(|frame| u16::from(frame.code)))
                }
                Some(Ok(_)) => continue,
            });
        }
    }

    /// The next message, which must be of type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        match self.recv().await {
            Received::Json(value) if value["type"] == kind => value,
            other => panic!("expected `{kind}`, got {other:?}"),
        }
    }

    /// Reads until the close frame (skipping messages) and answers its code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            match self.recv().await {
                Received::Json(_) => {}
                Received::Close(code) => return code.expect("a close code"),
                Received::End => panic!("the stream ended without a close frame"),
            }
        }
    }

    /// Reads until the connection ends, however it ends: the close code, or None without one.
    pub async fn ended(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                Received::Json(_) => {}
                Received::Close(code) => return code,
                Received::End => return None,
            }
        }
    }

    /// Sends a ping with `id` and answers the reply to it (`pong`, `rate_limited` or `error`).
    pub async fn ping(&mut self, id: &str) -> Value {
        self.send_json(json!({"type": "ping", "id": id})).await;
        self.reply_to(id).await
    }

    /// Sends the cheapest message that usage-service meters, `cancel_run` of a run that does
    /// not exist, and answers the reply to it: `error {code: unknown_run}` once it was
    /// counted, `rate_limited`, or `error {code: dependency_unavailable}`. (A `ping` is
    /// keepalive, answered by the gateway itself and never metered.)
    pub async fn metered(&mut self, id: &str) -> Value {
        self.send_json(json!({"type": "cancel_run", "id": id, "run_id": "no-such-run"}))
            .await;
        self.reply_to(id).await
    }

    /// Sends a ping and answers the very next frame: a `pong` proves nothing else (an event
    /// meant for someone else, say) was queued before it.
    pub async fn ping_first(&mut self, id: &str) -> Value {
        self.send_json(json!({"type": "ping", "id": id})).await;
        match self.recv().await {
            Received::Json(frame) => frame,
            other => panic!("the connection ended instead of answering `{id}`: {other:?}"),
        }
    }

    /// Reads until an `event` whose `data[key]` is `value`, skipping other events (late ones
    /// from earlier attempts); panics on anything else.
    pub async fn event_where(&mut self, key: &str, value: &Value) -> Value {
        loop {
            match self.recv().await {
                Received::Json(frame) if frame["type"] == "event" => {
                    if &frame["data"][key] == value {
                        return frame;
                    }
                }
                other => panic!("expected an event with {key} = {value}, got {other:?}"),
            }
        }
    }

    /// Sends metered messages (a poll every 100 ms, within the test's patience) until one is
    /// counted, handing every reply to `observe`; false if none was.
    pub async fn metered_until_counted(&mut self, mut observe: impl FnMut(&Value)) -> bool {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        for attempt in 0.. {
            let reply = self.metered(&format!("poll-{attempt}")).await;
            observe(&reply);
            if is_counted(&reply) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Starts a demo-agent run; its frames follow (see [`WsClient::transcript`]). Run request
    /// ids start with `run` so [`crate::invariants::Acknowledgements`] knows what was metered.
    pub async fn run_agent(&mut self, id: &str, input: &str, tools: &[&str]) {
        self.run(id, "demo", input, tools).await;
    }

    /// Starts a run of `agent` (see [`WsClient::run_agent`]).
    pub async fn run(&mut self, id: &str, agent: &str, input: &str, tools: &[&str]) {
        assert!(id.starts_with("run"), "run request ids start with `run`");
        self.send_json(json!({
            "type": "run_agent", "id": id, "agent": agent, "input": input, "tools": tools,
        }))
        .await;
    }

    /// The frames of one run (`id`) up to its end: `agent_completed`, `agent_failed`,
    /// `run_cancelled`, or an error when the run never started. Other frames are skipped.
    pub async fn transcript(&mut self, id: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.reply_to(id).await;
            let kind = frame["type"].as_str().unwrap_or_default().to_owned();
            let never_started = frames.is_empty() && kind != "agent_started";
            frames.push(frame);
            let terminal = matches!(
                kind.as_str(),
                "agent_completed" | "agent_failed" | "run_cancelled"
            );
            if never_started || terminal {
                return frames;
            }
        }
    }

    /// The next frame that echoes `id`; panics if the connection ends first.
    async fn reply_to(&mut self, id: &str) -> Value {
        loop {
            match self.recv().await {
                Received::Json(frame) if frame["id"] == id => return frame,
                Received::Json(_) => {}
                other => panic!("the connection ended while waiting for `{id}`: {other:?}"),
            }
        }
    }

    /// The next frame of type `kind`, skipping others; panics if the connection ends first.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            match self.recv().await {
                Received::Json(frame) if frame["type"] == kind => return frame,
                Received::Json(_) => {}
                other => panic!("the connection ended while waiting for `{kind}`: {other:?}"),
            }
        }
    }

    /// Closes normally (1000) and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = self.recv_within(PATIENCE).await;
    }

    /// Drops the TCP connection without a close handshake.
    pub fn abandon(self) {
        drop(self);
    }
}

/// Whether the reply to [`WsClient::metered`] says the message was counted.
pub fn is_counted(reply: &Value) -> bool {
    reply["type"] == "error" && reply["code"] == "unknown_run"
}

/// The `type` of every frame, with consecutive `agent_delta`s counted once (how many arrive
/// depends on how fast the client reads: a slow reader gets them merged).
pub fn kinds(frames: &[Value]) -> Vec<&str> {
    let mut kinds: Vec<&str> = frames
        .iter()
        .map(|frame| frame["type"].as_str().unwrap_or_default())
        .collect();
    kinds.dedup_by(|a, b| *a == "agent_delta" && *b == "agent_delta");
    kinds
}

/// A run's `agent_delta` texts, concatenated: its answer, as streamed.
pub fn streamed(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|frame| frame["type"] == "agent_delta")
        .filter_map(|frame| frame["text"].as_str())
        .collect()
}

/// `POST /v1/publish` on `gateway`: the status and JSON answer.
pub async fn publish(gateway: &Service, token: Option<&str>, body: &Value) -> (u16, Value) {
    try_publish(gateway.http_addr(), token, body)
        .await
        .unwrap_or_else(|err| panic!("the gateway did not answer the publish: {err}"))
}

/// `POST /v1/publish` to a gateway at `addr`, which may be gone.
pub async fn try_publish(
    addr: SocketAddr,
    token: Option<&str>,
    body: &Value,
) -> Result<(u16, Value), reqwest::Error> {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/v1/publish"))
        .timeout(PATIENCE)
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}
