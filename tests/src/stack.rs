//! A whole Tollgate deployment for one test: one auth-service, one usage-service and N gateways,
//! each a real process, on a PostgreSQL database per service and a Redis key prefix, all fresh
//! for the test.
//!
//! The services are wired the way an operator wires them: auth-service knows its clients from
//! `AUTH_SERVICE_CLIENTS` (a fresh secret per cluster), the gateways present
//! `SERVICE_CLIENT_ID`/`SERVICE_CLIENT_SECRET`, and the test acts as further clients of its
//! own (`backend` publishes, `tester` validates tokens and reads usage, `billing` changes plans
//! and roles, `operator` rotates keys). PostgreSQL and Redis can sit behind a [`FaultProxy`]
//! each, shared by every service, and so can auth-service as the gateways reach it, so a test
//! can cut, delay or black-hole any of those links mid-flight.

use tollgate_shared::{
    fault_proxy::FaultProxy,
    testing::{Backend, TestDatabase, redis_prefix, redis_url},
};
use uuid::Uuid;

use crate::{binaries::Binary, otlp::TraceReceiver, process::Service};

/// Log filter of every service: enough to debug a failure, quiet about the libraries.
const RUST_LOG: &str = "info,h2=warn,hyper=warn,tower=warn,sqlx=warn,tonic=warn";

/// The clients auth-service knows, with their scopes (the secret is the cluster's).
const CLIENTS: [(&str, &str); 5] = [
    ("ws-gateway", "auth.validate+usage.check+agent.run"),
    ("backend", "publish"),
    ("tester", "auth.validate+usage.check+agent.run"),
    ("billing", "usage.admin+usage.check"),
    ("operator", "auth.admin"),
];

/// How a [`Cluster`] is made.
#[derive(Debug, Default)]
pub struct ClusterBuilder {
    gateways: usize,
    redis_proxy: bool,
    redis_url: Option<String>,
    postgres_proxy: bool,
    auth_proxy: bool,
    one_database: Option<Backend>,
    auth_env: Vec<(String, String)>,
    usage_env: Vec<(String, String)>,
    gateway_env: Vec<(String, String)>,
}

impl ClusterBuilder {
    /// How many gateways (default 1).
    pub fn gateways(mut self, count: usize) -> Self {
        self.gateways = count;
        self
    }

    /// Every service uses the Redis at `url` (a `redis+cluster://` URL, say) instead of
    /// `TEST_REDIS_URL`.
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = Some(url.to_owned());
        self
    }

    /// Every service reaches Redis through one [`FaultProxy`] (`Cluster::redis_proxy`).
    pub fn redis_behind_proxy(mut self) -> Self {
        self.redis_proxy = true;
        self
    }

    /// Every service reaches PostgreSQL through one [`FaultProxy`] (`Cluster::postgres_proxy`).
    pub fn postgres_behind_proxy(mut self) -> Self {
        self.postgres_proxy = true;
        self
    }

    /// The gateways reach auth-service through a [`FaultProxy`] (`Cluster::auth_proxy`), so a
    /// test can slow down or partition that one link.
    pub fn auth_behind_proxy(mut self) -> Self {
        self.auth_proxy = true;
        self
    }

    /// auth-service and usage-service share one database (PostgreSQL, or an SQLite file for
    /// [`Backend::Embedded`]) instead of one each.
    pub fn one_database(mut self, backend: Backend) -> Self {
        self.one_database = Some(backend);
        self
    }

    pub fn auth_env(mut self, variable: &str, value: &str) -> Self {
        self.auth_env.push((variable.into(), value.into()));
        self
    }

    pub fn usage_env(mut self, variable: &str, value: &str) -> Self {
        self.usage_env.push((variable.into(), value.into()));
        self
    }

    /// A variable of every gateway.
    pub fn gateway_env(mut self, variable: &str, value: &str) -> Self {
        self.gateway_env.push((variable.into(), value.into()));
        self
    }

    /// Every service exports its spans to `receiver`, promptly (a batch every 100 ms rather
    /// than every 5 s), so a test can wait for them.
    pub fn export_traces_to(self, receiver: &TraceReceiver) -> Self {
        let endpoint = receiver.endpoint();
        let mut builder = self;
        for (variable, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ] {
            builder = builder
                .auth_env(variable, value)
                .usage_env(variable, value)
                .gateway_env(variable, value);
        }
        builder
    }

    /// Creates the databases, starts auth-service, then usage-service and the gateways, and
    /// waits until every one of them is ready.
    pub async fn start(self) -> Cluster {
        let prefix = redis_prefix();
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        // The key-encryption key: two random UUIDs (244 random bits) as 64 bytes of key material.
        let key_encryption_keys = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
        );
        let databases = match self.one_database {
            Some(backend) => vec![TestDatabase::create(backend).await],
            None => {
                let (auth_db, usage_db) = tokio::join!(
                    TestDatabase::create(Backend::PostgresRedis),
                    TestDatabase::create(Backend::PostgresRedis)
                );
                vec![auth_db, usage_db]
            }
        };
        let (auth_db, usage_db) = (&databases[0], &databases[databases.len() - 1]);
        let (postgres_proxy, auth_db_url, usage_db_url) = if self.postgres_proxy {
            let (proxy, url) = FaultProxy::in_front_of(&auth_db.url)
                .await
                .expect("a proxy in front of PostgreSQL");
            let port = proxy.address().port();
            (Some(proxy), url, with_port(&usage_db.url, port))
        } else {
            (None, auth_db.url.clone(), usage_db.url.clone())
        };
        let redis = self.redis_url.clone().unwrap_or_else(redis_url);
        let (redis_proxy, redis) = if self.redis_proxy {
            let (proxy, url) = FaultProxy::in_front_of(&redis)
                .await
                .expect("a proxy in front of Redis");
            (Some(proxy), url)
        } else {
            (None, redis)
        };
        let common = |database: &str| {
            vars(&[
                ("DATABASE_URL", database),
                ("REDIS_URL", &redis),
                ("REDIS_PREFIX", &prefix),
                ("RUST_LOG", RUST_LOG),
            ])
        };
        let clients = CLIENTS
            .iter()
            .map(|(id, scopes)| format!("{id}:{secret}:{scopes}"))
            .collect::<Vec<_>>()
            .join(",");

        let mut auth_env = common(&auth_db_url);
        auth_env.extend(vars(&[
            ("AUTH_GRPC_ADDR", "127.0.0.1:0"),
            ("AUTH_HTTP_ADDR", "127.0.0.1:0"),
            ("AUTH_SERVICE_CLIENTS", &clients),
            ("AUTH_KEY_ENCRYPTION_KEYS", &key_encryption_keys),
            // Every test user registers from 127.0.0.1.
            ("AUTH_LOGIN_MAX_PER_ADDRESS", "100000"),
            ("AUTH_TOKEN_MAX_PER_ADDRESS", "100000"),
        ]));
        auth_env.extend(self.auth_env);
        let auth = Service::start(Binary::Auth, auth_env).await;
        auth.ready().await;

        let mut usage_env = common(&usage_db_url);
        usage_env.extend(vars(&[
            ("USAGE_GRPC_ADDR", "127.0.0.1:0"),
            ("USAGE_HTTP_ADDR", "127.0.0.1:0"),
            ("AUTH_SERVICE_URL", &auth.grpc_url()),
        ]));
        usage_env.extend(self.usage_env);

        let auth_proxy = if self.auth_proxy {
            let proxy = FaultProxy::start(auth.addr("grpc"))
                .await
                .expect("a proxy in front of auth-service");
            Some(proxy)
        } else {
            None
        };
        let auth_url = auth_proxy.as_ref().map_or_else(
            || auth.grpc_url(),
            |proxy| format!("http://{}", proxy.address()),
        );
        let mut gateway_env = vars(&[
            ("REDIS_URL", &redis),
            ("REDIS_PREFIX", &prefix),
            ("RUST_LOG", RUST_LOG),
            ("GATEWAY_ADDR", "127.0.0.1:0"),
            // As deployed: readiness and metrics on an internal listener of their own.
            ("GATEWAY_ADMIN_ADDR", "127.0.0.1:0"),
            ("AUTH_SERVICE_URL", &auth_url),
            ("SERVICE_CLIENT_ID", "ws-gateway"),
            ("SERVICE_CLIENT_SECRET", &secret),
        ]);
        let usage = Service::start(Binary::Usage, usage_env).await;
        gateway_env.push(("USAGE_SERVICE_URL".into(), usage.grpc_url()));
        gateway_env.extend(self.gateway_env);
        let gateways = futures::future::join_all(
            (0..self.gateways.max(1)).map(|_| Service::start(Binary::Gateway, gateway_env.clone())),
        )
        .await;
        usage.ready().await;
        for gateway in &gateways {
            gateway.ready().await;
        }
        let http = reqwest::Client::new();
        Cluster {
            auth,
            usage,
            gateways,
            redis_proxy,
            postgres_proxy,
            auth_proxy,
            prefix,
            secret,
            http,
            gateway_env,
            _databases: databases,
        }
    }
}

/// A running deployment; dropping it kills every process and drops the databases.
#[derive(Debug)]
pub struct Cluster {
    pub auth: Service,
    pub usage: Service,
    pub gateways: Vec<Service>,
    pub redis_proxy: Option<FaultProxy>,
    pub postgres_proxy: Option<FaultProxy>,
    /// Between the gateways and auth-service.
    pub auth_proxy: Option<FaultProxy>,
    /// The Redis key prefix every service of this cluster uses.
    pub prefix: String,
    /// The client secret shared by every client in `AUTH_SERVICE_CLIENTS`.
    pub(crate) secret: String,
    pub(crate) http: reqwest::Client,
    /// The environment every gateway started with.
    gateway_env: Vec<(String, String)>,
    // Dropped last, once the processes using them are gone.
    _databases: Vec<TestDatabase>,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// One auth-service, one usage-service and one gateway, with defaults.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// The first (or only) gateway.
    pub fn gateway(&self) -> &Service {
        &self.gateways[0]
    }

    pub fn redis_proxy(&self) -> &FaultProxy {
        self.redis_proxy
            .as_ref()
            .expect("the cluster was built with redis_behind_proxy()")
    }

    pub fn auth_proxy(&self) -> &FaultProxy {
        self.auth_proxy
            .as_ref()
            .expect("the cluster was built with auth_behind_proxy()")
    }

    /// The environment the gateways were started with (to start a variant by hand).
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        self.gateway_env.clone()
    }

    pub fn postgres_proxy(&self) -> &FaultProxy {
        self.postgres_proxy
            .as_ref()
            .expect("the cluster was built with postgres_behind_proxy()")
    }

    /// The client secret of every configured client, to check it never reaches a log.
    pub fn client_secret(&self) -> &str {
        &self.secret
    }
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

/// `url` with its port replaced.
fn with_port(url: &str, port: u16) -> String {
    let mut parsed = url::Url::parse(url).expect("a database URL");
    parsed.set_port(Some(port)).expect("a URL with a host");
    parsed.to_string()
}
