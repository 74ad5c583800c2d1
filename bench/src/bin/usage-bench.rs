//! `usage-bench`: usage-service's hot paths against same-run baselines (see `BENCHMARKS.md`).
//!
//! `Consume` over gRPC (GCRA rate limit on Redis, idempotency record, group-committed ledger
//! row in PostgreSQL) against raw Redis `INCR` round trips at the same concurrency, and
//! `Authorize` answered from the decision cache against gRPC health on the same server.
//! Everything runs on loopback for a fixed time and stops by itself; nothing is asserted.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use tollgate_bench::{
    cli::DatabaseKind,
    cores,
    database::Database,
    load::{Calls, Measurement, Plan, Timing},
    random_alphanumeric, random_lowercase,
};
use tollgate_proto::{
    auth::v1::{IssueServiceTokenRequest, auth_service_client::AuthServiceClient},
    usage::v1::{AuthorizeRequest, ConsumeRequest, usage_service_client::UsageServiceClient},
};
use tollgate_shared::shutdown::Shutdown;
use tonic::{metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
const REDIS: &str = "redis://127.0.0.1:6379";
const CONCURRENCY: usize = 64;
/// Limits high enough that every Consume is allowed, so the full path (rate check, idempotency
/// record, ledger row) is what is measured.
const PLANS: &str = r#"
[[plans]]
id = "free"
max_connections = 100
messages_per_minute = 4000000000
agent_runs_per_month = 1000000000000
tool_calls_per_day = 1000000000000
tools = ["search", "calculator"]
"#;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("usage-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("usage-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Both services on a runtime of their own, as separate processes would be.
struct Services {
    auth: String,
    usage: String,
    shutdown: Shutdown,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

async fn start(
    auth_db: String,
    usage_db: String,
    secret: String,
    plans: std::path::PathBuf,
) -> anyhow::Result<Services> {
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let (ready, addresses) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores())
        .thread_name("services")
        .enable_all()
        .build()?;
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            let prefix = format!("tollgate-bench-{}", random_lowercase(12));
            let mut auth_config = auth_service::Config::for_tests(&auth_db);
            auth_config.service_clients = auth_service::clients::ClientRegistry::parse(&format!(
                "bench:{secret}:usage.check"
            ))
            .map_err(anyhow::Error::msg)?;
            auth_config.redis_url = Some(REDIS.to_owned().into());
            auth_config.redis_prefix = prefix.clone();
            let auth = auth_service::Application::build(auth_config, stop.clone()).await?;
            let auth_url = format!("http://{}", auth.grpc_addr());
            let mut usage_config = usage_service::Config::for_tests(&usage_db, &auth_url);
            usage_config.redis_url = Some(REDIS.to_owned().into());
            usage_config.redis_prefix = prefix;
            usage_config.plans_file = Some(plans);
            usage_config.database_max_connections = 16;
            let usage = usage_service::Application::build(usage_config, stop.clone()).await?;
            let _ = ready.send((auth_url, format!("http://{}", usage.grpc_addr())));
            let (auth, usage) = tokio::join!(auth.run_until_stopped(), usage.run_until_stopped());
            auth.and(usage)
        })
    });
    let (auth, usage) = addresses.await.context("the services did not start")?;
    Ok(Services {
        auth,
        usage,
        shutdown,
        thread,
    })
}

async fn run() -> anyhow::Result<()> {
    let auth_db = Database::create(DatabaseKind::Postgres, POSTGRES).await?;
    let usage_db = Database::create(DatabaseKind::Postgres, POSTGRES).await?;
    let plans = tempfile::NamedTempFile::new()?;
    std::fs::write(plans.path(), PLANS)?;
    let secret = random_alphanumeric(32);
    let services = start(
        auth_db.url(),
        usage_db.url(),
        secret.clone(),
        plans.path().to_owned(),
    )
    .await?;
    let result = measure(&services, &secret).await;
    services.shutdown.trigger();
    let _ = tokio::task::spawn_blocking(move || services.thread.join()).await;
    auth_db.remove().await?;
    usage_db.remove().await?;
    result
}

async fn measure(services: &Services, secret: &str) -> anyhow::Result<()> {
    let auth = Channel::from_shared(services.auth.clone())?
        .connect()
        .await?;
    let request = IssueServiceTokenRequest {
        client_id: "bench".into(),
        client_secret: secret.into(),
        audience: "usage-service".into(),
        scopes: vec![],
    };
    let token = AuthServiceClient::new(auth)
        .issue_service_token(request)
        .await?
        .into_inner()
        .access_token;
    let header: MetadataValue<_> = format!("Bearer {token}").parse()?;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            Channel::from_shared(services.usage.clone())?
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(10))
                .connect()
                .await?,
        );
    }
    // Wait for readiness: the first call that verifies is the sign.
    let users: Vec<String> = (0..CONCURRENCY).map(|_| uuid_v4()).collect();
    for user in &users {
        let mut request = tonic::Request::new(AuthorizeRequest {
            user_id: user.clone(),
            action: "tool:search".into(),
        });
        request
            .metadata_mut()
            .insert("authorization", header.clone());
        let mut client = UsageServiceClient::new(channels[0].clone());
        let mut attempts = 0;
        while client.authorize(clone_request(&request)).await.is_err() {
            attempts += 1;
            anyhow::ensure!(attempts < 100, "usage-service never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let plan = Plan {
        warmup: Duration::from_secs(1),
        slice: Timing {
            settle: Duration::from_millis(250),
            measure: Duration::from_secs(1),
        },
        rounds: 5,
    };

    let redis = redis::Client::open(REDIS)?;
    let mut connections = Vec::new();
    for index in 0..CONCURRENCY {
        connections.push((
            redis.get_multiplexed_async_connection().await?,
            format!("tollgate-bench-incr-{}-{index}", random_lowercase(8)),
        ));
    }
    let mut incr = Calls::new(
        connections,
        |(mut conn, key): (redis::aio::MultiplexedConnection, String)| async move {
            let result: redis::RedisResult<i64> =
                redis::cmd("INCR").arg(&key).query_async(&mut conn).await;
            (
                (conn, key),
                result
                    .map(|_| ())
                    .map_err(|err| tonic::Status::internal(err.to_string())),
            )
        },
    );
    let consume_states: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            (
                UsageServiceClient::new(channels[i % 4].clone()),
                user.clone(),
                header.clone(),
            )
        })
        .collect();
    let mut consume = Calls::new(
        consume_states,
        |(mut client, user, header): Caller| async move {
            let mut request = tonic::Request::new(ConsumeRequest {
                user_id: user.clone(),
                meter: "messages".into(),
                amount: 1,
                idempotency_key: random_lowercase(24),
            });
            request
                .metadata_mut()
                .insert("authorization", header.clone());
            let result = match client.consume(request).await {
                Ok(answer) if answer.get_ref().allowed => Ok(()),
                Ok(_) => Err(tonic::Status::resource_exhausted("denied")),
                Err(status) => Err(status),
            };
            ((client, user, header), result)
        },
    );
    let (incr_result, consume_result) = plan.against(&mut incr, &mut consume).await;

    let health_states: Vec<_> = (0..CONCURRENCY)
        .map(|i| HealthClient::new(channels[i % 4].clone()))
        .collect();
    let mut health = Calls::new(
        health_states,
        |mut client: HealthClient<Channel>| async move {
            let result = client
                .check(HealthCheckRequest {
                    service: "tollgate.usage.v1.UsageService".into(),
                })
                .await
                .map(|_| ());
            (client, result)
        },
    );
    let authorize_states: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            (
                UsageServiceClient::new(channels[i % 4].clone()),
                user.clone(),
                header.clone(),
            )
        })
        .collect();
    let mut authorize = Calls::new(authorize_states.clone(), authorize_call);
    let (health_result, authorize_result) = plan.against(&mut health, &mut authorize).await;
    let mut authorize_few = Calls::new(
        authorize_states.into_iter().take(8).collect(),
        authorize_call,
    );
    let authorize_8 = plan.alone(&mut authorize_few).await;

    println!("| Phase | Callers | ops/s | p50 | p99 | Errors | Relative | Target |");
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    row("Redis INCR (raw)", &incr_result, "baseline".into(), "—");
    row(
        "Consume",
        &consume_result,
        format!(
            "{:.2} × INCR",
            consume_result.ops_per_sec() / incr_result.ops_per_sec()
        ),
        "≥ 0.4 × INCR, p99 < 5 ms",
    );
    row("Health/Check", &health_result, "baseline".into(), "—");
    row(
        "Authorize (cached)",
        &authorize_result,
        format!(
            "{:.2} × health",
            authorize_result.ops_per_sec() / health_result.ops_per_sec()
        ),
        "p99 < 1 ms",
    );
    row("Authorize (cached)", &authorize_8, "—".into(), "p99 < 1 ms");
    Ok(())
}

/// A caller of usage-service: its client, its user and its service token header.
type Caller = (
    UsageServiceClient<Channel>,
    String,
    MetadataValue<tonic::metadata::Ascii>,
);

async fn authorize_call((mut client, user, header): Caller) -> (Caller, Result<(), tonic::Status>) {
    let mut request = tonic::Request::new(AuthorizeRequest {
        user_id: user.clone(),
        action: "tool:search".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", header.clone());
    let result = client.authorize(request).await.map(|_| ());
    ((client, user, header), result)
}

fn row(name: &str, measured: &Measurement, relative: String, target: &str) {
    println!(
        "| {name} | {} | {:.0} | {:.3} ms | {:.3} ms | {} | {relative} | {target} |",
        measured.concurrency,
        measured.ops_per_sec(),
        measured.quantile(0.5).as_secs_f64() * 1e3,
        measured.quantile(0.99).as_secs_f64() * 1e3,
        measured.errors,
    );
    if let Some(error) = &measured.first_error {
        println!("<!-- first error of {name}: {error} -->");
    }
}

fn clone_request(request: &tonic::Request<AuthorizeRequest>) -> tonic::Request<AuthorizeRequest> {
    let mut copy = tonic::Request::new(request.get_ref().clone());
    *copy.metadata_mut() = request.metadata().clone();
    copy
}

fn uuid_v4() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut bytes = bytes;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
