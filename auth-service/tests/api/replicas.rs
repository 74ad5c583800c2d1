//! Two auth-service processes (the real binary) on one PostgreSQL and one Redis behave as one
//! service: shared keys, revocations seen by both, rotation picked up by both. Their logs must
//! not contain a password, a token or a secret.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tollgate_proto::auth::v1::{
    GetJwksRequest, LogoutRequest, RotateSigningKeyRequest, auth_service_client::AuthServiceClient,
};
use tollgate_shared::grpc::TracedChannel;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::*;

/// A child process, killed when dropped, whose output is captured.
struct Replica {
    child: Child,
    grpc: AuthServiceClient<TracedChannel>,
    log: Arc<Mutex<String>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The key-encryption key both replicas seal the signing keys with.
const KEYS: &str = "cmVwbGljYXMtdGVzdCBrZXktZW5jcnlwdGlvbiBrZXkgMzJi";

const CLIENTS: &str = "gateway:test-client-secret-0123456789abcdef:auth.validate,admin:test-client-secret-0123456789abcdef:auth.admin";

async fn start_replica(database_url: &str, prefix: &str) -> Replica {
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_PREFIX", prefix)
        .env("AUTH_GRPC_ADDR", "127.0.0.1:0")
        .env("AUTH_HTTP_ADDR", "127.0.0.1:0")
        .env("AUTH_SERVICE_CLIENTS", CLIENTS)
        .env("AUTH_KEY_ENCRYPTION_KEYS", KEYS)
        .env("RUST_LOG", "debug,h2=info,tower=info,hyper=info,sqlx=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the auth-service binary starts");
    let log = Arc::new(Mutex::new(String::new()));
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for (stream, announce) in [
        (
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Some(address_tx),
        ),
        (Box::new(stderr), None),
    ] {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(announce) = &announce
                    && let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                    && json["message"] == "auth-service listening"
                {
                    let _ = announce.send(json["grpc"].as_str().unwrap_or_default().to_owned());
                }
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
            }
        });
    }
    let grpc_addr =
        tokio::task::spawn_blocking(move || address_rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap_or_else(|_| {
                panic!(
                    "the replica did not report its address; log:\n{}",
                    log.lock().unwrap()
                )
            });
    let channel =
        tollgate_shared::grpc::channel(&format!("http://{grpc_addr}"), Duration::from_secs(30))
            .unwrap();
    Replica {
        child,
        grpc: AuthServiceClient::new(channel),
        log,
    }
}

async fn service_token(replica: &Replica, client_id: &str, scope: &str) -> String {
    let request = tollgate_proto::auth::v1::IssueServiceTokenRequest {
        client_id: client_id.into(),
        client_secret: CLIENT_SECRET.into(),
        audience: "auth-service".into(),
        scopes: vec![scope.into()],
    };
    replica
        .grpc
        .clone()
        .issue_service_token(request)
        .await
        .unwrap()
        .into_inner()
        .access_token
}

async fn validate(replica: &Replica, token: &str) -> Result<(), tonic::Status> {
    let service = service_token(replica, "gateway", "auth.validate").await;
    let request = with_bearer(
        tollgate_proto::auth::v1::ValidateTokenRequest {
            token: token.into(),
        },
        &service,
    );
    replica
        .grpc
        .clone()
        .validate_token(request)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_and_redis_behave_as_one() {
    let database = TestDatabase::create(Backend::PostgresRedis).await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let (a, b) = tokio::join!(
        start_replica(&database.url, &prefix),
        start_replica(&database.url, &prefix)
    );

    // One key, whichever replica is asked.
    let jwks_a = a
        .grpc
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let jwks_b = b
        .grpc
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwks_a.keys.len(), 1);
    assert_eq!(jwks_a.active_kid, jwks_b.active_kid);

    // Register on A, log in on B, validate each other's tokens.
    let email = unique_email();
    let request = tollgate_proto::auth::v1::RegisterRequest {
        email: email.clone(),
        password: PASSWORD.into(),
    };
    let on_a = a.grpc.clone().register(request).await.unwrap().into_inner();
    let request = tollgate_proto::auth::v1::LoginRequest {
        email,
        password: PASSWORD.into(),
    };
    let on_b = b.grpc.clone().login(request).await.unwrap().into_inner();
    validate(&b, &on_a.access_token).await.unwrap();
    validate(&a, &on_b.access_token).await.unwrap();

    // A revocation on A reaches B (which has the session cached as active) within a second.
    let revoked = a
        .grpc
        .clone()
        .logout(LogoutRequest {
            refresh_token: on_a.refresh_token.clone(),
        })
        .await;
    revoked.unwrap();
    let seen = eventually(Duration::from_secs(1), || async {
        validate(&b, &on_a.access_token)
            .await
            .is_err_and(|status| reason(&status) == "session_revoked")
    })
    .await;
    assert!(seen, "replica B still accepts a session revoked on A");
    let refreshed = b
        .grpc
        .clone()
        .refresh(tollgate_proto::auth::v1::RefreshRequest {
            refresh_token: on_a.refresh_token.clone(),
        })
        .await;
    assert_eq!(refreshed.unwrap_err().code(), Code::Unauthenticated);

    // A rotation on B is picked up by A: A signs with the new key and B's tokens validate on A.
    let admin = service_token(&b, "admin", "auth.admin").await;
    let rotated = b
        .grpc
        .clone()
        .rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    let picked_up = eventually(Duration::from_secs(5), || async {
        a.grpc
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .active_kid
            == rotated.kid
    })
    .await;
    assert!(picked_up, "replica A did not pick up the rotation");
    let after = b
        .grpc
        .clone()
        .refresh(tollgate_proto::auth::v1::RefreshRequest {
            refresh_token: on_b.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    validate(&a, &after.access_token).await.unwrap();
    validate(&a, &on_b.access_token).await.unwrap();

    // Rotations racing on both replicas end with one active key that both agree on.
    let admin_a = service_token(&a, "admin", "auth.admin").await;
    let (mut client_a, mut client_b) = (a.grpc.clone(), b.grpc.clone());
    let (from_a, from_b) = tokio::join!(
        client_a.rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &admin_a)),
        client_b.rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &admin)),
    );
    let (from_a, from_b) = (from_a.unwrap().into_inner(), from_b.unwrap().into_inner());
    let agreed = eventually(Duration::from_secs(5), || async {
        let kid_a = a
            .grpc
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .active_kid;
        let kid_b = b
            .grpc
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .active_kid;
        kid_a == kid_b && [&from_a.kid, &from_b.kid].contains(&&kid_a)
    })
    .await;
    assert!(
        agreed,
        "replicas disagree on the active key after racing rotations"
    );

    // Nothing secret reached the logs.
    for replica in [&a, &b] {
        let log = replica.log.lock().unwrap().clone();
        assert!(log.contains("auth-service listening"));
        for secret in [
            PASSWORD,
            CLIENT_SECRET,
            &on_a.access_token,
            &on_a.refresh_token,
            &on_b.refresh_token,
            &after.access_token,
            &admin,
            &admin_a,
        ] {
            assert!(!log.contains(secret), "a secret reached the logs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_fails_fast_with_one_line_naming_the_variable() {
    for (variable, value, expected) in [
        ("AUTH_ACCESS_TOKEN_TTL", "soon", "AUTH_ACCESS_TOKEN_TTL"),
        ("AUTH_GRPC_ADDR", "localhost", "AUTH_GRPC_ADDR"),
        (
            "AUTH_SERVICE_CLIENTS",
            "gw:tiny:scope",
            "AUTH_SERVICE_CLIENTS",
        ),
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/nope",
            "DATABASE_URL",
        ),
        ("REDIS_URL", "redis://127.0.0.1:1", "REDIS_URL"),
        (
            "AUTH_KEY_ENCRYPTION_KEYS",
            "dGlueQ==",
            "AUTH_KEY_ENCRYPTION_KEYS",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_auth-service"))
            .env_clear()
            .current_dir(dir.path())
            .env("AUTH_GRPC_ADDR", "127.0.0.1:0")
            .env("AUTH_HTTP_ADDR", "127.0.0.1:0")
            .env("AUTH_KEY_ENCRYPTION_KEYS", KEYS)
            .env(variable, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{variable}={value} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "{variable}: {stderr}");
        assert!(lines[0].contains(expected), "{variable}: {stderr}");
        assert!(
            !lines[0].contains("tiny"),
            "the secret was printed: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let database = TestDatabase::create(Backend::PostgresRedis).await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let mut replica = start_replica(&database.url, &prefix).await;
    // A request racing the signal is either answered or refused; it never hangs.
    let client = replica.grpc.clone();
    let in_flight = tokio::spawn(async move {
        let mut client = client;
        let request = tollgate_proto::auth::v1::RegisterRequest {
            email: unique_email(),
            password: PASSWORD.into(),
        };
        client.register(request).await
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(replica.child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = eventually(Duration::from_secs(20), || {
        let status = replica.child.try_wait().unwrap();
        async move { status.is_some() }
    })
    .await;
    assert!(exited, "auth-service did not exit within 20 s of SIGTERM");
    let status = replica.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", replica.log.lock().unwrap());
    let raced = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("the racing request ends")
        .unwrap();
    if let Ok(answer) = raced {
        assert!(!answer.into_inner().access_token.is_empty());
    }
    // The log is read by threads of its own, which may still be catching up with the exit.
    let log = Arc::clone(&replica.log);
    let complete =
        eventually(Duration::from_secs(10), || {
            let log = log.lock().unwrap().clone();
            async move {
                log.contains("shutdown signal received") && log.contains("auth-service stopped")
            }
        })
        .await;
    assert!(complete, "{}", replica.log.lock().unwrap());
}
