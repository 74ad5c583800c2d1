//! One WebSocket connection, from the upgrade to the last frame.
//!
//! [`upgrade`] is the `/ws` route: [`crate::handshake`] decides whether the request is
//! admitted, and the upgraded socket is served here.
//!
//! One task per connection, running two futures side by side:
//!
//! - the **writer** drains the bounded send queue into the socket. Whoever closes the
//!   connection first sets its close signal; the writer sends that close frame ahead of
//!   anything still queued (`close_now`), or in order after it (`close_after_queue`).
//! - the **controller** ([`crate::live`], once authenticated) reads frames, answers
//!   requests one at a time (while a request waits on usage-service or auth-service, no
//!   further frame is read: natural backpressure), and keeps the timers: `token_expiring`,
//!   expiry (4003), pings and the dead-peer check, lease renewal.
//!
//! They are polled by the same task rather than each by its own, so that a frame queued by
//! the controller (`connected`, a reply) is written without waking another task, and a
//! connection the client closed drops its writer instead of aborting a task and waiting for
//! it. A writer stuck on a slow socket still holds up nothing else: the controller is polled
//! whether or not the writer can make progress.
//!
//! Nothing ever waits on a slow client except its own writer: events, replies and run steps
//! are offered to the queue with `try_send`, and a full queue closes the connection with 4010.
//! When the connection ends, its runs are cancelled, it leaves the hub, its lease is released,
//! and the writer and the closing handshake get a bounded grace before the socket is dropped.
//! Shutdown sends 1001 the same way.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{
        ConnectInfo, Request, State,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
        },
    },
    response::{IntoResponse, Response},
};
use futures::{Sink, SinkExt, Stream, StreamExt, future::BoxFuture};
use tokio::{sync::watch, time::Instant};
use tollgate_shared::grpc::extract_trace_context;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::{
    commands::Command,
    end::{End, frame_error},
    error::{CloseCode, ErrorReply, GatewayError},
    handshake,
    history::{RecoverError, Since},
    hub::{ConnectionHandle, Mailbox},
    live::Live,
    protocol::{Outbound, ServerMessage},
    session::{Session, open_session},
    state::{Shared, Slot},
};

/// How long the writer gets to send the close frame, and the client to answer it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// `GET /ws`.
pub async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    // The request itself rather than `HeaderMap` and `Uri` extractors, which would copy them.
    request: Request,
) -> Response {
    let (headers, uri) = (request.headers(), request.uri());
    // Behind a trusted proxy, the client it forwards for.
    let client = shared
        .config
        .trusted_proxies
        .resolve_http(peer.ip(), headers);
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let status = rejection.status();
            return GatewayError::NotWebSocket { status }.into_response();
        }
    };
    let mut id = Uuid::encode_buffer();
    let connection_id: Arc<str> = Arc::from(&*Uuid::now_v7().simple().encode_lower(&mut id));
    let span = tracing::info_span!(
        "ws.connection",
        otel.name = "ws.connection",
        otel.kind = "server",
        connection_id = %connection_id,
        client.address = %client,
        user_id = tracing::field::Empty,
        session_id = tracing::field::Empty,
    );
    // The connection continues the trace of whoever opened it.
    let _ = span.set_parent(extract_trace_context(headers));
    let admitted = handshake::admit(&shared, client, headers, uri, &connection_id)
        .instrument(span.clone())
        .await;
    let (slot, session, since) = match admitted {
        Ok(admitted) => admitted,
        Err(err) => return err.into_response(),
    };
    let lease = session
        .as_ref()
        .filter(|session| session.lease_held)
        .map(|session| (session.identity.user_id, connection_id.clone()));
    let on_failure = {
        let shared = Arc::clone(&shared);
        move |err: axum::Error| {
            tracing::debug!(error = %err, "the WebSocket upgrade failed");
            if let Some((user, connection_id)) = lease {
                let limits = shared.limits.clone();
                shared.connections.spawn(async move {
                    limits.release(user, &connection_id).await;
                });
            }
        }
    };
    let tracker = shared.connections.clone();
    handshake::configure(ws, &shared)
        .on_failed_upgrade(on_failure)
        .on_upgrade(move |socket| {
            tracker.track_future(
                serve(shared, socket, connection_id, slot, session, since).instrument(span),
            )
        })
}

/// Serves an upgraded connection; `session` is `None` when the client must authenticate
/// in-band; `since` is the upgrade request's.
pub async fn serve(
    shared: Arc<Shared>,
    socket: WebSocket,
    connection_id: Arc<str>,
    slot: Slot,
    session: Option<Session>,
    since: Option<Since>,
) {
    let (sink, stream) = socket.split();
    run(shared, sink, stream, connection_id, slot, session, since).await;
}

/// The connection logic, over any sink and stream of WebSocket messages.
pub async fn run<Si, St>(
    shared: Arc<Shared>,
    sink: Si,
    mut stream: St,
    connection_id: Arc<str>,
    slot: Slot,
    session: Option<Session>,
    since: Option<Since>,
) where
    Si: Sink<Message, Error = axum::Error> + Send + Unpin + 'static,
    St: Stream<Item = Result<Message, axum::Error>> + Send + Unpin,
{
    let (handle, mailbox) = ConnectionHandle::new(connection_id.clone(), shared.config.send_queue);
    // Boxed: it lives as long as the connection, and the connection's own state machine
    // should stay small.
    let mut writer = Writer::Running(Box::pin(write_loop(sink, mailbox)));

    let authenticated = match session {
        Some(session) => Ok((session, since)),
        // Boxed, like every one-off step here, so the connection's long-lived state machine
        // stays small: an idle connection should cost a few KiB.
        None => Box::pin(authenticate(&shared, &mut stream, &handle, &connection_id))
            .await
            .map(|(session, asked)| (session, asked.or(since))),
    };
    let (end, lease) = match authenticated {
        Err(end) => (end, None),
        Ok((session, since)) => {
            let user = session.identity.user_id;
            // Registered (events held by the connection's gate) and subscribed before
            // `connected`: nothing published from then on is missed.
            let registration =
                shared
                    .hub
                    .register(user, session.identity.session_id, Arc::clone(&handle));
            let attachment = Box::pin(shared.delivery.attach(user)).await;
            // A revocation heard between validation and registration would have missed us.
            if shared.revoked.is_revoked(session.identity.session_id) {
                handle.close_now(CloseCode::SessionRevoked);
            }
            let mut live = Live::new(
                Arc::clone(&shared),
                Arc::clone(&handle),
                connection_id.clone(),
                session,
                since,
            );
            let end = tokio::select! {
                end = live.run(&mut stream) => end,
                () = writer.finished() => match handle.close_code() {
                    // The writer sent a close frame signalled from elsewhere.
                    Some(code) => End::ClosedBy(code),
                    // It could not write: the peer is gone.
                    None => End::Gone,
                },
            };
            let lease_held = Box::pin(live.stop()).await;
            drop(registration);
            Box::pin(attachment.detach()).await;
            (end, lease_held.then_some(user))
        }
    };

    // The lease goes first, so a client that saw the close frame may reconnect at once.
    if let Some(user) = lease {
        Box::pin(shared.limits.release(user, &connection_id)).await;
    }
    match end {
        End::Close(code) => {
            handle.close_after_queue(code);
            shared.metrics.closed(code);
        }
        End::ClosedBy(code) => shared.metrics.closed(code),
        End::ClientClosed | End::Gone => writer = Writer::Done,
    }
    handle.shut();
    Box::pin(finish(&mut writer, &mut stream, end)).await;
    tracing::debug!(?end, "connection closed");
    drop(slot);
}

/// Lets the writer send the close frame, then reads until the client answers it (this also
/// flushes tungstenite's automatic reply to a client-initiated close), each within the grace.
async fn finish<St>(writer: &mut Writer, stream: &mut St, end: End)
where
    St: Stream<Item = Result<Message, axum::Error>> + Send + Unpin,
{
    let closed = match writer {
        Writer::Running(_) => tokio::time::timeout(CLOSE_GRACE, writer.finished())
            .await
            .is_ok(),
        Writer::Done => matches!(end, End::ClosedBy(_)),
    };
    if closed || matches!(end, End::ClientClosed) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Waits for `{"type":"auth"}` (at most `GATEWAY_AUTH_TIMEOUT`) and admits its token; also
/// returns its `since`. A bad `since` is answered with a `bad_request` error and 1008.
async fn authenticate<St>(
    shared: &Shared,
    stream: &mut St,
    handle: &ConnectionHandle,
    connection_id: &Arc<str>,
) -> Result<(Session, Option<Since>), End>
where
    St: Stream<Item = Result<Message, axum::Error>> + Send + Unpin,
{
    let deadline = Instant::now() + shared.config.auth_timeout;
    let auth = loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            () = tokio::time::sleep_until(deadline) => return Err(End::Close(CloseCode::AuthTimeout)),
            () = shared.shutdown.wait() => return Err(End::Close(CloseCode::GoingAway)),
        };
        match frame {
            None => return Err(End::Gone),
            Some(Err(err)) => return Err(frame_error(err)),
            Some(Ok(Message::Text(text))) => match Command::parse(text.as_str()) {
                Ok(Command::Auth(auth)) => break auth,
                // Anything else first is not authentication.
                _ => return Err(End::Close(CloseCode::AuthTimeout)),
            },
            Some(Ok(Message::Binary(_))) => return Err(End::Close(CloseCode::Unsupported)),
            Some(Ok(Message::Close(_))) => return Err(End::ClientClosed),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
        }
    };
    let bad_since = |message: String| {
        let reply = ErrorReply::bad_request(message);
        handle.offer(
            Outbound::Text(ServerMessage::error(auth.id(), &reply)),
            &shared.metrics,
        );
        End::Close(CloseCode::PolicyViolation)
    };
    let since = auth.since().map_err(|err| bad_since(err.to_string()))?;
    let identity = shared
        .validator
        .validate(auth.token())
        .await
        .map_err(|failure| End::Close(failure.close_code()))?;
    if let Some(since) = since
        && let Err(RecoverError::Since(err)) =
            shared.delivery.check_since(identity.user_id, since).await
    {
        return Err(bad_since(err.to_string()));
    }
    let session = open_session(shared, identity, connection_id)
        .await
        .map_err(|refusal| End::Close(refusal.close_code()))?;
    Ok((session, since))
}

/// The writer: the send queue into the socket, a signalled close frame first.
async fn write_loop<Si>(mut sink: Si, mailbox: Mailbox)
where
    Si: Sink<Message, Error = axum::Error> + Unpin,
{
    let Mailbox {
        handle,
        close: mut closing_signal,
    } = mailbox;
    loop {
        let next = tokio::select! {
            biased;
            code = closing(&mut closing_signal) => Outbound::Close(code),
            item = handle.next_queued() => item,
        };
        let message = match next {
            Outbound::Text(text) => Message::Text(text),
            Outbound::Delta(delta) => Message::Text(delta.encode()),
            Outbound::Ping => Message::Ping(Default::default()),
            Outbound::Close(code) => {
                let frame = CloseFrame {
                    code: code.code(),
                    reason: code.reason().into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
        };
        if sink.send(message).await.is_err() {
            return;
        }
    }
}

async fn closing(close: &mut watch::Receiver<Option<CloseCode>>) -> CloseCode {
    let signalled = close.wait_for(Option::is_some).await.map(|code| *code);
    match signalled {
        Ok(code) => code.unwrap_or(CloseCode::Normal),
        Err(_) => std::future::pending().await,
    }
}

/// The connection's writer, until it has finished or is dropped.
enum Writer {
    Running(BoxFuture<'static, ()>),
    Done,
}

impl Writer {
    /// Completes when the writer does; then, and ever after, it is [`Writer::Done`].
    async fn finished(&mut self) {
        if let Self::Running(writing) = self {
            writing.await;
            *self = Self::Done;
        }
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
