//! `DemoAgent::run` over channels, with a fake gateway on the other end.

use serde_json::json;
use tollgate_proto::agent::v1::Failed;

use super::*;
use crate::test_support::{
    Gateway, allow, cancel, deltas_and_output, deny, input_json, kinds, play_allowing_all,
    result_json, shape, start,
};

const INPUT: &str = "what is (2+3)*4? see https://docs.rs/tokio about websocket close codes";
const ALL: [&str; 4] = ["calculator", "search", "code_interpreter", "web_browse"];

fn gateway(agent: &DemoAgent) -> Gateway {
    Gateway::start(agent, 16, CancellationToken::new())
}

#[tokio::test]
async fn a_run_sends_every_message_in_order() {
    let (transcript, end) = play_allowing_all(INPUT, &ALL).await;
    assert_eq!(end, RunEnd::Completed);
    assert_eq!(
        shape(&transcript),
        [
            "thinking",
            "tool_request:1:calculator",
            "tool_result:1",
            "tool_request:2:search",
            "tool_result:2",
            "tool_request:3:code_interpreter",
            "tool_result:3",
            "tool_request:4:web_browse",
            "tool_result:4",
            "delta*",
            "completed",
        ]
    );
    let Kind::Thinking(thinking) = &transcript[0] else {
        panic!("{:?}", transcript[0]);
    };
    assert_eq!(
        thinking.thought,
        "Plan: use calculator, then search, then code_interpreter, then web_browse, \
         then summarise the results."
    );
    assert_eq!(input_json(&transcript, "1"), json!("(2+3)*4"));
    assert_eq!(
        result_json(&transcript, "1"),
        json!({"expression": "(2+3)*4", "value": 20})
    );
    assert_eq!(input_json(&transcript, "2"), json!(INPUT));
    assert_eq!(result_json(&transcript, "2")[0]["id"], "websocket-close");
    assert_eq!(result_json(&transcript, "3")["simulated"], true);
    assert_eq!(input_json(&transcript, "4"), json!("https://docs.rs/tokio"));
    assert_eq!(result_json(&transcript, "4")["title"], "Tokio - Docs.rs");

    let (deltas, output) = deltas_and_output(&transcript);
    assert_eq!(deltas, output, "the deltas spell out the answer exactly");
    assert!(
        output.starts_with("Tool results:\n- calculator: (2+3)*4 = 20\n- search: 3 result(s)"),
        "{output}"
    );
    assert_eq!(output.lines().count(), 5);
    let delta_count = kinds(&transcript).iter().filter(|k| *k == "delta").count();
    assert!(delta_count > 10, "word-sized deltas, not one blob");
}

#[tokio::test]
async fn a_denied_tool_is_never_run_and_the_answer_says_so() {
    let mut gateway = gateway(&DemoAgent::new());
    gateway
        .send(start(INPUT, &["web_browse", "calculator"]))
        .await;
    let transcript = gateway
        .play(|tool| (tool == "web_browse").then_some("plan_required"))
        .await;
    assert_eq!(gateway.end().await, RunEnd::Completed);
    assert_eq!(
        shape(&transcript),
        [
            "thinking",
            "tool_request:1:web_browse",
            "tool_request:2:calculator",
            "tool_result:2",
            "delta*",
            "completed",
        ],
        "no tool_result for the denied call"
    );
    let (_, output) = deltas_and_output(&transcript);
    assert_eq!(
        output,
        "Tool results:\n- web_browse: not run (plan_required)\n- calculator: (2+3)*4 = 20"
    );
}

#[tokio::test]
async fn a_denial_code_that_is_not_a_plain_code_is_not_echoed() {
    let mut gateway = gateway(&DemoAgent::new());
    gateway.send(start(INPUT, &["search"])).await;
    let transcript = gateway
        .play(|_| Some("<script>\n and a very long code that goes on"))
        .await;
    let (_, output) = deltas_and_output(&transcript);
    assert_eq!(output, "Tool results:\n- search: not run (denied)");
}

#[tokio::test]
async fn no_tools_means_the_input_is_echoed() {
    let (transcript, end) = play_allowing_all(INPUT, &[]).await;
    assert_eq!(end, RunEnd::Completed);
    assert_eq!(shape(&transcript), ["thinking", "delta*", "completed"]);
    let (deltas, output) = deltas_and_output(&transcript);
    assert_eq!(output, format!("No tools were used. You asked: {INPUT}"));
    assert_eq!(deltas, output);
}

#[tokio::test]
async fn a_tool_the_demo_does_not_implement_is_requested_and_answered_with_an_error() {
    let (transcript, end) = play_allowing_all("  count my words  ", &["word_count"]).await;
    assert_eq!(end, RunEnd::Completed);
    assert_eq!(
        shape(&transcript),
        [
            "thinking",
            "tool_request:1:word_count",
            "tool_result:1",
            "delta*",
            "completed"
        ]
    );
    assert_eq!(input_json(&transcript, "1"), json!("count my words"));
    assert_eq!(
        result_json(&transcript, "1"),
        json!({"error": "the demo agent does not implement word_count"})
    );
    let (_, output) = deltas_and_output(&transcript);
    assert_eq!(
        output,
        "Tool results:\n- word_count: not implemented by the demo agent"
    );
}

#[tokio::test]
async fn runs_are_deterministic() {
    let first = play_allowing_all(INPUT, &ALL).await;
    let second = play_allowing_all(INPUT, &ALL).await;
    assert_eq!(first, second);
}

#[tokio::test]
async fn a_cancel_while_waiting_for_a_decision_stops_the_run() {
    let mut gateway = gateway(&DemoAgent::new());
    gateway.send(start(INPUT, &["search", "calculator"])).await;
    assert!(matches!(gateway.recv().await, Some(Kind::Thinking(_))));
    assert!(matches!(gateway.recv().await, Some(Kind::ToolRequest(_))));
    gateway.send(cancel()).await;
    assert_eq!(gateway.recv().await, None, "nothing after the cancel");
    assert_eq!(
        gateway.end().await,
        RunEnd::Interrupted(Interrupted::Cancelled)
    );
}

#[tokio::test]
async fn a_cancel_during_the_think_delay_is_prompt() {
    let agent = DemoAgent::new().with_think_delay(Duration::from_secs(3600));
    let mut gateway = gateway(&agent);
    gateway.send(start(INPUT, &["search", "calculator"])).await;
    assert!(matches!(gateway.recv().await, Some(Kind::Thinking(_))));
    assert!(matches!(gateway.recv().await, Some(Kind::ToolRequest(_))));
    gateway.send(allow("1")).await;
    gateway.send(cancel()).await;
    let rest = tokio::time::timeout(Duration::from_secs(10), gateway.recv())
        .await
        .expect("the run stops without waiting out the delay");
    assert_eq!(rest, None, "no tool_result after the cancel");
    assert_eq!(
        gateway.end().await,
        RunEnd::Interrupted(Interrupted::Cancelled)
    );
}

#[tokio::test]
async fn a_cancel_while_the_outbound_channel_is_full_stops_the_run() {
    let mut gateway = Gateway::start(&DemoAgent::new(), 1, CancellationToken::new());
    gateway.send(start(INPUT, &[])).await;
    // The agent fills the one slot with `thinking`, then blocks on the first delta.
    let full = tokio::time::timeout(Duration::from_secs(10), async {
        while gateway.from_agent.is_empty() {
            tokio::task::yield_now().await;
        }
    });
    full.await.expect("the agent sends its plan");
    gateway.send(cancel()).await;
    assert!(matches!(gateway.recv().await, Some(Kind::Thinking(_))));
    assert_eq!(gateway.recv().await, None);
    assert_eq!(
        gateway.end().await,
        RunEnd::Interrupted(Interrupted::Cancelled)
    );
}

#[tokio::test]
async fn a_first_message_that_is_not_start_fails_the_run() {
    let odd_openings = [cancel(), allow("1"), GatewayMessage { kind: None }];
    for opening in odd_openings {
        let mut gateway = gateway(&DemoAgent::new());
        gateway.send(opening.clone()).await;
        gateway.send(start(INPUT, &[])).await;
        let failed = Kind::Failed(Failed {
            reason: "expected start".into(),
        });
        assert_eq!(gateway.recv().await, Some(failed), "after {opening:?}");
        assert_eq!(gateway.recv().await, None, "and nothing else");
        assert_eq!(gateway.end().await, RunEnd::Failed("expected start"));
    }
}

#[tokio::test]
async fn an_inbound_stream_that_ends_before_start_ends_the_run_quietly() {
    let mut gateway = gateway(&DemoAgent::new());
    gateway.close();
    assert_eq!(gateway.recv().await, None);
    assert_eq!(
        gateway.end().await,
        RunEnd::Interrupted(Interrupted::InboundEnded)
    );
}

#[tokio::test]
async fn an_inbound_stream_that_ends_mid_run_stops_it() {
    let mut gateway = gateway(&DemoAgent::new());
    gateway.send(start(INPUT, &["calculator", "search"])).await;
    assert!(matches!(gateway.recv().await, Some(Kind::Thinking(_))));
    assert!(matches!(gateway.recv().await, Some(Kind::ToolRequest(_))));
    gateway.close();
    assert_eq!(
        gateway.recv().await,
        None,
        "no decision can come: the run stops"
    );
    assert_eq!(
        gateway.end().await,
        RunEnd::Interrupted(Interrupted::InboundEnded)
    );
}

#[tokio::test]
async fn a_closed_outbound_channel_ends_the_run() {
    // Before anything is sent: the gateway is gone but its inbound stream stays open.
    let Gateway {
        to_agent,
        from_agent,
        run,
    } = gateway(&DemoAgent::new());
    drop(from_agent);
    let end = tokio::time::timeout(Duration::from_secs(10), run).await;
    assert_eq!(
        end.expect("returns").expect("no panic"),
        RunEnd::Interrupted(Interrupted::Disconnected)
    );
    drop(to_agent);

    // While waiting for a decision.
    let mut gateway = gateway(&DemoAgent::new());
    gateway.send(start(INPUT, &["search"])).await;
    assert!(matches!(gateway.recv().await, Some(Kind::Thinking(_))));
    assert!(matches!(gateway.recv().await, Some(Kind::ToolRequest(_))));
    let Gateway {
        to_agent,
        from_agent,
        run,
    } = gateway;
    drop(from_agent);
    let end = tokio::time::timeout(Duration::from_secs(10), run).await;
    assert_eq!(
        end.expect("returns without a decision").expect("no panic"),
        RunEnd::Interrupted(Interrupted::Disconnected)
    );
    drop(to_agent);
}

#[tokio::test]
async fn garbage_decisions_do_not_confuse_the_run() {
    let mut gateway = gateway(&DemoAgent::new());
    gateway.send(start(INPUT, &["calculator", "search"])).await;
    assert!(matches!(gateway.recv().await, Some(Kind::Thinking(_))));
    assert!(matches!(gateway.recv().await, Some(Kind::ToolRequest(_))));
    for garbage in [
        deny("2", "quota_exceeded"),
        deny("", "forbidden_tool"),
        allow("10"),
        GatewayMessage { kind: None },
        start("another run", &["web_browse"]),
    ] {
        gateway.send(garbage).await;
    }
    gateway.send(allow("1")).await;
    gateway.send(deny("1", "forbidden_tool")).await;
    let mut transcript = Vec::new();
    while let Some(kind) = gateway.recv().await {
        if matches!(&kind, Kind::ToolRequest(request) if request.call_id == "2") {
            gateway.send(allow("1")).await;
            gateway.send(deny("2", "quota_exceeded")).await;
            gateway.send(allow("2")).await;
        }
        transcript.push(kind);
    }
    assert_eq!(gateway.end().await, RunEnd::Completed);
    assert_eq!(
        shape(&transcript),
        [
            "tool_result:1",
            "tool_request:2:search",
            "delta*",
            "completed"
        ],
        "call 1 ran on its first decision, call 2 was denied by its first"
    );
    let (_, output) = deltas_and_output(&transcript);
    assert_eq!(
        output,
        "Tool results:\n- calculator: (2+3)*4 = 20\n- search: not run (quota_exceeded)"
    );
}

#[tokio::test]
async fn hostile_starts_are_bounded_and_do_not_panic() {
    let input = format!("{}{}", "(".repeat(1 << 19), "1+".repeat(1 << 18));
    let tools: Vec<&str> = ALL.iter().copied().cycle().take(100).collect();
    let (transcript, end) = play_allowing_all(&input, &tools).await;
    assert_eq!(end, RunEnd::Completed);
    let requests = kinds(&transcript)
        .iter()
        .filter(|kind| kind.starts_with("tool_request"))
        .count();
    assert_eq!(requests, crate::request::MAX_TOOLS);
    let (deltas, output) = deltas_and_output(&transcript);
    assert_eq!(deltas, output);

    let words = "1 ".repeat(8 * 1024);
    let (transcript, _) = play_allowing_all(&words, &["calculator"; 8]).await;
    let deltas = kinds(&transcript).iter().filter(|k| *k == "delta").count();
    assert!(deltas <= crate::answer::MAX_DELTAS, "{deltas} deltas");
}

#[tokio::test(start_paused = true)]
async fn a_decision_that_never_comes_fails_the_run() {
    let mut gateway = gateway(&DemoAgent::new());
    gateway.send(start(INPUT, &["search"])).await;
    assert!(matches!(gateway.recv().await, Some(Kind::Thinking(_))));
    assert!(matches!(gateway.recv().await, Some(Kind::ToolRequest(_))));
    let reason = "the gateway did not decide on a tool call in time";
    let failed = Kind::Failed(Failed {
        reason: reason.into(),
    });
    assert_eq!(gateway.recv().await, Some(failed));
    assert_eq!(gateway.recv().await, None);
    assert_eq!(gateway.end().await, RunEnd::Failed(reason));
}

#[tokio::test]
async fn stopping_the_server_fails_the_runs_in_flight() {
    let stop = CancellationToken::new();
    let mut gateway = Gateway::start(&DemoAgent::new(), 16, stop.clone());
    gateway.send(start(INPUT, &["search"])).await;
    assert!(matches!(gateway.recv().await, Some(Kind::Thinking(_))));
    assert!(matches!(gateway.recv().await, Some(Kind::ToolRequest(_))));
    stop.cancel();
    let reason = "the agent is shutting down";
    let failed = Kind::Failed(Failed {
        reason: reason.into(),
    });
    assert_eq!(gateway.recv().await, Some(failed));
    assert_eq!(gateway.recv().await, None);
    assert_eq!(gateway.end().await, RunEnd::Failed(reason));
}

#[tokio::test]
async fn the_public_run_serves_a_whole_run() {
    let (to_agent, inbound) = tokio::sync::mpsc::channel(8);
    let (outbound, mut from_agent) = tokio::sync::mpsc::channel(64);
    let inbound = tokio_stream::wrappers::ReceiverStream::new(inbound);
    let agent = DemoAgent::new();
    let run = agent.run(inbound, outbound);
    let gateway = async {
        to_agent.send(start("2+2", &["calculator"])).await.unwrap();
        let mut transcript = Vec::new();
        while let Some(kind) = from_agent.recv().await.and_then(|message| message.kind) {
            if let Kind::ToolRequest(request) = &kind {
                to_agent.send(allow(&request.call_id)).await.unwrap();
            }
            transcript.push(kind);
        }
        transcript
    };
    let both = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(run, gateway)
    });
    let ((), transcript) = both.await.expect("the run returns");
    let (_, output) = deltas_and_output(&transcript);
    assert_eq!(output, "Tool results:\n- calculator: 2+2 = 4");
}
