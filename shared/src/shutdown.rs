//! One shutdown signal for a whole process.
//!
//! `Shutdown` is a cancellation token: every server, background task and connection holds a
//! clone and stops when it fires. `main` fires it on SIGTERM or SIGINT; tests fire it directly.

use tokio_util::sync::CancellationToken;

/// The process-wide "stop now" signal. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutting down everything that holds this signal.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn wait(&self) {
        self.0.cancelled().await
    }

    /// Sleeps for `duration` unless shutdown comes first; false when it did (the caller
    /// stops).
    pub async fn sleep(&self, duration: std::time::Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.wait() => false,
        }
    }

    /// The underlying token, for APIs that take one.
    pub fn token(&self) -> CancellationToken {
        self.0.clone()
    }

    /// Triggers this signal when the process receives SIGTERM or SIGINT.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = wait_for_signal() => {
                    tracing::info!("shutdown signal received");
                    this.trigger();
                }
                () = this.wait() => {}
            }
        });
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
