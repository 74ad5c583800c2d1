//! The Python agent backend (`examples/python-agent`) as a child process, for the tests that
//! prove the agent protocol works across languages.
//!
//! - **Interpreter.** The agent runs in a virtual environment made from its
//!   `requirements.txt` with `python3 -m venv` and pip, once per machine and per content of
//!   that file (and of `python3 --version`): the venv lives in the system temp dir under a
//!   name keyed by their hash. Test processes that race to make it each build their own in a
//!   staging directory and rename it into place; the first rename wins, the others use it.
//!   A machine without `python3`, `venv` or pip fails the test with what to install; nothing
//!   is skipped. `TOLLGATE_PYTHON` names another interpreter.
//! - **Port.** The agent is started with `AGENT_ADDR=127.0.0.1:0` and found by the address
//!   it logs (`{"event":"listening","addr":…}`), like the service binaries.
//! - **Log.** Every stdout line is a JSON event; tests wait for events and assert on them
//!   (the log is the agent's proof of what it did, e.g. that a denied tool never ran).
//! - **Cleanup.** Dropping a [`PythonAgent`] kills the process (SIGKILL) and reaps it; a
//!   failing test prints the tail of its log.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use serde_json::Value;
use tollgate_proto::agent::v1::agent_backend_client::AgentBackendClient;
use tonic::transport::{Channel, Endpoint};

use crate::{PATIENCE, eventually_some};

/// How long the agent may take to log that it listens (interpreter start, proto compilation,
/// on a loaded machine).
const STARTUP: Duration = Duration::from_secs(30);
/// Log lines printed when a test fails.
const TAIL_ON_FAILURE: usize = 40;

/// The example's directory in this repository.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("python-agent")
}

/// The Python agent, running.
#[derive(Debug)]
pub struct PythonAgent {
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    log: Arc<Mutex<Log>>,
    addr: SocketAddr,
}

/// What the agent printed: every line as text, and the stdout lines that are JSON objects.
#[derive(Debug, Default)]
struct Log {
    text: String,
    events: Vec<Value>,
}

impl PythonAgent {
    /// Starts `agent.py` with `AGENT_ADDR=127.0.0.1:0` and then `env` (nothing inherited),
    /// and waits until it logs its address. Panics, with its log, if it never does.
    pub async fn start(env: Vec<(String, String)>) -> Self {
        let python = python_in_venv().await;
        let mut child = agent_command(&python, &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("the Python agent does not start: {err}"));
        let log = Arc::new(Mutex::new(Log::default()));
        let (announce, announced) = mpsc::channel::<Value>();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            capture(stdout, Arc::clone(&log), Some(announce)),
            capture(stderr, Arc::clone(&log), None),
        ];
        let mut agent = Self {
            child: Some(child),
            readers,
            log,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let listening = tokio::task::spawn_blocking(move || announced.recv_timeout(STARTUP).ok())
            .await
            .expect("the log reader");
        let addr = listening
            .as_ref()
            .and_then(|line| line["addr"].as_str())
            .and_then(|addr| addr.parse().ok());
        let Some(addr) = addr else {
            let status = agent.kill_9();
            panic!(
                "the Python agent did not log a listening address (exit: {status:?}); log:\n{}",
                agent.log()
            );
        };
        agent.addr = addr;
        agent
    }

    /// Runs `agent.py` with exactly `env` until it exits by itself, for a start that must
    /// fail: its exit status and what it wrote to stderr. Panics if it keeps running.
    pub async fn run_to_exit(env: Vec<(String, String)>) -> (ExitStatus, String) {
        let python = python_in_venv().await;
        let child = tokio::process::Command::from(agent_command(&python, &env))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("the Python agent does not start: {err}"));
        let output = tokio::time::timeout(STARTUP, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("the Python agent kept running"))
            .expect("the exit status");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<address>`, what the gateway is configured with.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of the agent, as the gateway holds one.
    pub async fn client(&self) -> AgentBackendClient<Channel> {
        connect(&self.url()).await
    }

    /// Everything the agent printed so far, stdout and stderr.
    pub fn log(&self) -> String {
        self.lock().text.clone()
    }

    /// The events named `event` logged so far, in order.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.lock()
            .events
            .iter()
            .filter(|line| line["event"] == event)
            .cloned()
            .collect()
    }

    /// The events named `event` about run `run_id`.
    pub fn run_events(&self, event: &str, run_id: &str) -> Vec<Value> {
        self.events(event)
            .into_iter()
            .filter(|line| line["run_id"] == run_id)
            .collect()
    }

    /// Waits until an `event` line about `run_id` is logged; panics with the log if none is
    /// within [`PATIENCE`].
    pub async fn wait_for(&self, event: &str, run_id: &str) -> Value {
        let found = eventually_some(PATIENCE, || {
            let found = self.run_events(event, run_id).into_iter().next();
            async move { found }
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "the Python agent never logged `{event}` for run {run_id}; log:\n{}",
                self.log()
            )
        })
    }

    /// SIGKILL, mid-run if need be: the connection is reset by the kernel. Returns how the
    /// process ended.
    pub fn kill_9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        let status = child.wait().ok();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Drop for PythonAgent {
    fn drop(&mut self) {
        self.kill_9();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(TAIL_ON_FAILURE)..];
            eprintln!(
                "=== last {} log lines of the Python agent ===\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// A client of the agent backend at `url` (the agent's own, or a proxy's in front of it).
pub async fn connect(url: &str) -> AgentBackendClient<Channel> {
    let channel = Endpoint::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap_or_else(|err| panic!("the agent backend at {url} refuses connections: {err}"));
    AgentBackendClient::new(channel)
}

/// `agent.py` under `python` with `AGENT_ADDR=127.0.0.1:0`, then `env`, and nothing else.
fn agent_command(python: &Path, env: &[(String, String)]) -> Command {
    let mut command = Command::new(python);
    command
        .arg(example_dir().join("agent.py"))
        .env_clear()
        .env("AGENT_ADDR", "127.0.0.1:0")
        // The example's directory stays as committed: no `__pycache__` beside the sources.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    command
}

/// A thread appending `stream`'s lines to the log; the stdout one also announces the
/// listening line.
fn capture(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<Log>>,
    announce: Option<mpsc::Sender<Value>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let json = announce
                .as_ref()
                .and_then(|_| serde_json::from_str::<Value>(&line).ok())
                .filter(Value::is_object);
            if let (Some(announce), Some(json)) = (&announce, &json)
                && json["event"] == "listening"
            {
                let _ = announce.send(json.clone());
            }
            let mut log = log.lock().unwrap_or_else(|poison| poison.into_inner());
            log.text.push_str(&line);
            log.text.push('\n');
            log.events.extend(json);
        }
    })
}

/// The venv's interpreter, the venv made first if need be (once per test process).
async fn python_in_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    tokio::task::spawn_blocking(|| VENV.get_or_init(make_venv).join("bin").join("python"))
        .await
        .expect("the venv is made")
}

/// The venv for the current `requirements.txt` and interpreter, made if it does not exist.
fn make_venv() -> PathBuf {
    let system_python = std::env::var("TOLLGATE_PYTHON").unwrap_or_else(|_| "python3".into());
    let requirements = example_dir().join("requirements.txt");
    let pinned = std::fs::read(&requirements)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", requirements.display()));
    let version = run(
        Command::new(&system_python).arg("--version"),
        "find the Python interpreter (install python3 with its venv module and pip, or set \
         TOLLGATE_PYTHON)",
    );
    // A cache key, not a security boundary: SipHash with its fixed keys is stable enough.
    let mut hasher = DefaultHasher::new();
    pinned.hash(&mut hasher);
    version.hash(&mut hasher);
    let name = format!("tollgate-python-agent-{:016x}", hasher.finish());
    let venv = std::env::temp_dir().join(&name);
    if venv.join("bin").join("python").is_file() {
        return venv;
    }
    let staging = Staging(std::env::temp_dir().join(format!(
        "{name}.staging-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )));
    run(
        Command::new(&system_python)
            .args(["-m", "venv"])
            .arg(&staging.0),
        "create a venv (on Debian and Ubuntu: apt-get install python3-venv)",
    );
    let python = staging.0.join("bin").join("python");
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(["--only-binary=:all:", "--timeout", "30", "--quiet", "-r"])
            .arg(&requirements),
        "install the Python agent's requirements with pip",
    );
    run(
        Command::new(&python).args(["-c", "import grpc, grpc_tools, jwt, cryptography"]),
        "import the installed requirements",
    );
    // Another test process may have won the race: then its venv is the one to use.
    if let Err(err) = std::fs::rename(&staging.0, &venv) {
        assert!(
            venv.join("bin").join("python").is_file(),
            "cannot move the new venv to {}: {err}",
            venv.display()
        );
    }
    venv
}

/// A venv being built; removed on drop unless it was moved into place (a failed or losing
/// build leaves nothing behind).
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `command` to completion; panics, saying what it was for, if it cannot start or fails.
/// Returns what it printed.
fn run(command: &mut Command, purpose: &str) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot {purpose}: {command:?} does not run: {err}"));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "cannot {purpose}: {command:?} failed ({}):\n{printed}",
        output.status
    );
    printed
}
