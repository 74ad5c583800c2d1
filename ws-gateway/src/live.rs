//! The authenticated part of a connection: the controller loop of [`crate::connection`].
//!
//! The loop owns the timers (`token_expiring`, expiry, pings and the dead-peer check, lease
//! renewal) and dispatches each frame to its [`Command`], which acts on the [`Client`].
//! Requests are answered one at a time: a command that waits on a dependency hands back a
//! boxed future, polled inside the loop so timers, closes from elsewhere and shutdown are
//! still noticed while it waits, and no further frame is read until its [`Answer`] is
//! applied.

use std::{pin::Pin, sync::Arc, time::Duration};

use axum::extract::ws::Message;
use futures::{Stream, StreamExt, future::BoxFuture};
use tokio::{
    sync::watch,
    time::{Instant, MissedTickBehavior, interval_at, sleep_until},
};
use tollgate_shared::time::unix_now_ms;

use crate::{
    client::Client,
    commands::{Answer, Command, Next},
    end::{End, frame_error},
    error::{CloseCode, ErrorReply},
    history::Since,
    hub::ConnectionHandle,
    limits::Lease,
    protocol::{Outbound, ServerMessage},
    session::Session,
    state::Shared,
};

/// What woke the controller loop.
enum Event {
    Frame(Option<Result<Message, axum::Error>>),
    Answer(Answer),
    Closed(CloseCode),
    Warn,
    Expired,
    Ping,
    Renew,
    Renewed(Lease),
    Shutdown,
}

#[derive(Debug)]
pub struct Live {
    /// The client's too: the loop's own handle, so shutdown is watched while the client's
    /// runs are polled.
    shared: Arc<Shared>,
    client: Client,
    closing: watch::Receiver<Option<CloseCode>>,
    last_seen: Instant,
    /// The client's `since`, until its events are replayed.
    since: Option<Since>,
}

impl Live {
    pub fn new(
        shared: Arc<Shared>,
        handle: Arc<ConnectionHandle>,
        connection_id: Arc<str>,
        session: Session,
        since: Option<Since>,
    ) -> Self {
        Self {
            closing: handle.closing(),
            client: Client::new(Arc::clone(&shared), handle, connection_id, session),
            shared,
            last_seen: Instant::now(),
            since,
        }
    }

    /// Runs until the connection should end.
    pub async fn run<St>(&mut self, stream: &mut St) -> End
    where
        St: Stream<Item = Result<Message, axum::Error>> + Send + Unpin,
    {
        let config = &self.shared.config;
        let (ping_every, pong_timeout) = (config.ping_interval, config.pong_timeout);
        let renew_every = (config.lease_ttl / 3).max(Duration::from_secs(1));
        let mut ping = interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut renew = interval_at(Instant::now() + renew_every, renew_every);
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut renewal: Option<BoxFuture<'static, Lease>> = None;

        let session = self.client.session();
        let identity = session.identity;
        self.client.send(
            ServerMessage::Connected {
                connection_id: self.client.connection_id(),
                session_id: identity.session_id,
                user_id: identity.user_id,
                plan: &session.profile.plan,
                roles: &session.profile.roles,
                expires_at: identity.expires_at,
            }
            .encode(),
        );
        // Like a request: no frame is read until the missed events are queued.
        let mut pending = self.catch_up();

        loop {
            let (warn_at, expire_at) = self.deadlines();
            let event = tokio::select! {
                frame = stream.next(), if pending.is_none() => Event::Frame(frame),
                answer = poll(&mut pending), if pending.is_some() => Event::Answer(answer),
                code = self.closing.wait_for(Option::is_some) => {
                    Event::Closed(code.ok().and_then(|code| *code).unwrap_or(CloseCode::Normal))
                }
                () = sleep_until(warn_at), if !self.client.warned() => Event::Warn,
                () = sleep_until(expire_at) => Event::Expired,
                _ = ping.tick() => Event::Ping,
                _ = renew.tick(), if renewal.is_none() => Event::Renew,
                lease = poll(&mut renewal), if renewal.is_some() => Event::Renewed(lease),
                () = self.shared.shutdown.wait() => Event::Shutdown,
            };
            match event {
                Event::Frame(frame) => match self.on_frame(frame) {
                    Next::Read => {}
                    Next::Wait(request) => pending = Some(request),
                    Next::End(end) => return end,
                },
                Event::Answer(answer) => {
                    pending = None;
                    if let Some(end) = answer.apply(&mut self.client) {
                        return end;
                    }
                }
                Event::Closed(code) => return End::ClosedBy(code),
                Event::Warn => {
                    self.client.set_warned();
                    let expires_in_ms = millis_until(self.client.identity().expires_at);
                    self.client
                        .send(ServerMessage::TokenExpiring { expires_in_ms }.encode());
                }
                Event::Expired => return End::Close(CloseCode::TokenExpired),
                Event::Ping => {
                    if self.last_seen.elapsed() > ping_every + pong_timeout {
                        tracing::info!("no sign of life after a ping; dropping the connection");
                        return End::Gone;
                    }
                    self.client
                        .handle()
                        .offer(Outbound::Ping, &self.shared.metrics);
                }
                Event::Renew => {
                    let (shared, user, id) = (
                        Arc::clone(&self.shared),
                        self.client.identity().user_id,
                        self.client.connection_id().clone(),
                    );
                    renewal = Some(Box::pin(async move {
                        shared
                            .limits
                            .lease(user, &id, shared.config.lease_ttl)
                            .await
                    }));
                }
                Event::Renewed(lease) => {
                    renewal = None;
                    match lease {
                        Lease::Granted(profile) => self.client.leased(profile),
                        // The plan now allows fewer connections than the user holds, and
                        // usage-service counts this one among the newest beyond the limit.
                        Lease::Denied { .. } => return End::Close(CloseCode::TooManyConnections),
                        Lease::Unavailable => {}
                    }
                }
                Event::Shutdown => return End::Close(CloseCode::GoingAway),
            }
        }
    }

    /// Lets the user's published events through: at once without `since`; with it, once the
    /// history is read (`events_resumed`, the missed events, then live ones). A `since` ahead
    /// of the user's last event is answered with `bad_request` and 1008.
    fn catch_up(&mut self) -> Option<BoxFuture<'static, Answer>> {
        let Some(since) = self.since.take() else {
            self.shared.delivery.open(self.client.handle(), None);
            return None;
        };
        let shared = Arc::clone(&self.shared);
        let user = self.client.identity().user_id;
        Some(Box::pin(async move {
            let resumed = shared.delivery.resume(user, since).await;
            Answer::Done(Box::new(move |client: &mut Client| match resumed {
                Ok(resumed) => {
                    let delivery = &client.shared().delivery;
                    delivery.open(client.handle(), Some(resumed));
                    None
                }
                Err(err) => {
                    client.reply(None, &ErrorReply::bad_request(err.to_string()));
                    Some(End::Close(CloseCode::PolicyViolation))
                }
            }))
        }))
    }

    /// Stops following runs (they go on); returns whether a lease is held (to release).
    pub async fn stop(&mut self) -> bool {
        self.client.stop().await
    }

    /// When to send `token_expiring`, and when to close for expiry.
    fn deadlines(&self) -> (Instant, Instant) {
        let config = &self.shared.config;
        let exp =
            Instant::now() + Duration::from_millis(millis_until(self.client.identity().expires_at));
        let warn = exp
            .checked_sub(config.token_expiry_warning)
            .unwrap_or_else(Instant::now);
        (warn, exp + config.jwt_leeway)
    }

    /// Dispatches a frame: a text frame to its command, anything else to how it ends.
    fn on_frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> Next {
        let frame = match frame {
            None => return Next::End(End::Gone),
            Some(Err(err)) => return Next::End(frame_error(err)),
            Some(Ok(frame)) => frame,
        };
        self.last_seen = Instant::now();
        let text = match frame {
            Message::Text(text) => text,
            Message::Binary(_) => return Next::End(End::Close(CloseCode::Unsupported)),
            Message::Close(_) => return Next::End(End::ClientClosed),
            Message::Ping(_) | Message::Pong(_) => return Next::Read,
        };
        match Command::parse(text.as_str()) {
            Ok(command) => command.apply(&mut self.client),
            Err(bad) => self
                .client
                .bad_frame(bad.id.as_ref(), ErrorReply::bad_request(bad.message))
                .into(),
        }
    }
}

/// Milliseconds from now until the Unix second `at` (zero if past).
fn millis_until(at: i64) -> u64 {
    (at.saturating_mul(1000) - unix_now_ms()).max(0) as u64
}

/// Polls an optional future that the caller has checked is present.
async fn poll<T>(future: &mut Option<BoxFuture<'static, T>>) -> T {
    match future.as_mut() {
        Some(future) => Pin::new(future).await,
        None => std::future::pending().await,
    }
}
