//! Spawning the real application for a test, on a fresh database, and a helper per RPC.

use std::{sync::Arc, time::Duration};

use auth_service::{Application, Config, auth::Auth, clients::ClientRegistry};
use tokio::task::JoinHandle;
use tollgate_proto::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use tollgate_shared::{
    grpc::TracedChannel, shutdown::Shutdown, time::unix_now, tokens::AccessClaims,
};
use tonic::{Code, Status};
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery staple";
pub const CLIENT_SECRET: &str = "test-client-secret-0123456789abcdef";

pub use tollgate_shared::testing::{
    Backend, TestDatabase, eventually, reason, redis_prefix, redis_url, with_bearer,
};

/// The configuration a test starts from.
pub fn config(backend: Backend, database: &TestDatabase) -> Config {
    let mut config = Config::for_tests(&database.url);
    config.service_clients = ClientRegistry::parse(&format!(
        "gateway:{CLIENT_SECRET}:auth.validate+usage.check,admin:{CLIENT_SECRET}:auth.admin,backend:{CLIENT_SECRET}:publish"
    ))
    .expect("valid clients");
    if backend == Backend::PostgresRedis {
        config.redis_url = Some(redis_url().into());
        config.redis_prefix = redis_prefix();
    }
    config
}

/// A running application and clients for it. Dropping it shuts the application down.
pub struct TestApp {
    pub grpc: AuthServiceClient<TracedChannel>,
    pub channel: TracedChannel,
    pub http: reqwest::Client,
    pub http_base: String,
    pub grpc_addr: std::net::SocketAddr,
    pub auth: Arc<Auth>,
    pub config: Config,
    pub database: Arc<TestDatabase>,
    shutdown: Shutdown,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let database = Arc::new(TestDatabase::create(backend).await);
        let mut config = config(backend, &database);
        tweak(&mut config);
        Self::start(config, database).await
    }

    /// Starts an application on an existing database (a restart, or a second replica).
    pub async fn start(config: Config, database: Arc<TestDatabase>) -> Self {
        tollgate_shared::telemetry::init_for_tests();
        let shutdown = Shutdown::new();
        let app = Application::build(config.clone(), shutdown.clone())
            .await
            .expect("application builds");
        let (grpc_addr, http_addr, auth) = (app.grpc_addr(), app.http_addr(), app.auth());
        let server = tokio::spawn(app.run_until_stopped());
        let channel =
            tollgate_shared::grpc::channel(&format!("http://{grpc_addr}"), Duration::from_secs(30))
                .expect("channel");
        Self {
            grpc: AuthServiceClient::new(channel.clone()),
            channel,
            http: reqwest::Client::new(),
            http_base: format!("http://{http_addr}"),
            grpc_addr,
            auth,
            config,
            database,
            shutdown,
            server: Some(server),
        }
    }

    /// Stops the application and waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server exits cleanly");
        }
    }

    pub fn client(&self) -> AuthServiceClient<TracedChannel> {
        self.grpc.clone()
    }

    pub async fn register(&self, email: &str, password: &str) -> Result<pb::TokenPair, Status> {
        let request = pb::RegisterRequest {
            email: email.into(),
            password: password.into(),
        };
        self.client()
            .register(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Registers a fresh user with the standard password.
    pub async fn new_user(&self) -> pb::TokenPair {
        self.register(&unique_email(), PASSWORD)
            .await
            .expect("registration succeeds")
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<pb::TokenPair, Status> {
        let request = pb::LoginRequest {
            email: email.into(),
            password: password.into(),
        };
        self.client()
            .login(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<pb::TokenPair, Status> {
        let request = pb::RefreshRequest {
            refresh_token: refresh_token.into(),
        };
        self.client()
            .refresh(request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn service_token(
        &self,
        client_id: &str,
        audience: &str,
        scopes: &[&str],
    ) -> Result<String, Status> {
        let request = pb::IssueServiceTokenRequest {
            client_id: client_id.into(),
            client_secret: CLIENT_SECRET.into(),
            audience: audience.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        };
        Ok(self
            .client()
            .issue_service_token(request)
            .await?
            .into_inner()
            .access_token)
    }

    /// `ValidateToken` as the gateway would call it.
    pub async fn validate(&self, token: &str) -> Result<pb::ValidateTokenResponse, Status> {
        let service = self
            .service_token("gateway", "auth-service", &["auth.validate"])
            .await?;
        let request = with_bearer(
            pb::ValidateTokenRequest {
                token: token.into(),
            },
            &service,
        );
        self.client()
            .validate_token(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Signs arbitrary claims with the active key, for hostile-token tests.
    pub fn mint(&self, claims: &AccessClaims) -> String {
        self.auth.keys().signer().sign(claims)
    }

    /// Valid claims for a user and session, as the service would issue them.
    pub fn claims_for(&self, user_id: &str, session_id: &str) -> AccessClaims {
        let now = unix_now();
        AccessClaims {
            iss: self.config.issuer.clone(),
            sub: user_id.parse().expect("uuid"),
            aud: self.config.audience.clone(),
            exp: now + 600,
            iat: now,
            nbf: now,
            jti: Uuid::new_v4().to_string(),
            sid: session_id.parse().expect("uuid"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http_base)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// An HTTP client whose connections come from `source`, a loopback address other than
/// 127.0.0.1, so one test can be several clients.
pub fn http_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<std::net::IpAddr>().expect("an address"))
        .build()
        .expect("an HTTP client")
}

/// The `Retry-After` of a response, in seconds.
#[track_caller]
pub fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds")
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", Uuid::new_v4().simple())
}

/// Asserts a call failed with `code` and `reason`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    expected_reason: &str,
) -> Status {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "unexpected code for {status:?}");
    assert_eq!(
        reason(&status),
        expected_reason,
        "unexpected reason for {status:?}"
    );
    status
}
