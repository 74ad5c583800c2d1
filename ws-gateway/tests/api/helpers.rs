//! Spawning the whole stack for a test: a real auth-service and usage-service, one or more
//! gateways on them, and a real WebSocket client.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::task::JoinHandle;
use tollgate_proto::{
    auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
    usage::v1::{self as usage_pb, usage_service_client::UsageServiceClient},
};
pub use tollgate_shared::{
    fault_proxy::FaultProxy,
    testing::{Backend, TestDatabase, eventually, redis_prefix, redis_url, with_bearer},
};
use tollgate_shared::{
    grpc::TracedChannel, shutdown::Shutdown, time::unix_now, tokens::AccessClaims,
};
use uuid::Uuid;
use ws_gateway::{Application, Config};

pub use tollgate_integration::client::{
    NotConnected, Present, Received, Refused, WsClient, streamed,
};

pub const SECRET: &str = "gateway-test-secret-0123456789abcdef";
pub const PASSWORD: &str = "correct horse battery staple";
/// How long a test waits for any one thing before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// auth-service and usage-service, shared by every gateway of a test.
pub struct Services {
    pub backend: Backend,
    pub redis_prefix: String,
    pub auth_grpc: SocketAddr,
    pub auth_channel: TracedChannel,
    pub auth: Arc<auth_service::auth::Auth>,
    pub auth_config: auth_service::Config,
    pub usage_grpc: SocketAddr,
    usage_channel: TracedChannel,
    shutdowns: Vec<Shutdown>,
    _databases: Vec<TestDatabase>,
}

impl Drop for Services {
    fn drop(&mut self) {
        for shutdown in &self.shutdowns {
            shutdown.trigger();
        }
    }
}

impl Services {
    pub async fn spawn(backend: Backend) -> Arc<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(
        backend: Backend,
        tweak_auth: impl FnOnce(&mut auth_service::Config),
    ) -> Arc<Self> {
        tollgate_shared::telemetry::init_for_tests();
        let prefix = redis_prefix();
        let auth_db = TestDatabase::create(backend).await;
        let mut auth_config = auth_service::Config::for_tests(&auth_db.url);
        auth_config.service_clients = auth_service::clients::ClientRegistry::parse(&format!(
            "ws-gateway:{SECRET}:auth.validate+usage.check+agent.run,backend:{SECRET}:publish,\
             outsider:{SECRET}:usage.check,admin:{SECRET}:usage.admin+usage.check"
        ))
        .unwrap();
        if backend == Backend::PostgresRedis {
            auth_config.redis_url = Some(redis_url().into());
            auth_config.redis_prefix = prefix.clone();
        }
        tweak_auth(&mut auth_config);
        let auth_shutdown = Shutdown::new();
        let auth_app = auth_service::Application::build(auth_config.clone(), auth_shutdown.clone())
            .await
            .expect("auth-service builds");
        let (auth_grpc, auth) = (auth_app.grpc_addr(), auth_app.auth());
        tokio::spawn(auth_app.run_until_stopped());

        let usage_db = TestDatabase::create(backend).await;
        let mut usage_config =
            usage_service::Config::for_tests(&usage_db.url, &format!("http://{auth_grpc}"));
        if backend == Backend::PostgresRedis {
            usage_config.redis_url = Some(redis_url().into());
            usage_config.redis_prefix = prefix.clone();
        }
        let usage_shutdown = Shutdown::new();
        let usage_app = usage_service::Application::build(usage_config, usage_shutdown.clone())
            .await
            .expect("usage-service builds");
        let (usage_grpc, usage_http) = (usage_app.grpc_addr(), usage_app.http_addr());
        tokio::spawn(usage_app.run_until_stopped());
        assert!(
            eventually(PATIENCE, || is_ready(usage_http)).await,
            "usage-service never became ready"
        );
        Arc::new(Self {
            backend,
            redis_prefix: prefix,
            auth_grpc,
            auth_channel: channel(auth_grpc),
            auth,
            auth_config,
            usage_grpc,
            usage_channel: channel(usage_grpc),
            shutdowns: vec![auth_shutdown, usage_shutdown],
            _databases: vec![auth_db, usage_db],
        })
    }

    pub fn auth_url(&self) -> String {
        format!("http://{}", self.auth_grpc)
    }

    pub fn usage_url(&self) -> String {
        format!("http://{}", self.usage_grpc)
    }

    /// A gateway configuration for these services (Redis shared on that backend).
    pub fn gateway_config(&self) -> Config {
        let mut config = Config::for_tests(&self.auth_url(), &self.usage_url());
        config.service_client_secret = SECRET.to_owned().into();
        if self.backend == Backend::PostgresRedis {
            config.redis_url = Some(redis_url().into());
            config.redis_prefix = self.redis_prefix.clone();
        }
        config
    }

    fn auth_client(&self) -> AuthServiceClient<TracedChannel> {
        AuthServiceClient::new(self.auth_channel.clone())
    }

    /// Registers a fresh user.
    pub async fn register(&self) -> auth_pb::TokenPair {
        self.register_email().await.1
    }

    /// Registers a fresh user; also answers the email, to log in again.
    pub async fn register_email(&self) -> (String, auth_pb::TokenPair) {
        let email = format!("user-{}@example.com", Uuid::new_v4().simple());
        let pair = self
            .auth_client()
            .register(auth_pb::RegisterRequest {
                email: email.clone(),
                password: PASSWORD.into(),
            })
            .await
            .expect("registration succeeds")
            .into_inner();
        (email, pair)
    }

    /// A new session of the user.
    pub async fn login(&self, email: &str) -> auth_pb::TokenPair {
        self.auth_client()
            .login(auth_pb::LoginRequest {
                email: email.into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("login succeeds")
            .into_inner()
    }

    /// A new access token of the same session.
    pub async fn refresh(&self, refresh_token: &str) -> auth_pb::TokenPair {
        self.auth_client()
            .refresh(auth_pb::RefreshRequest {
                refresh_token: refresh_token.into(),
            })
            .await
            .expect("refresh succeeds")
            .into_inner()
    }

    pub async fn logout(&self, refresh_token: &str) {
        self.auth_client()
            .logout(auth_pb::LogoutRequest {
                refresh_token: refresh_token.into(),
            })
            .await
            .expect("logout succeeds");
    }

    pub async fn service_token(&self, client_id: &str, audience: &str, scopes: &[&str]) -> String {
        self.auth_client()
            .issue_service_token(auth_pb::IssueServiceTokenRequest {
                client_id: client_id.into(),
                client_secret: SECRET.into(),
                audience: audience.into(),
                scopes: scopes.iter().map(ToString::to_string).collect(),
            })
            .await
            .expect("a service token")
            .into_inner()
            .access_token
    }

    /// auth-service's `ValidateToken` answer for `token`, asked with `service_token`.
    pub async fn validate(
        &self,
        service_token: &str,
        token: &str,
    ) -> Result<auth_pb::ValidateTokenResponse, tonic::Status> {
        let request = auth_pb::ValidateTokenRequest {
            token: token.into(),
        };
        self.auth_client()
            .validate_token(with_bearer(request, service_token))
            .await
            .map(tonic::Response::into_inner)
    }

    /// A token for `pair`'s user and session, signed with the active key, expiring in
    /// `ttl_secs` (negative: already expired).
    pub fn mint(&self, pair: &auth_pb::TokenPair, ttl_secs: i64) -> String {
        let now = unix_now();
        let issued = now.min(now + ttl_secs - 60);
        let claims = AccessClaims {
            iss: self.auth_config.issuer.clone(),
            sub: pair.user_id.parse().unwrap(),
            aud: self.auth_config.audience.clone(),
            exp: now + ttl_secs,
            iat: issued,
            nbf: issued,
            jti: Uuid::new_v4().to_string(),
            sid: pair.session_id.parse().unwrap(),
        };
        self.auth.keys().signer().sign(&claims)
    }

    /// How much of `meter` the user was billed for this period, from usage-service's ledger.
    pub async fn used(&self, user_id: &str, meter: &str) -> u64 {
        let reader = self
            .service_token("admin", "usage-service", &["usage.check"])
            .await;
        let request = with_bearer(
            usage_pb::GetUsageRequest {
                user_id: user_id.into(),
                at: 0,
            },
            &reader,
        );
        UsageServiceClient::new(self.usage_channel.clone())
            .get_usage(request)
            .await
            .expect("GetUsage answers")
            .into_inner()
            .meters
            .iter()
            .find(|used| used.meter == meter)
            .map_or(0, |used| used.used)
    }

    pub async fn change_plan(&self, user_id: &str, plan: &str) {
        let admin = self
            .service_token("admin", "usage-service", &["usage.admin"])
            .await;
        let request = with_bearer(
            usage_pb::ChangePlanRequest {
                user_id: user_id.into(),
                plan_id: plan.into(),
                immediate: true,
                idempotency_key: Uuid::new_v4().simple().to_string(),
                reason: "test".into(),
            },
            &admin,
        );
        UsageServiceClient::new(self.usage_channel.clone())
            .change_plan(request)
            .await
            .expect("plan changed");
    }
}

fn channel(addr: SocketAddr) -> TracedChannel {
    tollgate_shared::grpc::channel(&format!("http://{addr}"), Duration::from_secs(30)).unwrap()
}

async fn is_ready(addr: SocketAddr) -> bool {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .is_ok_and(|response| response.status() == 200)
}

/// A running gateway. Dropping it shuts it down.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The internal listener, with `GATEWAY_ADMIN_ADDR`.
    pub admin: Option<SocketAddr>,
    shutdown: Shutdown,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl Gateway {
    /// Starts a gateway and waits until it reports ready.
    pub async fn start(config: Config) -> Self {
        let demo = std::sync::Arc::new(
            demo_agent::DemoAgent::new().with_think_delay(config.agent_think_delay),
        );
        Self::start_with_agent(config, demo).await
    }

    /// Starts a gateway whose `builtin` agent is `agent`.
    pub async fn start_with_agent(
        config: Config,
        agent: std::sync::Arc<dyn ws_gateway::agent::LocalAgent>,
    ) -> Self {
        let shutdown = Shutdown::new();
        let app = Application::build_with_agent(config, shutdown.clone(), agent)
            .await
            .expect("the gateway builds");
        let (addr, admin) = (app.addr(), app.admin_addr());
        let server = tokio::spawn(app.run_until_stopped());
        assert!(
            eventually(PATIENCE, || is_ready(admin.unwrap_or(addr))).await,
            "the gateway never became ready"
        );
        Self {
            addr,
            admin,
            shutdown,
            server: Some(server),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the internal listener if there is one, else on the public one.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.unwrap_or(self.addr))
    }

    /// Fires the shutdown signal (what SIGTERM does in `main`).
    pub fn trigger_shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Waits for `run_until_stopped` to return.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        match self.server.take() {
            Some(server) => server.await.expect("the server task"),
            None => Ok(()),
        }
    }

    /// Waits until the gateway follows auth-service's revocation stream.
    pub async fn watching_revocations(&self) {
        assert!(
            eventually(PATIENCE, || async {
                self.metric("tollgate_gateway_revocation_watch_up").await == 1.0
            })
            .await,
            "the gateway never started watching revocations"
        );
    }

    /// Opens a WebSocket presenting the token as asked.
    pub async fn connect(&self, token: Present<'_>) -> Result<WsClient, Refused> {
        self.connect_to("/ws", token).await
    }

    pub async fn connect_to(&self, path: &str, token: Present<'_>) -> Result<WsClient, Refused> {
        match WsClient::attempt_path(self.addr, path, None, token).await {
            Ok(client) => Ok(client),
            Err(NotConnected::Refused(refused)) => Err(refused),
            Err(NotConnected::Transport(err)) => panic!("the WebSocket handshake failed: {err}"),
        }
    }

    /// Connects with the token in the header and reads `connected`.
    pub async fn connected(&self, token: &str) -> (WsClient, Value) {
        let mut client = self
            .connect(Present::Header(token))
            .await
            .unwrap_or_else(|refused| panic!("connection refused: {refused:?}"));
        let connected = client.expect("connected").await;
        (client, connected)
    }

    pub async fn publish(&self, token: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url("/v1/publish"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("the publish request")
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        tollgate_integration::scrape::series_value(&self.metrics().await, series)
    }
}
