//! Test support shared by every service's suite (feature `test-util`): a fresh database per
//! test on either backend, the backends themselves, and bounded polling instead of sleeps.

use std::time::Duration;

use uuid::Uuid;

/// Which storage and engine a test runs a service on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file and the in-process engine.
    Embedded,
    /// PostgreSQL and Redis (`TEST_DATABASE_URL`, `TEST_REDIS_URL`).
    PostgresRedis,
}

pub fn postgres_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh Redis key prefix, so tests sharing one Redis never see each other's keys.
pub fn redis_prefix() -> String {
    format!("test-{}", Uuid::new_v4().simple())
}

/// A database of its own for one test, dropped afterwards.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// Creates the database; panics with a clear message if PostgreSQL is not reachable, so a
    /// missing server fails the suite instead of skipping it.
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Embedded => {
                let dir = tempfile::tempdir().expect("a temp dir");
                let url = format!("sqlite://{}", dir.path().join("service.db").display());
                Self {
                    url,
                    postgres_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::PostgresRedis => {
                use sqlx::Connection;
                let name = format!("tollgate_test_{}", Uuid::new_v4().simple());
                let admin = postgres_url();
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|err| {
                        panic!("PostgreSQL at TEST_DATABASE_URL is required: {err}")
                    });
                // The name is a UUID of our own making, never input.
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create a test database");
                let base = admin
                    .rsplit_once('/')
                    .map_or(admin.as_str(), |(base, _)| base);
                Self {
                    url: format!("{base}/{name}"),
                    postgres_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop on a thread of its own: Drop cannot await, and the test's runtime is going away.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A gRPC request carrying `authorization: Bearer <token>`.
pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .expect("a token is valid metadata");
    request.metadata_mut().insert("authorization", value);
    request
}

/// The machine-readable reason of a failed call (`tollgate-reason` metadata), or "".
pub fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("tollgate-reason")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Polls `check` until it returns true or `deadline` passes.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generates one `#[tokio::test]` per backend for each listed `async fn(Backend)` in scope.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::testing::Backend::Embedded).await }
            )*
        }
        mod postgres_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::testing::Backend::PostgresRedis).await }
            )*
        }
    };
}

/// What a gRPC server's reflection says, asked in both protocol versions.
#[derive(Debug)]
pub struct Reflected {
    /// `ListServices` over `grpc.reflection.v1`, sorted.
    pub v1: Vec<String>,
    /// `ListServices` over `grpc.reflection.v1alpha`, sorted.
    pub v1alpha: Vec<String>,
    /// How many file descriptors `v1alpha` returns for the symbol asked about.
    pub v1alpha_files_for_symbol: usize,
}

/// Asks the reflection of the gRPC server at `address` for its services in both versions,
/// and `v1alpha` for the files that define `symbol` (what grpcurl and evans do before a call).
pub async fn reflect(address: std::net::SocketAddr, symbol: &str) -> Reflected {
    use tonic_reflection::pb::{v1, v1alpha};

    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .expect("a gRPC URL")
        .connect()
        .await
        .expect("the gRPC server accepts a connection");

    let list = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([list]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        answers
            .message()
            .await
            .expect("a v1 answer")
            .and_then(|answer| answer.message_response)
    else {
        panic!("reflection v1 did not list services");
    };
    let mut v1: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    v1.sort();

    use v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let requests = [
        AlphaRequest::ListServices(String::new()),
        AlphaRequest::FileContainingSymbol(symbol.to_owned()),
    ]
    .map(|request| v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    });
    let mut answers = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .expect("reflection v1alpha answers")
        .into_inner();
    let (mut v1alpha, mut v1alpha_files_for_symbol) = (Vec::new(), 0);
    while let Some(answer) = answers.message().await.expect("a v1alpha answer") {
        match answer.message_response {
            Some(AlphaResponse::ListServicesResponse(services)) => {
                v1alpha = services.service.into_iter().map(|s| s.name).collect();
            }
            Some(AlphaResponse::FileDescriptorResponse(files)) => {
                v1alpha_files_for_symbol = files.file_descriptor_proto.len();
            }
            other => panic!("unexpected v1alpha answer: {other:?}"),
        }
    }
    v1alpha.sort();
    Reflected {
        v1,
        v1alpha,
        v1alpha_files_for_symbol,
    }
}
