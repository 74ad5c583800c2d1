//! Signing keys at rest: what a database dump or a backup gives away (nothing that signs), a
//! database written before sealing existed, a wrong keyring at startup, and retiring a
//! key-encryption key with `auth-service keys rewrap` while replicas serve.

use std::{
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use auth_service::{Application, Config, sealing::KeyEncryptionKeys, store::Store};
use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD},
};
use tollgate_proto::auth::v1::{GetJwksRequest, RotateSigningKeyRequest};
use tollgate_shared::{shutdown::Shutdown, tokens::SigningKey};

use crate::{both_backends, helpers::*};

/// Every form in which the 32 secret bytes could sit in a dump and be used: raw, hex, and
/// base64 in either alphabet at each of the three byte alignments (which also covers PKCS#8
/// DER, its PEM body and the 64-byte keypair form, all of which contain the raw bytes).
fn usable_forms(secret: &[u8; 32]) -> Vec<Vec<u8>> {
    let mut forms = vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ];
    for offset in 0..3 {
        let window = &secret[offset..offset + 30];
        forms.push(STANDARD.encode(window).into_bytes());
        forms.push(URL_SAFE.encode(window).into_bytes());
    }
    forms
}

fn assert_holds_none(haystack: &[u8], secrets: &[[u8; 32]], what: &str) {
    for (index, secret) in secrets.iter().enumerate() {
        for form in usable_forms(secret) {
            assert!(
                !haystack.windows(form.len()).any(|window| window == form),
                "{what} holds signing key {index} in a usable form ({} bytes)",
                form.len()
            );
        }
    }
}

fn settings(database_url: &str) -> tollgate_shared::db::Settings<'_> {
    tollgate_shared::db::Settings {
        url: database_url,
        max_connections: 1,
        timeouts: Default::default(),
    }
}

/// A second client of the service's database, working in its schema.
async fn connect(database_url: &str) -> sqlx::AnyPool {
    tollgate_shared::db::connect(settings(database_url), &auth_service::store::SCHEMA)
        .await
        .unwrap()
}

/// Every column of every table, as text: what `pg_dump` or `.dump` would show.
async fn dump(database_url: &str) -> Vec<u8> {
    let pool = connect(database_url).await;
    let columns: Vec<(String, String)> = if database_url.starts_with("sqlite") {
        sqlx::query_as(
            "SELECT '\"' || m.name || '\"', p.name FROM sqlite_master m \
             JOIN pragma_table_info(m.name) p WHERE m.type = 'table'",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    } else {
        // Every schema of the database, not only the service's own.
        sqlx::query_as(
            "SELECT '\"' || table_schema || '\".\"' || table_name || '\"', \
             CAST(column_name AS TEXT) FROM information_schema.columns \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert!(
        columns
            .iter()
            .any(|(table, _)| table.ends_with("\"signing_keys\"")),
        "{columns:?}"
    );
    let mut dump = Vec::new();
    for (table, column) in columns {
        // SQLite hands blobs back as raw bytes: those are read as hex (PostgreSQL's bytea
        // reads as hex already).
        let value = if database_url.starts_with("sqlite") {
            format!(
                "CASE WHEN typeof(\"{column}\") = 'blob' THEN hex(\"{column}\") \
                 ELSE CAST(\"{column}\" AS TEXT) END"
            )
        } else {
            format!("CAST(\"{column}\" AS TEXT)")
        };
        let rows: Vec<(Option<String>,)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {value} FROM {table}")))
                .fetch_all(&pool)
                .await
                .unwrap();
        for (value,) in rows {
            dump.extend_from_slice(value.unwrap_or_default().as_bytes());
            dump.push(b'\n');
        }
    }
    pool.close().await;
    dump
}

fn keyring(value: &str) -> Option<KeyEncryptionKeys> {
    Some(KeyEncryptionKeys::parse(value).unwrap())
}

async fn rotate(app: &TestApp) -> String {
    let admin = app
        .service_token("admin", "auth-service", &["auth.admin"])
        .await
        .unwrap();
    app.client()
        .rotate_signing_key(with_bearer(RotateSigningKeyRequest {}, &admin))
        .await
        .unwrap()
        .into_inner()
        .kid
}

async fn a_database_dump_holds_no_usable_private_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut secrets = vec![app.auth.keys().signer().secret_bytes()];
    app.new_user().await;
    for _ in 0..2 {
        rotate(&app).await;
        secrets.push(app.auth.keys().signer().secret_bytes());
        app.new_user().await;
    }
    assert_eq!(secrets.len(), 3);
    assert_holds_none(&dump(&app.database.url).await, &secrets, "the dump");
    if backend == Backend::Embedded {
        // The files themselves, free pages and write-ahead log included.
        let path = app.database.url.trim_start_matches("sqlite://").to_owned();
        for file in [path.clone(), format!("{path}-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                assert_holds_none(&bytes, &secrets, &file);
            }
        }
    }
    // The rows open only with the keyring: another one does not start on this database.
    let mut config = app.config.clone();
    config.key_encryption_keys = keyring(&KeyEncryptionKeys::generate_encoded());
    let err = Application::build(config, Shutdown::new())
        .await
        .expect_err("a wrong keyring must not start");
    assert!(
        err.to_string().starts_with("AUTH_KEY_ENCRYPTION_KEYS: "),
        "{err:#}"
    );
}

async fn plaintext_keys_of_the_old_schema_are_sealed_on_first_start(backend: Backend) {
    let database = Arc::new(TestDatabase::create(backend).await);
    // The schema and a key row as the previous release wrote them.
    Store::open(settings(&database.url))
        .await
        .unwrap()
        .close()
        .await;
    let legacy = SigningKey::generate();
    let pool = connect(&database.url).await;
    sqlx::query("INSERT INTO signing_keys (kid, secret, created_at) VALUES ($1, $2, $3)")
        .bind(legacy.kid())
        .bind(URL_SAFE_NO_PAD.encode(legacy.secret_bytes()))
        .bind(1_i64)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO key_state (id, active_kid, changed_at) VALUES (1, $1, $2)")
        .bind(legacy.kid())
        .bind(1_i64)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let app = TestApp::start(config(backend, &database), Arc::clone(&database)).await;
    // The same key signs on: tokens issued before the upgrade stay valid.
    let jwks = app
        .client()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwks.active_kid, legacy.kid());
    let user = app.new_user().await;
    assert_eq!(
        app.validate(&user.access_token).await.unwrap().kid,
        legacy.kid()
    );
    assert_holds_none(
        &dump(&database.url).await,
        &[legacy.secret_bytes()],
        "the dump",
    );
    // A second start finds nothing left to seal and still opens the key.
    let config = app.config.clone();
    app.stop().await;
    let again = TestApp::start(config, database).await;
    again.validate(&user.access_token).await.unwrap();
}

/// Runs the real binary to its end with exactly `env` (nothing inherited).
async fn run_binary(arguments: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_auth-service"));
    command.args(arguments).env_clear().kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the binary finishes within a minute")
        .expect("the binary runs")
}

#[track_caller]
fn assert_refused_naming_the_keyring(output: &Output, secrets: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("AUTH_KEY_ENCRYPTION_KEYS"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for secret in secrets {
        assert!(
            !stderr.contains(secret) && !stdout.contains(secret),
            "a key was printed"
        );
    }
}

async fn startup_refuses_a_missing_short_duplicate_or_wrong_keyring(backend: Backend) {
    let database = Arc::new(TestDatabase::create(backend).await);
    let right = KeyEncryptionKeys::generate_encoded();
    let mut config = config(backend, &database);
    config.key_encryption_keys = keyring(&right);
    TestApp::start(config, Arc::clone(&database))
        .await
        .stop()
        .await;

    let base = [
        ("DATABASE_URL", database.url.as_str()),
        ("AUTH_GRPC_ADDR", "127.0.0.1:0"),
        ("AUTH_HTTP_ADDR", "127.0.0.1:0"),
    ];
    fn with<'a>(base: &[(&'a str, &'a str)], keys: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut env = base.to_vec();
        env.push(("AUTH_KEY_ENCRYPTION_KEYS", keys));
        env
    }
    let missing = run_binary(&[], &base).await;
    assert_refused_naming_the_keyring(&missing, &[]);
    let short = STANDARD.encode([7u8; 16]);
    assert_refused_naming_the_keyring(&run_binary(&[], &with(&base, &short)).await, &[&short]);
    let twice = format!("{},{}", right.as_str(), right.as_str());
    assert_refused_naming_the_keyring(&run_binary(&[], &with(&base, &twice)).await, &[&right]);
    let wrong = KeyEncryptionKeys::generate_encoded();
    assert_refused_naming_the_keyring(
        &run_binary(&[], &with(&base, &wrong)).await,
        &[&wrong, &right],
    );
    assert_refused_naming_the_keyring(
        &run_binary(&["keys", "rewrap"], &with(&base, &wrong)).await,
        &[&wrong, &right],
    );

    // The right keyring, read from a file through `_FILE`, opens the keys.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kek");
    std::fs::write(&file, format!("{}\n", right.as_str())).unwrap();
    let mut env = base.to_vec();
    let file = file.display().to_string();
    env.push(("AUTH_KEY_ENCRYPTION_KEYS_FILE", &file));
    let rewrap = run_binary(&["keys", "rewrap"], &env).await;
    assert!(
        rewrap.status.success(),
        "{}",
        String::from_utf8_lossy(&rewrap.stderr)
    );
}

/// Validations and logins against two replicas, counting what fails.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(replicas: &[Arc<TestApp>], users: &[(String, String)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..4)
            .map(|worker| {
                let (replicas, users) = (replicas.to_vec(), users.to_vec());
                let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut round = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let replica = &replicas[round % replicas.len()];
                        let (email, token) = &users[round % users.len()];
                        let result = if round % 8 == 0 {
                            // A login signs with whatever key is active now.
                            match replica.login(email, PASSWORD).await {
                                Ok(pair) => replica.validate(&pair.access_token).await.map(drop),
                                Err(status) => Err(status),
                            }
                        } else {
                            replica.validate(token).await.map(drop)
                        };
                        if let Err(status) = result {
                            failures.lock().unwrap().push(format!("{status:?}"));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        round += 4;
                    }
                })
            })
            .collect();
        Self {
            stop,
            done,
            failures,
            tasks,
        }
    }

    /// Waits until `more` further requests have been answered.
    async fn run_for(&self, more: usize) {
        let target = self.done.load(Ordering::Relaxed) + more;
        assert!(
            eventually(Duration::from_secs(60), || async {
                self.done.load(Ordering::Relaxed) >= target
            })
            .await,
            "the load stalled"
        );
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        Arc::try_unwrap(self.failures)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

async fn a_key_encryption_key_is_retired_under_load_without_a_failed_validation(backend: Backend) {
    let database = Arc::new(TestDatabase::create(backend).await);
    let old = KeyEncryptionKeys::generate_encoded();
    let new = KeyEncryptionKeys::generate_encoded();
    let mut config: Config = config(backend, &database);
    config.key_encryption_keys = keyring(&old);
    let first = TestApp::start(config.clone(), Arc::clone(&database)).await;
    let mut users = Vec::new();
    for _ in 0..3 {
        let email = unique_email();
        let pair = first.register(&email, PASSWORD).await.unwrap();
        users.push((email, pair.access_token));
    }
    rotate(&first).await;
    first.stop().await;

    // 1. The new key goes in front; every replica restarts with both.
    let both = format!("{},{}", new.as_str(), old.as_str());
    config.key_encryption_keys = keyring(&both);
    let replicas = vec![
        Arc::new(TestApp::start(config.clone(), Arc::clone(&database)).await),
        Arc::new(TestApp::start(config.clone(), Arc::clone(&database)).await),
    ];
    let load = Load::start(&replicas, &users);
    load.run_for(20).await;

    // 2. `keys rewrap` while they serve, then a signing-key rotation on top.
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("AUTH_KEY_ENCRYPTION_KEYS", both.as_str()),
        ("RUST_LOG", "warn"),
    ];
    let rewrap = run_binary(&["keys", "rewrap"], &env).await;
    let stdout = String::from_utf8_lossy(&rewrap.stdout);
    assert!(
        rewrap.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&rewrap.stderr)
    );
    assert!(
        stdout.contains("re-sealed 2 signing keys") && stdout.contains("0 left on older keys"),
        "{stdout}"
    );
    load.run_for(20).await;
    rotate(&replicas[0]).await;
    load.run_for(40).await;
    let failures = load.finish().await;
    assert!(failures.is_empty(), "failed validations: {failures:?}");

    // 3. Nothing is left on the old key; a second run changes nothing.
    let again = run_binary(&["keys", "rewrap"], &env).await;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success() && stdout.contains("re-sealed 0 signing keys"),
        "{stdout}"
    );

    // 4. Without the old key, every replica starts and every token still validates.
    for replica in replicas {
        Arc::try_unwrap(replica)
            .ok()
            .expect("the load has finished")
            .stop()
            .await;
    }
    config.key_encryption_keys = keyring(&new);
    let retired = TestApp::start(config.clone(), Arc::clone(&database)).await;
    for (_, token) in &users {
        retired.validate(token).await.unwrap();
    }
    retired.stop().await;
    // The old key alone opens nothing any more.
    config.key_encryption_keys = keyring(&old);
    let err = Application::build(config, Shutdown::new())
        .await
        .expect_err("the retired key must not start");
    assert!(
        err.to_string().starts_with("AUTH_KEY_ENCRYPTION_KEYS: "),
        "{err:#}"
    );
}

both_backends!(
    a_database_dump_holds_no_usable_private_key,
    plaintext_keys_of_the_old_schema_are_sealed_on_first_start,
    startup_refuses_a_missing_short_duplicate_or_wrong_keyring,
    a_key_encryption_key_is_retired_under_load_without_a_failed_validation,
);
