//! The periodic pruning of expired sessions and refresh tokens, so the tables do not grow
//! forever. What is deleted, and why that never changes a security answer, is in
//! `store/prune.rs`.
//!
//! One task per replica, owned by the application and stopped by its shutdown signal. Each
//! period it first claims the run in the database, so with several replicas one of them prunes
//! per period (and a replica restarting in a loop does not prune on every start). It then
//! deletes in batches of at most [`BATCH`] rows, each its own statement under a timeout: a large
//! backlog never holds locks for long, and a stuck statement cannot wedge the task.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{task::JoinHandle, time::MissedTickBehavior};
use tollgate_shared::{shutdown::Shutdown, time::unix_now_ms};

use crate::{auth::Auth, store::StoreError};

/// The most rows one statement deletes.
pub const BATCH: i64 = 1_000;
/// The longest one statement (a claim or a batch) may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The task's row in `auth_maintenance`.
const TASK: &str = "prune_sessions";

#[derive(Clone, Copy, Debug)]
pub struct PruneSettings {
    /// How often the task runs (`AUTH_PRUNE_INTERVAL`).
    pub interval: Duration,
    /// How long past its expiry a row is kept: the longest an access token can outlive its
    /// session's expiry plus the clock-skew leeway, so replicas whose clocks disagree a little
    /// never see a row vanish while they still consider it current.
    pub retention: Duration,
}

/// What one run deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub refresh_tokens: u64,
    pub sessions: u64,
}

impl Auth {
    /// Prunes every `settings.interval` (the first run at once) until shutdown.
    pub(crate) fn spawn_pruner(
        self: &Arc<Self>,
        settings: PruneSettings,
        shutdown: Shutdown,
    ) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(settings.interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.wait() => return,
                    _ = ticks.tick() => {}
                }
                match this.prune(unix_now_ms(), settings, &shutdown).await {
                    Ok(Some(pruned)) if pruned != Pruned::default() => tracing::info!(
                        refresh_tokens = pruned.refresh_tokens,
                        sessions = pruned.sessions,
                        "pruned expired sessions and refresh tokens"
                    ),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(
                        error = format!("{err:#}"),
                        "pruning expired sessions failed; retrying next period"
                    ),
                }
            }
        })
    }

    /// One run as of `now_ms`: `None` when another replica (or an earlier start) ran within the
    /// period. Stops between batches when shutdown is triggered.
    pub async fn prune(
        &self,
        now_ms: i64,
        settings: PruneSettings,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Option<Pruned>> {
        let period_ms = settings.interval.as_millis().try_into().unwrap_or(i64::MAX);
        let claim = self.store.claim_maintenance(TASK, now_ms, period_ms);
        if !bounded(claim).await.context("claiming the run")? {
            return Ok(None);
        }
        let retention_ms: i64 = settings
            .retention
            .as_millis()
            .try_into()
            .unwrap_or(i64::MAX);
        let cutoff_ms = now_ms.saturating_sub(retention_ms);
        // Tokens first: a session goes only once none of its tokens remain.
        let refresh_tokens = drain(shutdown, || {
            self.store.prune_refresh_tokens(cutoff_ms, BATCH)
        })
        .await
        .context("pruning refresh tokens")?;
        self.metrics.pruned("refresh_tokens", refresh_tokens);
        let sessions = drain(shutdown, || self.store.prune_sessions(cutoff_ms, BATCH))
            .await
            .context("pruning sessions")?;
        self.metrics.pruned("sessions", sessions);
        Ok(Some(Pruned {
            refresh_tokens,
            sessions,
        }))
    }
}

/// Runs `batch` until it deletes less than a full batch or shutdown is triggered; returns the
/// rows deleted.
async fn drain<F, Fut>(shutdown: &Shutdown, mut batch: F) -> anyhow::Result<u64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let deleted = tokio::select! {
            biased;
            () = shutdown.wait() => return Ok(total),
            deleted = bounded(batch()) => deleted?,
        };
        total += deleted;
        if deleted < BATCH as u64 {
            return Ok(total);
        }
        // Each batch commits on its own, so its locks are already released; let other tasks
        // on this worker run before the next one.
        tokio::task::yield_now().await;
    }
}

async fn bounded<T>(statement: impl Future<Output = Result<T, StoreError>>) -> anyhow::Result<T> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, statement).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("a statement took longer than {STATEMENT_TIMEOUT:?}"),
    }
}
