//! Spawning usage-service (and the auth-service it trusts) for a test.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;
use tollgate_proto::{
    auth::v1::{IssueServiceTokenRequest, auth_service_client::AuthServiceClient},
    usage::v1::{self as pb, usage_service_client::UsageServiceClient},
};
pub use tollgate_shared::testing::{
    Backend, TestDatabase, eventually, reason, redis_prefix, redis_url, with_bearer,
};
use tollgate_shared::{fault_proxy::FaultProxy, grpc::TracedChannel, shutdown::Shutdown};
use tonic::{Request, Status};
use usage_service::{Application, Config, config::RedisDownMode, usage::Usage};
use uuid::Uuid;

pub const SECRET: &str = "usage-test-secret-0123456789abcdef";

/// A running auth-service that issues the service tokens.
pub struct Auth {
    pub url: String,
    shutdown: Shutdown,
    _database: TestDatabase,
}

impl Drop for Auth {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl Auth {
    pub async fn spawn(backend: Backend) -> Arc<Self> {
        let database = TestDatabase::create(backend).await;
        let mut config = auth_service::Config::for_tests(&database.url);
        config.service_clients = auth_service::clients::ClientRegistry::parse(&format!(
            "gateway:{SECRET}:usage.check,admin:{SECRET}:usage.admin+usage.check,outsider:{SECRET}:publish"
        ))
        .unwrap();
        let shutdown = Shutdown::new();
        let app = auth_service::Application::build(config, shutdown.clone())
            .await
            .unwrap();
        let url = format!("http://{}", app.grpc_addr());
        tokio::spawn(app.run_until_stopped());
        Arc::new(Self {
            url,
            shutdown,
            _database: database,
        })
    }

    pub async fn token(&self, client_id: &str, audience: &str) -> String {
        let channel = tollgate_shared::grpc::channel(&self.url, Duration::from_secs(10)).unwrap();
        let request = IssueServiceTokenRequest {
            client_id: client_id.into(),
            client_secret: SECRET.into(),
            audience: audience.into(),
            scopes: vec![],
        };
        AuthServiceClient::new(channel)
            .issue_service_token(request)
            .await
            .unwrap()
            .into_inner()
            .access_token
    }
}

/// usage-service on PostgreSQL, reaching Redis through a fault proxy, in `mode` while Redis is
/// cut off.
pub async fn with_redis_behind(mode: RedisDownMode) -> (FaultProxy, TestApp) {
    let auth = Auth::spawn(Backend::PostgresRedis).await;
    let database = Arc::new(TestDatabase::create(Backend::PostgresRedis).await);
    let (proxy, url) = FaultProxy::in_front_of(&redis_url()).await.unwrap();
    let mut config = config(Backend::PostgresRedis, &database, &auth);
    config.redis_url = Some(url.into());
    config.redis_down_mode = mode;
    (proxy, TestApp::start(config, database, auth).await)
}

/// A running usage-service with clients for it.
pub struct TestApp {
    pub channel: TracedChannel,
    pub config: Config,
    pub database: Arc<TestDatabase>,
    pub auth: Arc<Auth>,
    pub usage: Arc<Usage>,
    pub http_base: String,
    pub grpc_addr: std::net::SocketAddr,
    pub gateway_token: String,
    pub admin_token: String,
    shutdown: Shutdown,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub fn config(backend: Backend, database: &TestDatabase, auth: &Auth) -> Config {
    let mut config = Config::for_tests(&database.url, &auth.url);
    if backend == Backend::PostgresRedis {
        config.redis_url = Some(redis_url().into());
        config.redis_prefix = redis_prefix();
    }
    config
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Self {
        let auth = Auth::spawn(backend).await;
        let database = Arc::new(TestDatabase::create(backend).await);
        let mut config = config(backend, &database, &auth);
        tweak(&mut config);
        Self::start(config, database, auth).await
    }

    /// Starts usage-service on an existing database and auth-service (a restart or a replica).
    pub async fn start(config: Config, database: Arc<TestDatabase>, auth: Arc<Auth>) -> Self {
        tollgate_shared::telemetry::init_for_tests();
        let shutdown = Shutdown::new();
        let app = Application::build(config.clone(), shutdown.clone())
            .await
            .expect("usage-service builds");
        let (grpc_addr, http_addr, usage) = (app.grpc_addr(), app.http_addr(), app.usage());
        let server = tokio::spawn(app.run_until_stopped());
        let channel =
            tollgate_shared::grpc::channel(&format!("http://{grpc_addr}"), Duration::from_secs(30))
                .unwrap();
        // Like a load balancer, send nothing before the service says it is ready.
        let ready = eventually(Duration::from_secs(20), || async {
            app_is_ready(&format!("http://{http_addr}/readyz")).await
        })
        .await;
        assert!(ready, "usage-service never became ready");
        let gateway_token = auth.token("gateway", "usage-service").await;
        let admin_token = auth.token("admin", "usage-service").await;
        Self {
            channel,
            config,
            database,
            auth,
            usage,
            http_base: format!("http://{http_addr}"),
            grpc_addr,
            gateway_token,
            admin_token,
            shutdown,
            server: Some(server),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    pub fn client(&self) -> UsageServiceClient<TracedChannel> {
        UsageServiceClient::new(self.channel.clone())
    }

    /// A request carrying the gateway's service token (`usage.check`).
    pub fn check<T>(&self, message: T) -> Request<T> {
        with_bearer(message, &self.gateway_token)
    }

    /// A request carrying an admin service token (`usage.admin`).
    pub fn admin<T>(&self, message: T) -> Request<T> {
        with_bearer(message, &self.admin_token)
    }

    pub async fn consume(
        &self,
        user: &str,
        meter: &str,
        amount: u64,
        key: &str,
    ) -> Result<pb::ConsumeResponse, Status> {
        let request = pb::ConsumeRequest {
            user_id: user.into(),
            meter: meter.into(),
            amount,
            idempotency_key: key.into(),
        };
        self.client()
            .consume(self.check(request))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn refund(
        &self,
        user: &str,
        meter: &str,
        amount: u64,
        key: &str,
    ) -> Result<bool, Status> {
        self.refund_keeping(user, meter, (amount, 0), key).await
    }

    /// Gives back `amount` less the `keep` spent.
    pub async fn refund_keeping(
        &self,
        user: &str,
        meter: &str,
        (amount, keep): (u64, u64),
        key: &str,
    ) -> Result<bool, Status> {
        let request = pb::RefundRequest {
            user_id: user.into(),
            meter: meter.into(),
            amount,
            idempotency_key: key.into(),
            keep,
        };
        self.client()
            .refund(self.check(request))
            .await
            .map(|answer| answer.into_inner().refunded)
    }

    pub async fn authorize(
        &self,
        user: &str,
        action: &str,
    ) -> Result<pb::AuthorizeResponse, Status> {
        let request = pb::AuthorizeRequest {
            user_id: user.into(),
            action: action.into(),
        };
        self.client()
            .authorize(self.check(request))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn change_plan(
        &self,
        user: &str,
        plan: &str,
        immediate: bool,
        key: &str,
    ) -> Result<pb::ChangePlanResponse, Status> {
        let request = pb::ChangePlanRequest {
            user_id: user.into(),
            plan_id: plan.into(),
            immediate,
            idempotency_key: key.into(),
            reason: "test".into(),
        };
        self.client()
            .change_plan(self.admin(request))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn usage_of(&self, user: &str) -> pb::GetUsageResponse {
        let request = pb::GetUsageRequest {
            user_id: user.into(),
            at: 0,
        };
        self.client()
            .get_usage(self.check(request))
            .await
            .unwrap()
            .into_inner()
    }
}

async fn app_is_ready(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let Some((host, path)) = address.split_once('/') else {
        return false;
    };
    let Ok(mut stream) = tokio::net::TcpStream::connect(host).await else {
        return false;
    };
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response.starts_with("HTTP/1.1 200")
}

pub fn new_user() -> String {
    Uuid::new_v4().to_string()
}

pub fn key() -> String {
    Uuid::new_v4().simple().to_string()
}

#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: tonic::Code,
    expected: &str,
) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected, "{status:?}");
}

pub fn used(usage: &pb::GetUsageResponse, meter: &str) -> u64 {
    usage
        .meters
        .iter()
        .find(|m| m.meter == meter)
        .map_or(0, |m| m.used)
}

/// Consumes `amount` of `meter`, which must be allowed.
pub async fn spend(app: &TestApp, user: &str, meter: &str, amount: u64) {
    let answer = app.consume(user, meter, amount, &key()).await.unwrap();
    assert!(answer.allowed, "{answer:?}");
}

/// How many of `tries` one-unit consumes of `meter` are allowed.
pub async fn allowed_of(app: &TestApp, user: &str, meter: &str, tries: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..tries {
        allowed += usize::from(app.consume(user, meter, 1, &key()).await.unwrap().allowed);
    }
    allowed
}
