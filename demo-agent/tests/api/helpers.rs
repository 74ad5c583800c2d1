//! Spawning the demo agent on port 0, a tonic client playing the gateway, and a JWKS served
//! from the test.

use std::{net::SocketAddr, time::Duration};

use demo_agent::{Application, Config};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::agent::v1::{
    GatewayMessage, Start, ToolDecision, agent_backend_client::AgentBackendClient,
    agent_message::Kind, gateway_message,
};
use tollgate_shared::{
    shutdown::Shutdown,
    time::unix_now,
    tokens::{JwkSet, ServiceClaims, SigningKey},
};
use tonic::{Request, Status, Streaming, transport::Channel};
use url::Url;

/// Longest a test waits for one message.
const PATIENCE: Duration = Duration::from_secs(10);

/// A demo agent serving on a free port; shut down when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(config: Config) -> Self {
        tollgate_shared::telemetry::init_for_tests();
        let shutdown = Shutdown::new();
        let app = Application::build(config, shutdown.clone())
            .await
            .expect("the app builds");
        let addr = app.addr();
        let server = tokio::spawn(app.run_until_stopped());
        Self {
            addr,
            shutdown,
            server: Some(server),
        }
    }

    pub async fn client(&self) -> AgentBackendClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("a URL")
            .connect_timeout(PATIENCE)
            .connect()
            .await
            .expect("the agent accepts connections");
        AgentBackendClient::new(channel)
    }

    /// Triggers shutdown and waits for the server to finish its drain.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        let server = self.server.take().expect("not stopped yet");
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the server stops")
            .expect("the server task does not panic")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// One run's call, from the gateway's side.
pub struct Call {
    pub to_agent: mpsc::Sender<GatewayMessage>,
    pub from_agent: Streaming<tollgate_proto::agent::v1::AgentMessage>,
}

impl Call {
    /// Opens a `Run` stream with `token` as the bearer (if any) and sends `start`.
    pub async fn open(
        client: &mut AgentBackendClient<Channel>,
        token: Option<&str>,
        start: Start,
    ) -> Result<Self, Status> {
        let (to_agent, inbound) = mpsc::channel(16);
        to_agent
            .send(message(gateway_message::Kind::Start(start)))
            .await
            .expect("the request stream is open");
        let mut request = Request::new(ReceiverStream::new(inbound));
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("valid metadata");
            request.metadata_mut().insert("authorization", value);
        }
        let from_agent = tokio::time::timeout(PATIENCE, client.run(request))
            .await
            .expect("the agent answers")?
            .into_inner();
        Ok(Self {
            to_agent,
            from_agent,
        })
    }

    /// The next message, `None` once the stream ended (a failed stream panics).
    pub async fn recv(&mut self) -> Option<Kind> {
        tokio::time::timeout(PATIENCE, self.from_agent.message())
            .await
            .expect("the agent sends or ends the stream")
            .expect("the stream ends with OK")
            .map(|message| message.kind.expect("every message has a kind"))
    }

    pub async fn send(&self, kind: gateway_message::Kind) {
        self.to_agent
            .send(message(kind))
            .await
            .expect("the request stream is open");
    }

    /// Reads the run to its end, denying the tools in `deny` with `plan_required`.
    pub async fn play(&mut self, deny: &[&str]) -> Vec<Kind> {
        let mut transcript = Vec::new();
        while let Some(kind) = self.recv().await {
            if let Kind::ToolRequest(request) = &kind {
                let allowed = !deny.contains(&request.tool.as_str());
                self.send(decision(&request.call_id, allowed)).await;
            }
            transcript.push(kind);
        }
        transcript
    }
}

pub fn start(input: &str, tools: &[&str]) -> Start {
    Start {
        run_id: uuid::Uuid::new_v4().to_string(),
        agent: "demo".into(),
        input: input.into(),
        tools: tools.iter().map(|&tool| tool.to_owned()).collect(),
        user_id: uuid::Uuid::new_v4().to_string(),
        plan: "free".into(),
        ..Start::default()
    }
}

pub fn decision(call_id: &str, allowed: bool) -> gateway_message::Kind {
    gateway_message::Kind::ToolDecision(ToolDecision {
        call_id: call_id.into(),
        allowed,
        code: if allowed { "" } else { "plan_required" }.into(),
        ..ToolDecision::default()
    })
}

fn message(kind: gateway_message::Kind) -> GatewayMessage {
    GatewayMessage { kind: Some(kind) }
}

/// A JWK Set served over HTTP from the test, with the key that signs its tokens.
pub struct Jwks {
    pub url: Url,
    pub key: SigningKey,
    shutdown: Shutdown,
}

impl Jwks {
    pub async fn serve() -> Self {
        let key = SigningKey::generate();
        let set = JwkSet {
            keys: vec![key.jwk().clone()],
        };
        let router = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let set = set.clone();
                async move { axum::Json(set) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("an address");
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.wait().await })
                .await
        });
        let url = format!("http://{addr}/.well-known/jwks.json")
            .parse()
            .expect("a URL");
        Self { url, key, shutdown }
    }

    /// A service token signed by the served key.
    pub fn token(&self, audience: &str, scope: &str) -> String {
        service_token(&self.key, audience, scope)
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A service token as auth-service issues it to the gateway.
pub fn service_token(key: &SigningKey, audience: &str, scope: &str) -> String {
    let now = unix_now();
    key.sign(&ServiceClaims {
        iss: "tollgate-auth".into(),
        sub: "ws-gateway".into(),
        aud: audience.into(),
        exp: now + 300,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: scope.into(),
    })
}

/// The concatenated deltas and the `completed` output.
pub fn deltas_and_output(transcript: &[Kind]) -> (String, String) {
    let deltas = transcript
        .iter()
        .filter_map(|kind| match kind {
            Kind::Delta(delta) => Some(delta.text.as_str()),
            _ => None,
        })
        .collect();
    let output = match transcript.last() {
        Some(Kind::Completed(completed)) => completed.output.clone(),
        other => panic!("the run ends with completed, not {other:?}"),
    };
    (deltas, output)
}
