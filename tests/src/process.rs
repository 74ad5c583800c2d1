//! A service binary running as a child process, the way an operator runs it: configured only by
//! its environment, found by the address it logs, stopped by signals.
//!
//! - **Ports.** Listen addresses start as port 0; the service logs the addresses it bound (the
//!   JSON "… listening" line), and from then on the environment names those exact addresses,
//!   so [`Service::restart`] comes back where clients and the other services expect it.
//!   Readiness and metrics are read on the internal listener when the service has one (the
//!   gateway with `GATEWAY_ADMIN_ADDR`), as Prometheus and the kubelet would.
//! - **Logs** (stdout and stderr, every incarnation) are kept in memory, for assertions and
//!   for the failure message: when a test panics, each service it owns prints the tail of its
//!   log as it is dropped.
//! - **Cleanup.** Dropping a `Service` kills the process (SIGKILL) and reaps it, so a failing
//!   test never leaks processes.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use serde_json::Value;
use tollgate_shared::testing::eventually;

use crate::{PATIENCE, binaries::Binary};

/// How long a service may take to log that it listens (migrations included, loaded machine).
const STARTUP: Duration = Duration::from_secs(60);
/// Log lines printed from each service when a test fails.
const TAIL_ON_FAILURE: usize = 40;

#[derive(Debug)]
pub struct Service {
    binary: Binary,
    env: Vec<(String, String)>,
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    log: Arc<Mutex<String>>,
    /// The listening line of the current (or last) incarnation.
    listening: Value,
    starts: u32,
    http: reqwest::Client,
}

impl Service {
    /// Starts `binary` with exactly `env` (nothing is inherited) and waits until it logs its
    /// addresses. Panics, with the log, if it exits or stays silent instead.
    pub async fn start(binary: Binary, env: Vec<(String, String)>) -> Self {
        let mut service = Self {
            binary,
            env,
            child: None,
            readers: Vec::new(),
            log: Arc::default(),
            listening: Value::Null,
            starts: 0,
            http: reqwest::Client::new(),
        };
        service.spawn().await;
        service
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        self.log_line(&format!(
            "--- {} start #{} ---",
            self.binary.name(),
            self.starts
        ));
        let mut child = Command::new(self.binary.path())
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("{} does not start: {err}", self.binary.name()));
        let (announce, announced) = std::sync::mpsc::channel::<Value>();
        let message = self.binary.listening_message();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        self.readers = vec![
            self.capture(stdout, Some((announce, message))),
            self.capture(stderr, None),
        ];
        self.child = Some(child);
        let listening = tokio::task::spawn_blocking(move || announced.recv_timeout(STARTUP).ok())
            .await
            .expect("the log reader");
        let Some(listening) = listening else {
            let status = self.kill_9();
            panic!(
                "{} did not log its addresses (exit: {status:?}); log:\n{}",
                self.binary.name(),
                self.log()
            );
        };
        self.listening = listening;
        // From now on the environment names the bound addresses, so a restart binds them again.
        for (variable, field) in self.binary.address_variables() {
            if let Some(bound) = self.listening[*field].as_str().map(str::to_owned) {
                self.set_env(variable, &bound);
            }
        }
    }

    /// A thread appending `stream`'s lines to the log; the stdout one also sends the
    /// listening line.
    fn capture(
        &self,
        stream: impl Read + Send + 'static,
        announce: Option<(std::sync::mpsc::Sender<Value>, String)>,
    ) -> JoinHandle<()> {
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some((announce, message)) = &announce
                    && let Ok(json) = serde_json::from_str::<Value>(&line)
                    && json["message"] == message.as_str()
                {
                    let _ = announce.send(json);
                }
                let mut log = log.lock().unwrap_or_else(|poison| poison.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        })
    }

    fn log_line(&self, line: &str) {
        let mut log = self.log.lock().unwrap_or_else(|poison| poison.into_inner());
        log.push_str(line);
        log.push('\n');
    }

    pub fn binary(&self) -> Binary {
        self.binary
    }

    /// Everything the service logged so far, every incarnation.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// The lines logged at WARN or ERROR so far, every incarnation.
    pub fn warnings(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| {
                serde_json::from_str::<Value>(line)
                    .is_ok_and(|json| matches!(json["level"].as_str(), Some("WARN" | "ERROR")))
            })
            .map(str::to_owned)
            .collect()
    }

    /// A bound address from the listening line (`grpc`, `http` or `addr`).
    pub fn addr(&self, field: &str) -> SocketAddr {
        self.listening[field]
            .as_str()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no `{field}` address in {}", self.listening))
    }

    /// The HTTP address clients use (for the gateway: `/ws`, `/v1/publish`).
    pub fn http_addr(&self) -> SocketAddr {
        self.addr(self.binary.http_field())
    }

    /// The address of `/readyz` and `/metrics`: the internal listener if the service runs
    /// one, its HTTP address otherwise.
    pub fn admin_addr(&self) -> SocketAddr {
        match self.binary.admin_field() {
            Some(field) if self.listening[field].is_string() => self.addr(field),
            _ => self.http_addr(),
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// `http://<grpc address>`, what other services are configured with.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addr("grpc"))
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sets a variable for the next (re)start.
    pub fn set_env(&mut self, variable: &str, value: &str) {
        match self.env.iter_mut().find(|(name, _)| name == variable) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.env.push((variable.to_owned(), value.to_owned())),
        }
    }

    /// Whether `/readyz` answers 200.
    pub async fn is_ready(&self) -> bool {
        self.http
            .get(self.admin_url("/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    }

    /// Waits until the service reports ready; panics with its log if it never does.
    pub async fn ready(&self) {
        assert!(
            eventually(PATIENCE, || self.is_ready()).await,
            "{} never became ready; log:\n{}",
            self.binary.name(),
            self.log()
        );
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        let response = self
            .http
            .get(self.admin_url("/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match response {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The value of one series (`name{labels}` exactly as exposed); 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::scrape::series_value(&self.metrics().await, series)
    }

    /// SIGKILL: no drain, no flush, sockets reset by the kernel. Returns how it ended.
    pub fn kill_9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        let status = child.wait().ok();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }

    /// SIGTERM: the service drains and exits on its own; see [`Service::exited`].
    pub fn sigterm(&self) {
        let pid = self.pid().expect("the service is running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("`kill` runs");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits up to `within` for the process to exit by itself; None if it is still running.
    pub async fn exited(&mut self, within: Duration) -> Option<ExitStatus> {
        let mut status = None;
        eventually(within, || {
            status = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            let done = status.is_some();
            async move { done }
        })
        .await;
        if status.is_some() {
            self.child = None;
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        status
    }

    /// Starts the service again with the same environment, on the same addresses (killing it
    /// first if it still runs), and waits until it listens.
    pub async fn restart(&mut self) {
        self.kill_9();
        self.spawn().await;
    }

    /// Runs `binary` with exactly `env` until it exits by itself, for a start that must
    /// fail: its exit status and what it wrote to stderr. Panics if it keeps running.
    pub async fn run_to_exit(binary: Binary, env: Vec<(String, String)>) -> (ExitStatus, String) {
        let child = tokio::process::Command::new(binary.path())
            .env_clear()
            .envs(env)
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("{} does not start: {err}", binary.name()));
        let output = tokio::time::timeout(STARTUP, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{} kept running", binary.name()))
            .expect("the exit status");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn print_tail(&self) {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(TAIL_ON_FAILURE)..];
        eprintln!(
            "=== last {} log lines of {} ===\n{}",
            tail.len(),
            self.binary.name(),
            tail.join("\n")
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill_9();
        if std::thread::panicking() {
            self.print_tail();
        }
    }
}
