//! A key the limiter counted but whose ledger write failed, with the count never undone (the
//! process died before it could refund, or the refund could not reach Redis, which counted),
//! is never acknowledged without its ledger row: its retry writes the row first. The ledger
//! write is failed by a trigger on the real PostgreSQL table, after the count, at a moment the
//! test chooses.

use std::{collections::BTreeMap, time::Duration};

use sqlx::{Connection, PgConnection, PgPool};
use tollgate_proto::usage::v1::ConsumeRequest;
use tonic::Code;
use usage_service::config::RedisDownMode;

use crate::{helpers::*, replicas};

/// The advisory lock the failing inserts wait for.
const LOCK: i64 = 14;

/// Makes the ledger insert of chosen keys wait for the test, then fail.
struct LedgerFaults {
    /// Holds [`LOCK`] while the test keeps the inserts waiting.
    lock: PgConnection,
    pool: PgPool,
}

impl LedgerFaults {
    /// Installs the trigger on a migrated database (usage-service's tables are in schema `usage`); every insert of one of `keys` now waits
    /// for [`LedgerFaults::release`] and then fails.
    async fn install(database_url: &str, keys: &[&str]) -> Self {
        let pool = PgPool::connect(database_url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE usage.ledger_faults (idempotency_key TEXT PRIMARY KEY);
             CREATE FUNCTION usage.ledger_fault() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF EXISTS (SELECT 1 FROM usage.ledger_faults WHERE idempotency_key = NEW.idempotency_key) THEN
                 PERFORM pg_advisory_xact_lock_shared(14);
                 RAISE EXCEPTION 'injected ledger fault';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER ledger_fault BEFORE INSERT ON usage.ledger
               FOR EACH ROW EXECUTE FUNCTION usage.ledger_fault();",
        )
        .execute(&pool)
        .await
        .unwrap();
        for key in keys {
            sqlx::query("INSERT INTO usage.ledger_faults (idempotency_key) VALUES ($1)")
                .bind(key)
                .execute(&pool)
                .await
                .unwrap();
        }
        let mut lock = PgConnection::connect(database_url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK)
            .execute(&mut lock)
            .await
            .unwrap();
        Self { lock, pool }
    }

    /// Advisory locks in this database: waiting ones only, or all.
    async fn advisory_locks(&self, waiting_only: bool) -> i64 {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE d.datname = current_database() AND l.locktype = 'advisory' \
             AND (NOT l.granted OR NOT $1)",
        )
        .bind(waiting_only)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        count
    }

    /// Waits until an insert (so, a count before it) is held up by the fault.
    async fn wait_until_blocked(&self) {
        let blocked = eventually(Duration::from_secs(20), || async {
            self.advisory_locks(true).await > 0
        })
        .await;
        assert!(blocked, "no ledger insert ever reached the fault");
    }

    /// Lets the held-up inserts go on (and fail), and waits until they have.
    async fn release(&mut self) {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK)
            .execute(&mut self.lock)
            .await
            .unwrap();
        let done = eventually(Duration::from_secs(20), || async {
            self.advisory_locks(false).await == 0
        })
        .await;
        assert!(done, "the held-up inserts never finished");
    }

    /// The ledger writes every key again.
    async fn clear(&self) {
        sqlx::query("DELETE FROM usage.ledger_faults")
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// The user's ledger rows: key to amount.
    async fn ledger(&self, user: &str) -> BTreeMap<String, u64> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT idempotency_key, amount FROM usage.ledger WHERE user_id = $1")
                .bind(user)
                .fetch_all(&self.pool)
                .await
                .unwrap();
        rows.into_iter()
            .map(|(key, amount)| (key, amount as u64))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_refund_could_not_reach_redis_is_written_when_it_is_replayed() {
    let (proxy, app) = with_redis_behind(RedisDownMode::Local).await;
    let user = new_user();
    let mut acknowledged = BTreeMap::new();
    assert!(
        app.consume(&user, "agent_runs", 2, "before")
            .await
            .unwrap()
            .allowed
    );
    acknowledged.insert("before".to_owned(), 2);

    // Redis counts `lost`; its ledger insert waits; Redis goes away; the insert fails. The
    // refund cannot reach Redis, so Redis keeps the count and the key.
    let mut faults = LedgerFaults::install(&app.database.url, &["lost"]).await;
    let call = {
        let (mut client, request) = (app.client(), app.check(consume_request(&user, 3, "lost")));
        tokio::spawn(async move { client.consume(request).await })
    };
    faults.wait_until_blocked().await;
    proxy.cut();
    faults.release().await;
    let refused = call.await.unwrap();
    assert_refused(refused, Code::Unavailable, "unavailable");

    proxy.restore();
    let recovered = eventually(Duration::from_secs(10), || async {
        let _ = app.consume(&new_user(), "messages", 1, &key()).await;
        !app.usage.limiter_degraded()
    })
    .await;
    assert!(recovered, "the limiter did not go back to Redis");
    faults.clear().await;

    // The retry is a replay for Redis; it is acknowledged only with its row in the ledger.
    let retried = app.consume(&user, "agent_runs", 3, "lost").await.unwrap();
    assert!(retried.allowed, "{retried:?}");
    acknowledged.insert("lost".to_owned(), 3);
    assert_eq!(faults.ledger(&user).await, acknowledged);
    assert_eq!(used(&app.usage_of(&user).await, "agent_runs"), 5);
    // Counted once by the limiter too: the quota left is the plan's minus the ledger.
    let next = app.consume(&user, "agent_runs", 1, "after").await.unwrap();
    assert_eq!(next.remaining, 100 - 5 - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_counted_by_a_process_that_died_before_its_ledger_write_is_written_when_replayed() {
    let auth = Auth::spawn(Backend::PostgresRedis).await;
    let database = TestDatabase::create(Backend::PostgresRedis).await;
    let prefix = redis_prefix();
    let token = auth.token("gateway", "usage-service").await;
    let user = new_user();
    let mut first = replicas::start(&database.url, &prefix, &auth.url).await;
    let before = first
        .client
        .clone()
        .consume(with_bearer(consume_request(&user, 2, "before"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(before.allowed);

    // Redis counts `lost`; the process dies while its ledger insert waits; the insert fails.
    let mut faults = LedgerFaults::install(&database.url, &["lost"]).await;
    let call = {
        let mut client = first.client.clone();
        let request = with_bearer(consume_request(&user, 3, "lost"), &token);
        tokio::spawn(async move { client.consume(request).await })
    };
    faults.wait_until_blocked().await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        call.await.unwrap().is_err(),
        "the process died before answering"
    );
    faults.release().await;
    faults.clear().await;

    // Another process answers the retry, a replay for Redis, only with the row in the ledger.
    let second = replicas::start(&database.url, &prefix, &auth.url).await;
    let retried = second
        .client
        .clone()
        .consume(with_bearer(consume_request(&user, 3, "lost"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(retried.allowed, "{retried:?}");
    let acknowledged = BTreeMap::from([("before".to_owned(), 2), ("lost".to_owned(), 3)]);
    assert_eq!(faults.ledger(&user).await, acknowledged);
}

fn consume_request(user: &str, amount: u64, key: &str) -> ConsumeRequest {
    ConsumeRequest {
        user_id: user.into(),
        meter: "agent_runs".into(),
        amount,
        idempotency_key: key.into(),
    }
}
