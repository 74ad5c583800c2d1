//! The Python backend behind the real gateway: a user's run reaches it through
//! `GATEWAY_AGENTS`, its tool is declared in the catalogue (costing 2 of a meter of its own), the
//! gateway's service token is checked against auth-service's JWKS, and the backend's own log
//! proves what it did.

use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};
use tollgate_integration::*;
use uuid::Uuid;

/// Free users may not call `word_count`; pro users may, at 2 `words` a call.
const CATALOGUE: &str = r#"
[[meters]]
name = "words"

[[tools]]
name = "word_count"
meter = "words"
amount = 2

[[plans]]
id = "free"
max_connections = 5
tools = ["calculator"]
[plans.limits]
messages = { per_minute = 600 }
agent_runs = { per_month = 100 }
tool_calls = { per_day = 200 }

[[plans]]
id = "pro"
max_connections = 5
tools = ["calculator", "word_count"]
[plans.limits]
messages = { per_minute = 600 }
agent_runs = { per_month = 100 }
tool_calls = { per_day = 200 }
words = { per_day = 100 }
"#;

struct Stack {
    cluster: Cluster,
    agent: PythonAgent,
    gateway: Service,
    _catalogue: Catalogue,
}

/// The catalogue file, removed with the test.
struct Catalogue(PathBuf);

impl Drop for Catalogue {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A cluster on [`CATALOGUE`], a Python backend streaming a delta every `delta_delay`, and a
/// gateway routing `python` to it.
async fn stack(delta_delay: Duration) -> Stack {
    let catalogue = Catalogue(std::env::temp_dir().join(format!("plans-{}.toml", Uuid::new_v4())));
    std::fs::write(&catalogue.0, CATALOGUE).expect("the catalogue file is written");
    let cluster = Cluster::builder()
        .usage_env("USAGE_PLANS_FILE", &catalogue.0.display().to_string())
        .start()
        .await;
    let agent = PythonAgent::start(vec![
        (
            "AUTH_JWKS_URL".into(),
            cluster.auth.http_url("/.well-known/jwks.json"),
        ),
        (
            "AGENT_DELTA_DELAY_MS".into(),
            delta_delay.as_millis().to_string(),
        ),
    ])
    .await;
    let mut env = cluster.gateway_env();
    env.push((
        "GATEWAY_AGENTS".into(),
        format!("demo=builtin,python={}", agent.url()),
    ));
    let gateway = Service::start(Binary::Gateway, env).await;
    gateway.ready().await;
    Stack {
        cluster,
        agent,
        gateway,
        _catalogue: catalogue,
    }
}

async fn client(stack: &Stack, plan: &str) -> (WsClient, User) {
    let user = stack.cluster.register().await;
    if plan != "free" {
        stack.cluster.change_plan(&user.user_id, plan).await;
    }
    let (client, _) = WsClient::connected(&stack.gateway, &user.access_token).await;
    (client, user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_backend_streams_a_run_in_order_and_its_tool_is_billed_by_the_catalogue() {
    let stack = stack(Duration::ZERO).await;
    let (mut client, user) = client(&stack, "pro").await;
    let input = "count these five words please";
    client.run("run-1", "python", input, &["word_count"]).await;
    let frames = client.transcript("run-1").await;

    assert_eq!(
        kinds(&frames),
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_delta",
            "agent_completed"
        ],
        "{frames:?}"
    );
    assert_eq!(frames[2]["input"], json!({"text": input}));
    assert_eq!(frames[3]["output"], json!({"words": 5}));
    let output = frames.last().unwrap()["output"].as_str().unwrap();
    assert_eq!(streamed(&frames), output);

    let run_id = frames[0]["run_id"].as_str().unwrap();
    let ran = stack.agent.run_events("tool_run", run_id);
    assert_eq!(ran.len(), 1, "the backend ran the tool once");
    let usage = stack.cluster.usage_of(&user.user_id).await;
    assert_eq!(usage["words"], 2, "one call at the catalogue's cost");
    assert_eq!(
        usage["tool_calls"], 0,
        "the tool is billed on its own meter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_tool_never_runs_on_the_backend() {
    let stack = stack(Duration::ZERO).await;
    let (mut client, user) = client(&stack, "free").await;
    client
        .run("run-1", "python", "count me", &["word_count"])
        .await;
    let frames = client.transcript("run-1").await;

    let denial = frames
        .iter()
        .find(|frame| frame["type"] == "error")
        .unwrap_or_else(|| panic!("a denial: {frames:?}"));
    assert_eq!(denial["code"], "plan_required");
    assert_eq!(denial["upgrade_to"], "pro");
    assert!(!kinds(&frames).contains(&"tool_executing"), "{frames:?}");
    assert_eq!(frames.last().unwrap()["type"], "agent_completed");

    let run_id = frames[0]["run_id"].as_str().unwrap();
    let decision = stack.agent.wait_for("tool_decision", run_id).await;
    assert_eq!(decision["allowed"], false);
    assert!(
        stack.agent.run_events("tool_run", run_id).is_empty(),
        "the backend's log shows the tool never ran:\n{}",
        stack.agent.log()
    );
    let usage = stack.cluster.usage_of(&user.user_id).await;
    assert_eq!(usage.get("words").copied().unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_python_backend() {
    let stack = stack(Duration::from_millis(500)).await;
    let (mut client, _) = client(&stack, "pro").await;
    client
        .run("run-1", "python", "a long answer is coming", &[])
        .await;
    let delta = client.next_of("agent_delta").await;
    let run_id = delta["run_id"].as_str().unwrap().to_owned();
    client
        .send_json(json!({"type": "cancel_run", "id": "c", "run_id": run_id}))
        .await;
    let frames = client.transcript("run-1").await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "run_cancelled",
        "{frames:?}"
    );
    stack.agent.wait_for("cancelled", &run_id).await;
    assert!(stack.agent.run_events("completed", &run_id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_python_backend_mid_run_gives_agent_failed() {
    let mut stack = stack(Duration::from_millis(500)).await;
    let (mut client, _) = client(&stack, "pro").await;
    client
        .run("run-1", "python", "a long answer is coming", &[])
        .await;
    client.next_of("agent_delta").await;
    stack.agent.kill_9();
    let frames = client.transcript("run-1").await;
    let last: &Value = frames.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["reason"].as_str()),
        (Some("agent_failed"), Some("backend_lost")),
        "{frames:?}"
    );
    let terminals = frames
        .iter()
        .filter(|f| matches!(f["type"].as_str(), Some("agent_completed" | "agent_failed")))
        .count();
    assert_eq!(terminals, 1, "{frames:?}");
}
