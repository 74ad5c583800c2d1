//! The authenticated part of a connection: the controller loop of [`crate::connection`].
//!
//! Requests are answered one at a time: each becomes a boxed future (metering through
//! usage-service, then the action) polled inside the loop, so timers, closes from elsewhere
//! and shutdown are still noticed while it waits, and no further frame is read until it is
//! answered. Its [`Reply`] is then applied to the connection's state. A `ping` is answered at
//! once, unmetered, within the connection's [`PingBudget`] (see [`crate::keepalive`]); an
//! `auth` on an authenticated connection is refused like a malformed frame.

use std::{collections::BTreeMap, pin::Pin, sync::Arc, time::Duration};

use axum::extract::ws::{Message, Utf8Bytes};
use futures::{Stream, StreamExt, future::BoxFuture};
use tokio::{
    sync::watch,
    time::{Instant, MissedTickBehavior, interval_at, sleep_until},
};
use tollgate_shared::time::unix_now_ms;

use crate::{
    agent::{Caller, RunRequest, ToolName},
    end::{End, frame_error},
    error::{CloseCode, ErrorReply, Rejection},
    hub::ConnectionHandle,
    keepalive::PingBudget,
    limits::{Lease, Meter, Metered},
    protocol::{ClientMessage, Outbound, RequestId, ServerMessage},
    runs::{Finished, RunContext, Runs, UsageToolGate},
    session::Session,
    state::Shared,
    validation::Identity,
};

/// What a finished request asks of the connection.
enum Reply {
    Frame(Utf8Bytes),
    RateLimited {
        id: Option<RequestId>,
        retry_after: Duration,
    },
    Refreshed {
        id: Option<RequestId>,
        identity: Identity,
    },
    StartRun {
        id: Option<RequestId>,
        request: RunRequest,
    },
    Cancel {
        id: Option<RequestId>,
        run_id: String,
    },
    Close(CloseCode),
}

/// What woke the controller loop.
enum Event {
    Frame(Option<Result<Message, axum::Error>>),
    Reply(Reply),
    Closed(CloseCode),
    Warn,
    Expired,
    Ping,
    Renew,
    Renewed(Lease),
    RunFinished(Finished),
    Shutdown,
}

/// What a request does once it has passed the message meter.
enum Action {
    Refresh(String),
    Run(RunRequest),
    Cancel(String),
}

#[derive(Debug)]
pub struct Live {
    shared: Arc<Shared>,
    handle: Arc<ConnectionHandle>,
    connection_id: Arc<str>,
    session: Session,
    /// The connection's runs, made with the first one.
    runs: Option<Runs>,
    /// What the connection's runs share, made with the first run (most connections never
    /// run an agent, and an idle connection should stay small).
    context: Option<RunContext>,
    closing: watch::Receiver<Option<CloseCode>>,
    seq: u64,
    bad_frames: u32,
    violations: u32,
    pings: PingBudget,
    warned: bool,
    last_seen: Instant,
}

impl Live {
    pub fn new(
        shared: Arc<Shared>,
        handle: Arc<ConnectionHandle>,
        connection_id: Arc<str>,
        session: Session,
    ) -> Self {
        Self {
            runs: None,
            closing: handle.closing(),
            shared,
            handle,
            connection_id,
            session,
            context: None,
            seq: 0,
            bad_frames: 0,
            violations: 0,
            pings: PingBudget::default(),
            warned: false,
            last_seen: Instant::now(),
        }
    }

    fn send(&self, frame: Utf8Bytes) {
        self.handle
            .offer(Outbound::Text(frame), &self.shared.metrics);
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
        let mut pending: Option<BoxFuture<'static, Reply>> = None;
        let mut renewal: Option<BoxFuture<'static, Lease>> = None;

        let identity = self.session.identity;
        self.send(
            ServerMessage::Connected {
                connection_id: &self.connection_id,
                session_id: identity.session_id,
                user_id: identity.user_id,
                plan: &self.session.profile.plan,
                roles: &self.session.profile.roles,
                expires_at: identity.expires_at,
            }
            .encode(),
        );

        loop {
            let (warn_at, expire_at) = self.deadlines();
            let event = tokio::select! {
                frame = stream.next(), if pending.is_none() => Event::Frame(frame),
                reply = poll(&mut pending), if pending.is_some() => Event::Reply(reply),
                code = self.closing.wait_for(Option::is_some) => {
                    Event::Closed(code.ok().and_then(|code| *code).unwrap_or(CloseCode::Normal))
                }
                () = sleep_until(warn_at), if !self.warned => Event::Warn,
                () = sleep_until(expire_at) => Event::Expired,
                _ = ping.tick() => Event::Ping,
                _ = renew.tick(), if renewal.is_none() => Event::Renew,
                lease = poll(&mut renewal), if renewal.is_some() => Event::Renewed(lease),
                finished = next_finished(&mut self.runs) => Event::RunFinished(finished),
                () = self.shared.shutdown.wait() => Event::Shutdown,
            };
            match event {
                Event::Frame(frame) => {
                    if let Some(end) = self.on_frame(frame, &mut pending) {
                        return end;
                    }
                }
                Event::Reply(reply) => {
                    pending = None;
                    if let Some(end) = self.on_reply(reply) {
                        return end;
                    }
                }
                Event::Closed(code) => return End::ClosedBy(code),
                Event::Warn => {
                    self.warned = true;
                    let expires_in_ms = millis_until(self.session.identity.expires_at);
                    self.send(ServerMessage::TokenExpiring { expires_in_ms }.encode());
                }
                Event::Expired => return End::Close(CloseCode::TokenExpired),
                Event::Ping => {
                    if self.last_seen.elapsed() > ping_every + pong_timeout {
                        tracing::info!("no sign of life after a ping; dropping the connection");
                        return End::Gone;
                    }
                    self.handle.offer(Outbound::Ping, &self.shared.metrics);
                }
                Event::Renew => {
                    let (shared, user, id) = (
                        Arc::clone(&self.shared),
                        self.session.identity.user_id,
                        self.connection_id.clone(),
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
                        Lease::Granted(profile) => {
                            self.session.lease_held = true;
                            self.session.profile = profile;
                        }
                        // The plan now allows fewer connections than the user holds, and
                        // usage-service counts this one among the newest beyond the limit.
                        Lease::Denied { .. } => return End::Close(CloseCode::TooManyConnections),
                        Lease::Unavailable => {}
                    }
                }
                Event::RunFinished(Finished::Ended) => {}
                Event::RunFinished(Finished::Crashed) => return End::Close(CloseCode::Internal),
                Event::Shutdown => return End::Close(CloseCode::GoingAway),
            }
        }
    }

    /// Cancels the runs; returns whether a lease is held (to release).
    pub async fn stop(&mut self) -> bool {
        if let Some(runs) = self.runs.as_mut() {
            runs.stop().await;
        }
        self.session.lease_held
    }

    /// When to send `token_expiring`, and when to close for expiry.
    fn deadlines(&self) -> (Instant, Instant) {
        let config = &self.shared.config;
        let exp =
            Instant::now() + Duration::from_millis(millis_until(self.session.identity.expires_at));
        let warn = exp
            .checked_sub(config.token_expiry_warning)
            .unwrap_or_else(Instant::now);
        (warn, exp + config.jwt_leeway)
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<Message, axum::Error>>,
        pending: &mut Option<BoxFuture<'static, Reply>>,
    ) -> Option<End> {
        let frame = match frame {
            None => return Some(End::Gone),
            Some(Err(err)) => return Some(frame_error(err)),
            Some(Ok(frame)) => frame,
        };
        self.last_seen = Instant::now();
        let text = match frame {
            Message::Text(text) => text,
            Message::Binary(_) => return Some(End::Close(CloseCode::Unsupported)),
            Message::Close(_) => return Some(End::ClientClosed),
            Message::Ping(_) | Message::Pong(_) => return None,
        };
        let message = match ClientMessage::parse(text.as_str()) {
            Ok(message) => message,
            Err(bad) => {
                return self.bad_frame(bad.id.as_ref(), ErrorReply::bad_request(bad.message));
            }
        };
        // A well-formed request ends a run of bad frames.
        let bad_frames = std::mem::take(&mut self.bad_frames);
        let (id, action) = match message {
            // Not a request this connection serves, and never metered: one more bad frame.
            ClientMessage::Auth { id, .. } => {
                self.bad_frames = bad_frames;
                return self.bad_frame(id.as_ref(), ErrorReply::already_authenticated());
            }
            ClientMessage::Ping { id } => {
                return match self.pings.take() {
                    Ok(()) => {
                        self.send(ServerMessage::Pong { id: id.as_ref() }.encode());
                        None
                    }
                    Err(retry_after) => self.rate_limited(id.as_ref(), retry_after),
                };
            }
            ClientMessage::RefreshToken { id, token } => (id, Action::Refresh(token)),
            ClientMessage::CancelRun { id, run_id } => (id, Action::Cancel(run_id)),
            ClientMessage::RunAgent {
                id,
                agent,
                input,
                tools,
                metadata,
            } => match self.run_request(agent, input, tools, metadata) {
                Ok(request) => (id, Action::Run(request)),
                Err(reply) => {
                    self.send(ServerMessage::error(id.as_ref(), &reply));
                    return None;
                }
            },
        };
        self.seq += 1;
        *pending = Some(Box::pin(request(
            Arc::clone(&self.shared),
            self.session.identity,
            format!("{}:{}", self.connection_id, self.seq),
            id,
            action,
        )));
        None
    }

    /// Validates a `run_agent` before anything is counted.
    fn run_request(
        &self,
        agent: String,
        input: String,
        tools: Vec<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<RunRequest, ErrorReply> {
        if self.runs.as_ref().is_some_and(Runs::is_full) {
            return Err(ErrorReply::too_many_runs());
        }

        let tools = tools
            .iter()
            .map(|tool| {
                tool.parse::<ToolName>().map_err(|err| {
                    let shown: String = tool.chars().filter(|c| !c.is_control()).take(32).collect();
                    ErrorReply::bad_request(format!("`{shown}`: {err}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request = RunRequest::new(agent, input, tools, metadata)
            .map_err(|err| ErrorReply::bad_request(err.to_string()))?;
        if !self.shared.backends.knows(&request.agent) {
            return Err(ErrorReply::unknown_agent(&request.agent));
        }
        Ok(request)
    }

    /// Answers a frame that is not a request this connection serves; enough of them in a row
    /// close it with 1008.
    fn bad_frame(&mut self, id: Option<&RequestId>, reply: ErrorReply) -> Option<End> {
        self.bad_frames += 1;
        self.send(ServerMessage::error(id, &reply));
        (self.bad_frames >= self.shared.config.max_bad_frames)
            .then_some(End::Close(CloseCode::PolicyViolation))
    }

    /// Answers a request refused for a rate (the plan's messages, or pings); enough of them in
    /// a row close the connection with 4008.
    fn rate_limited(&mut self, id: Option<&RequestId>, retry_after: Duration) -> Option<End> {
        self.violations += 1;
        self.send(
            ServerMessage::RateLimited {
                id,
                retry_after_ms: retry_after.as_millis().max(1) as u64,
            }
            .encode(),
        );
        (self.violations >= self.shared.config.max_rate_violations)
            .then_some(End::Close(CloseCode::RateLimited))
    }

    fn on_reply(&mut self, reply: Reply) -> Option<End> {
        if let Reply::RateLimited { id, retry_after } = reply {
            return self.rate_limited(id.as_ref(), retry_after);
        }
        // Any other answer to a message ends a run of refusals (a pong does not: pings are
        // not what the plan limits).
        self.violations = 0;
        match reply {
            Reply::RateLimited { .. } => {}
            Reply::Frame(frame) => self.send(frame),
            Reply::Refreshed { id, identity } => {
                self.session.identity = identity;
                self.warned = false;
                self.send(
                    ServerMessage::TokenRefreshed {
                        id: id.as_ref(),
                        expires_at: identity.expires_at,
                    }
                    .encode(),
                );
            }
            Reply::StartRun { id, request } => {
                let context = self.context.get_or_insert_with(|| RunContext {
                    backends: Arc::clone(&self.shared.backends),
                    settings: self.shared.config.run_settings(),
                    gate: Arc::new(UsageToolGate::new(
                        self.shared.limits.clone(),
                        self.session.identity.user_id,
                    )),
                    caller: Arc::new(Caller {
                        user_id: self.session.identity.user_id,
                        session_id: self.session.identity.session_id,
                        plan: self.session.profile.plan.clone(),
                        roles: self.session.profile.roles.clone(),
                    }),
                    handle: Arc::clone(&self.handle),
                });
                let config = &self.shared.config;
                let (max, grace) = (config.max_runs_per_connection, config.agent_cancel_grace);
                self.runs
                    .get_or_insert_with(|| Runs::new(max, grace + Duration::from_secs(1)))
                    .start(context, request, id);
            }
            Reply::Cancel { id, run_id } => {
                if !self.runs.as_mut().is_some_and(|runs| runs.cancel(&run_id)) {
                    self.send(ServerMessage::error(
                        id.as_ref(),
                        &ErrorReply::unknown_run(),
                    ));
                }
            }
            Reply::Close(code) => return Some(End::Close(code)),
        }
        None
    }
}

/// The next run to end, if the connection has runs (pending forever otherwise).
async fn next_finished(runs: &mut Option<Runs>) -> Finished {
    match runs {
        Some(runs) => runs.next_finished().await,
        None => std::future::pending().await,
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

/// One request: the message meter, then the action.
async fn request(
    shared: Arc<Shared>,
    identity: Identity,
    key: String,
    id: Option<RequestId>,
    action: Action,
) -> Reply {
    let user = identity.user_id;
    let refused = |id: Option<RequestId>, reply: ErrorReply| {
        Reply::Frame(ServerMessage::error(id.as_ref(), &reply))
    };
    match shared.limits.meter(user, Meter::Messages, key).await {
        Metered::Allowed => {}
        Metered::Denied { retry_after, .. } => return Reply::RateLimited { id, retry_after },
        Metered::Unavailable => return refused(id, ErrorReply::usage_unavailable()),
    }
    match action {
        Action::Cancel(run_id) => Reply::Cancel { id, run_id },
        Action::Refresh(token) => match shared.validator.validate(&token).await {
            Ok(new) if new.user_id == identity.user_id && new.session_id == identity.session_id => {
                Reply::Refreshed { id, identity: new }
            }
            Ok(_) => Reply::Close(CloseCode::SessionMismatch),
            Err(failure) => match failure.on_refresh() {
                Rejection::Reply(reply) => refused(id, reply),
                Rejection::Close(code) => Reply::Close(code),
            },
        },
        Action::Run(request) => {
            let key = request.run_id.to_string();
            match shared.limits.meter(user, Meter::AgentRuns, key).await {
                Metered::Allowed => Reply::StartRun { id, request },
                Metered::Denied { upgrade_to, .. } => {
                    refused(id, ErrorReply::run_quota_exceeded(upgrade_to))
                }
                Metered::Unavailable => refused(id, ErrorReply::usage_unavailable()),
            }
        }
    }
}
