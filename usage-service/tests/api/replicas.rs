//! Two usage-service processes (the real binary) on one PostgreSQL and one Redis: parallel
//! Consume calls spread over both never allow more than the limit, a change on one is seen by
//! the other at once, and SIGTERM flushes the ledger.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::join_all;
use tollgate_proto::usage::v1::{ConsumeRequest, usage_service_client::UsageServiceClient};
use tollgate_shared::grpc::TracedChannel;

use crate::helpers::*;

/// A usage-service process, killed (SIGKILL) and reaped on drop.
pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) client: UsageServiceClient<TracedChannel>,
    log: Arc<Mutex<String>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `database_url` and Redis under `prefix`, trusting `auth_url`'s keys.
pub(crate) async fn start(database_url: &str, prefix: &str, auth_url: &str) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_usage-service"))
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_PREFIX", prefix)
        .env("AUTH_SERVICE_URL", auth_url)
        .env("USAGE_GRPC_ADDR", "127.0.0.1:0")
        .env("USAGE_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the usage-service binary starts");
    let log = Arc::new(Mutex::new(String::new()));
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let streams: [(Box<dyn std::io::Read + Send>, bool); 2] = [
        (Box::new(child.stdout.take().unwrap()), true),
        (Box::new(child.stderr.take().unwrap()), false),
    ];
    for (stream, announces) in streams {
        let (log, address_tx) = (Arc::clone(&log), address_tx.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if announces
                    && let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == "usage-service listening"
                {
                    let _ = address_tx.send(json["grpc"].as_str().unwrap_or_default().to_owned());
                }
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
            }
        });
    }
    let address =
        tokio::task::spawn_blocking(move || address_rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap_or_else(|_| {
                panic!(
                    "usage-service did not report its address:\n{}",
                    log.lock().unwrap()
                )
            });
    let channel =
        tollgate_shared::grpc::channel(&format!("http://{address}"), Duration::from_secs(30))
            .unwrap();
    Process {
        child,
        client: UsageServiceClient::new(channel),
        log,
    }
}

async fn consume(process: &Process, token: &str, user: &str, meter: &str) -> bool {
    let request = ConsumeRequest {
        user_id: user.into(),
        meter: meter.into(),
        amount: 1,
        idempotency_key: key(),
    };
    // A call cut off by the shutdown counts as not acknowledged.
    process
        .client
        .clone()
        .consume(with_bearer(request, token))
        .await
        .is_ok_and(|answer| answer.into_inner().allowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_never_allow_more_than_the_limit_and_drain_on_sigterm() {
    let auth = Auth::spawn(Backend::PostgresRedis).await;
    let database = TestDatabase::create(Backend::PostgresRedis).await;
    let prefix = redis_prefix();
    let (a, b) = tokio::join!(
        start(&database.url, &prefix, &auth.url),
        start(&database.url, &prefix, &auth.url)
    );
    let token = auth.token("gateway", "usage-service").await;
    let user = new_user();

    let answers = join_all((0..64).map(|i| {
        let process = if i % 2 == 0 { &a } else { &b };
        consume(process, &token, &user, "messages")
    }))
    .await;
    assert_eq!(
        answers.iter().filter(|allowed| **allowed).count(),
        30,
        "64 parallel calls over two processes"
    );

    // SIGTERM on A while calls are in flight: A exits 0, and every call it acknowledged is in
    // the ledger that B reads.
    let in_flight = join_all((0..20).map(|_| consume(&a, &token, &user, "agent_runs")));
    let killer = async {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(a.child.id().to_string())
            .status();
    };
    let (answers, ()) = tokio::join!(
        async { tokio::time::timeout(Duration::from_secs(30), in_flight).await },
        killer
    );
    let acknowledged_a = answers.map_or(0, |answers| {
        answers.iter().filter(|allowed| **allowed).count()
    }) as u64;
    let mut a = a;
    let exited = eventually(Duration::from_secs(20), || {
        let done = a.child.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    assert!(exited, "usage-service did not exit after SIGTERM");
    assert_eq!(
        a.child.wait().unwrap().code(),
        Some(0),
        "{}",
        a.log.lock().unwrap()
    );

    let usage = tollgate_proto::usage::v1::GetUsageRequest {
        user_id: user.clone(),
        at: 0,
    };
    let usage = b
        .client
        .clone()
        .get_usage(with_bearer(usage, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        used(&usage, "messages"),
        0,
        "messages are rate-only: no ledger rows"
    );
    assert!(
        used(&usage, "agent_runs") >= acknowledged_a,
        "an acknowledged consume was lost"
    );
}
