//! Reaching agent backends: one `tollgate.agent.v1.AgentBackend/Run` stream per run, to a
//! backend over gRPC, or to the in-process agent over the same messages without the network.
//!
//! Why both look the same from here: a run is driven by one piece of code whatever runs the
//! agent, so the built-in demo exercises exactly the path a team's own backend takes (and a
//! fault injected in a test behaves as it would in production).

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::agent::v1::{
    AgentMessage, GatewayMessage, Start, agent_backend_client::AgentBackendClient,
    gateway_message::Kind,
};
use tollgate_shared::{
    grpc::{TracedChannel, channel_with, streaming_endpoint},
    service_auth::{ServiceAuthInterceptor, ServiceTokenSource},
};
use tonic::{Code, Status, codegen::InterceptedService};

use super::routes::{AgentRoutes, Route};

/// Messages the gateway may have queued for a backend that is not reading them.
const TO_BACKEND_BUFFER: usize = 8;
/// Messages the in-process agent may have queued before the run reads them.
const FROM_LOCAL_BUFFER: usize = 32;

/// An agent that runs in this process and speaks the protocol's messages over channels.
#[async_trait]
pub trait LocalAgent: Send + Sync + fmt::Debug + 'static {
    /// Serves one run: reads `inbound` (first a `start`), writes `outbound`, returns when the
    /// run is over or either side went away.
    async fn run(
        &self,
        inbound: ReceiverStream<GatewayMessage>,
        outbound: mpsc::Sender<AgentMessage>,
    );
}

/// How backends are reached.
#[derive(Clone, Debug)]
pub struct BackendSettings {
    /// The longest wait for a TCP and HTTP/2 connection to a remote backend.
    pub connect_timeout: Duration,
    /// The largest message a backend may send (larger ones break the run).
    pub max_message_bytes: usize,
}

type Client = AgentBackendClient<InterceptedService<TracedChannel, ServiceAuthInterceptor>>;

#[derive(Clone)]
enum Backend {
    Local(Arc<dyn LocalAgent>),
    Remote(Box<Remote>),
}

/// A backend in another process, and the service tokens it is called with.
#[derive(Clone)]
struct Remote {
    client: Client,
    tokens: ServiceAuthInterceptor,
}

/// Every agent a client may ask for, and how to reach it.
#[derive(Clone)]
pub struct Backends {
    agents: HashMap<String, Backend>,
    max_message_bytes: usize,
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.agents.keys().collect();
        names.sort();
        f.debug_struct("Backends").field("agents", &names).finish()
    }
}

/// Why a run could not be started; nothing reached the backend's agent logic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// No agent of that name is routed.
    UnknownAgent,
    /// The backend could not be reached or refused the stream (for logs, not the client).
    Unavailable(String),
}

/// What the backend said next.
#[derive(Debug, PartialEq)]
pub enum Received {
    Message(AgentMessage),
    /// The backend closed the stream normally.
    Ended,
    /// The stream broke: `protocol` when the backend sent something undecodable or too large,
    /// otherwise the backend died or refused (the status, for logs).
    Broken {
        protocol: bool,
        detail: String,
    },
}

impl Backends {
    /// Builds every route's backend. `local` runs the `builtin` routes; `tokens` makes the
    /// service token source of one audience (the agent's name).
    pub fn new(
        routes: &AgentRoutes,
        local: Arc<dyn LocalAgent>,
        settings: &BackendSettings,
        tokens: impl Fn(&str) -> ServiceTokenSource,
    ) -> Result<Self, String> {
        let mut agents = HashMap::new();
        for (name, route) in routes.iter() {
            let backend = match route {
                Route::Builtin => Backend::Local(Arc::clone(&local)),
                Route::Remote(url) => {
                    let connect_timeout = settings.connect_timeout;
                    let channel = channel_with(url, move |endpoint| {
                        streaming_endpoint(endpoint, connect_timeout)
                    })
                    .map_err(|err| format!("GATEWAY_AGENTS: agent `{name}`: {err}"))?;
                    let tokens = tokens(name).interceptor();
                    let client = AgentBackendClient::with_interceptor(channel, tokens.clone())
                        .max_decoding_message_size(settings.max_message_bytes);
                    Backend::Remote(Box::new(Remote { client, tokens }))
                }
            };
            agents.insert(name.to_owned(), backend);
        }
        Ok(Self {
            agents,
            max_message_bytes: settings.max_message_bytes,
        })
    }

    pub fn knows(&self, agent: &str) -> bool {
        self.agents.contains_key(agent)
    }

    /// The largest message a backend may send.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Opens the run's stream and sends `start`. Waits at most `timeout` for the backend to
    /// accept it (a remote backend's response headers, which some servers send with their
    /// first message).
    pub async fn open(&self, start: Start, timeout: Duration) -> Result<Conversation, OpenError> {
        let backend = self
            .agents
            .get(&start.agent)
            .ok_or(OpenError::UnknownAgent)?
            .clone();
        let (to_backend, inbound) = mpsc::channel(TO_BACKEND_BUFFER);
        let start = GatewayMessage {
            kind: Some(Kind::Start(start)),
        };
        to_backend
            .try_send(start)
            .map_err(|_| OpenError::Unavailable("the start message could not be queued".into()))?;
        match backend {
            Backend::Local(agent) => {
                let (outbound, received) = mpsc::channel(FROM_LOCAL_BUFFER);
                let task = tokio::spawn(async move {
                    agent.run(ReceiverStream::new(inbound), outbound).await;
                });
                Ok(Conversation {
                    to_backend,
                    from_backend: ReceiverStream::new(received).map(Ok).boxed(),
                    _agent: Some(AbortOnDrop(Some(task))),
                })
            }
            Backend::Remote(remote) => {
                let Remote { mut client, tokens } = *remote;
                let call = async move {
                    tokens.first_token().await;
                    client.run(ReceiverStream::new(inbound)).await
                };
                let response = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(status)) => return Err(OpenError::Unavailable(describe(&status))),
                    Err(_) => {
                        return Err(OpenError::Unavailable(
                            "the backend did not accept the run in time".into(),
                        ));
                    }
                };
                Ok(Conversation {
                    to_backend,
                    from_backend: response.into_inner().boxed(),
                    _agent: None,
                })
            }
        }
    }
}

/// One run's open stream with its backend. Dropping it closes the stream (and stops an
/// in-process agent).
pub struct Conversation {
    to_backend: mpsc::Sender<GatewayMessage>,
    from_backend: BoxStream<'static, Result<AgentMessage, Status>>,
    _agent: Option<AbortOnDrop>,
}

impl fmt::Debug for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversation").finish_non_exhaustive()
    }
}

impl Conversation {
    /// Sends one message, waiting while the backend is not reading; `false` once the backend
    /// stopped listening.
    pub async fn send(&mut self, kind: Kind) -> bool {
        let message = GatewayMessage { kind: Some(kind) };
        self.to_backend.send(message).await.is_ok()
    }

    /// The backend's next message (cancel-safe).
    pub async fn next(&mut self) -> Received {
        match self.from_backend.next().await {
            Some(Ok(message)) => Received::Message(message),
            None => match self._agent.as_mut() {
                Some(agent) => agent.ended().await,
                None => Received::Ended,
            },
            Some(Err(status)) => Received::Broken {
                protocol: is_protocol_error(&status),
                detail: describe(&status),
            },
        }
    }
}

/// Whether a failed stream is the backend's bad encoding rather than its death: tonic reports
/// an oversized message as OUT_OF_RANGE and an undecodable one as INTERNAL "failed to decode".
fn is_protocol_error(status: &Status) -> bool {
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted => true,
        Code::Internal => status.message().contains("decode"),
        _ => false,
    }
}

/// A status for logs: the code and at most 200 bytes of the message.
fn describe(status: &Status) -> String {
    let message: String = status.message().chars().take(200).collect();
    format!("{:?}: {message}", status.code())
}

#[derive(Debug)]
struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    /// How an in-process agent whose stream just ended finished: its channel closes while a
    /// panic unwinds, so the task is given a moment to report one.
    async fn ended(&mut self) -> Received {
        let Some(task) = self.0.as_mut() else {
            return Received::Ended;
        };
        let outcome = tokio::time::timeout(Duration::from_secs(1), task).await;
        if outcome.is_ok() {
            self.0 = None;
        }
        match outcome {
            Ok(Err(err)) if err.is_panic() => Received::Broken {
                protocol: false,
                detail: "the in-process agent panicked".into(),
            },
            _ => Received::Ended,
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_undecodable_messages_are_protocol_errors_and_deaths_are_not() {
        let protocol = [
            Status::out_of_range("Error, decoded message length too large"),
            Status::internal("failed to decode Protobuf message: invalid wire type"),
        ];
        for status in protocol {
            assert!(is_protocol_error(&status), "{status:?}");
        }
        let deaths = [
            Status::unavailable("connection reset"),
            Status::unknown("h2 protocol error"),
            Status::cancelled("stream cancelled"),
            Status::internal("an internal error of the backend"),
        ];
        for status in deaths {
            assert!(!is_protocol_error(&status), "{status:?}");
        }
        assert!(describe(&Status::internal("x".repeat(1000))).len() < 230);
    }
}
