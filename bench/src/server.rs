//! auth-service, started in-process with `Application::build` exactly as `main` does, but on
//! its own Tokio runtime with one worker per core: the callers then compete with the service
//! for the CPU as a separate client process would, instead of sharing its scheduler queues.

use std::{net::SocketAddr, thread::JoinHandle, time::Duration};

use anyhow::Context as _;
use auth_service::{Application, Config, clients::ClientRegistry};
use tokio::sync::oneshot;
use tollgate_shared::shutdown::Shutdown;

use crate::{cli::DatabaseKind, random_alphanumeric, random_lowercase};

/// The service client the benchmark authenticates as.
#[derive(Clone, Debug)]
pub struct ServiceClient {
    pub id: String,
    pub secret: String,
}

#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    pub client: ServiceClient,
    shutdown: Shutdown,
    thread: JoinHandle<anyhow::Result<()>>,
}

/// What varies between runs: the store, and where Redis is.
#[derive(Debug)]
pub struct ServerSettings<'a> {
    pub kind: DatabaseKind,
    pub database_url: String,
    pub redis_url: &'a str,
    pub cores: usize,
}

impl Server {
    pub async fn start(settings: ServerSettings<'_>) -> anyhow::Result<Self> {
        let client = ServiceClient {
            id: "bench".into(),
            secret: random_alphanumeric(32),
        };
        let mut config = Config::for_tests(&settings.database_url);
        config.service_clients = ClientRegistry::parse(&format!(
            "{}:{}:auth.validate+auth.admin",
            client.id, client.secret
        ))
        .map_err(anyhow::Error::msg)?;
        // Every caller comes from 127.0.0.1 and logs in over and over: throttling would only
        // measure itself.
        config.login_max_per_address = u64::MAX;
        config.login_max_failures = u64::MAX;
        // The contract default, rather than the smaller pool of `for_tests`.
        config.database_max_connections = 16;
        config.shutdown_grace = Duration::from_secs(2);
        if settings.kind == DatabaseKind::Postgres {
            config.redis_url = Some(settings.redis_url.to_owned().into());
            config.redis_prefix = format!("tollgate-bench-{}", random_lowercase(12));
        }

        let shutdown = Shutdown::new();
        let (ready, addr) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.cores)
            .thread_name("auth-service")
            .enable_all()
            .build()
            .context("starting the service runtime")?;
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("auth-service-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let app = match Application::build(config, stop).await {
                        Ok(app) => app,
                        Err(err) => {
                            let message = format!("{err:#}");
                            let _ = ready.send(Err(err));
                            anyhow::bail!("auth-service did not start: {message}");
                        }
                    };
                    let _ = ready.send(Ok(app.grpc_addr()));
                    app.run_until_stopped().await
                })
            })
            .context("spawning the service thread")?;
        let addr = addr.await.context("auth-service exited while starting")??;
        Ok(Self {
            addr,
            client,
            shutdown,
            thread,
        })
    }

    /// Stops the service and waits until it has drained and closed its database pool, so the
    /// database can be dropped.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining the service thread")?
            .map_err(|_| anyhow::anyhow!("the service thread panicked"))?
    }
}
