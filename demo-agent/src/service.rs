//! The tonic side: `tollgate.agent.v1.AgentBackend` served by a [`DemoAgent`], each `Run` call
//! one run on a task of its own.
//!
//! Why a task per run: the run must keep reading the gateway's stream (for `cancel`) even
//! while the transport is not asking for output, which a future polled only by the response
//! body would not do. Each task ends with its run, and a run ends when its caller goes away
//! (the response channel closes), so no task outlives its call; [`Runs`] also lets the server
//! wait for them on shutdown and then stop the stragglers.

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tollgate_proto::agent::v1::{
    AgentMessage, GatewayMessage,
    agent_backend_server::{AgentBackend, AgentBackendServer},
};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::{DemoAgent, ServiceAuth};

/// Messages a run may have queued for its caller: the transport drains it as the caller's
/// flow control allows, and a full queue holds the run back.
const OUTBOUND_CAPACITY: usize = 16;

/// The tonic service: `AgentBackendServer` of a `DemoAgent` (each `Run` call = one `run`).
/// With `auth`, a call without a valid service token is refused before any run starts.
pub fn service(
    agent: DemoAgent,
    auth: Option<ServiceAuth>,
) -> AgentBackendServer<impl AgentBackend> {
    service_with_runs(agent, auth, Runs::default())
}

pub(crate) fn service_with_runs(
    agent: DemoAgent,
    auth: Option<ServiceAuth>,
    runs: Runs,
) -> AgentBackendServer<Backend> {
    AgentBackendServer::new(Backend { agent, auth, runs })
}

/// The runs a server has started: something to wait for, and a signal that stops them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Runs {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Runs {
    /// Waits until every run started so far has ended.
    pub(crate) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Stops every run: each sends `failed` and ends.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }
}

#[derive(Debug)]
pub(crate) struct Backend {
    agent: DemoAgent,
    auth: Option<ServiceAuth>,
    runs: Runs,
}

type Outbound = futures::stream::Map<
    ReceiverStream<AgentMessage>,
    fn(AgentMessage) -> Result<AgentMessage, Status>,
>;

#[tonic::async_trait]
impl AgentBackend for Backend {
    type RunStream = Outbound;

    async fn run(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Self::RunStream>, Status> {
        if let Some(auth) = &self.auth {
            let caller = auth.check(request.metadata()).await?;
            tracing::debug!(client = %caller.sub, "run authorized");
        }
        // A broken inbound stream (a reset, a bad message) ends the run like a closed one.
        let inbound = tokio_stream::StreamExt::map_while(request.into_inner(), |message| {
            message
                .inspect_err(
                    |status| tracing::debug!(code = ?status.code(), "inbound stream broke"),
                )
                .ok()
        });
        let (outbound, messages) = mpsc::channel(OUTBOUND_CAPACITY);
        let agent = self.agent.clone();
        let stop = self.runs.stop.clone();
        self.runs.tracker.spawn(
            async move {
                agent.run_until(inbound, outbound, stop).await;
            }
            .in_current_span(),
        );
        let ok: fn(AgentMessage) -> Result<AgentMessage, Status> = Ok;
        Ok(Response::new(ReceiverStream::new(messages).map(ok)))
    }
}
