//! Seed batch 4, the business rules as a connected user meets them: the plan's connection cap
//! and tools, upgrades and downgrades taking effect on the next request, roles and
//! delegations deciding which tools run, the message rate limit, and billing that matches
//! what the user was told, down to the quota's last unit and the plan that would lift it.

use serde_json::Value;
use tollgate_integration::*;

/// Runs the demo agent with `tools` and answers the run's frames.
async fn run(client: &mut WsClient, id: &str, tools: &[&str]) -> Vec<Value> {
    client
        .run_agent(id, "visit https://example.com and add 2+2", tools)
        .await;
    client.transcript(id).await
}

fn denial<'a>(frames: &'a [Value], code: &str) -> &'a Value {
    frames
        .iter()
        .find(|frame| frame["type"] == "error" && frame["code"] == code)
        .unwrap_or_else(|| panic!("no `{code}` in {frames:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_cap_connections_and_tools_and_a_plan_change_applies_to_the_next_request() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    let user = cluster.register().await;
    let (mut client, connected) = WsClient::connected(gateway, &user.access_token).await;
    assert_eq!(connected["plan"], "free");
    let (_second, _) = WsClient::connected(gateway, &user.access_token).await;
    let refused = WsClient::connect(gateway, Present::Header(&user.access_token))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.status, refused.code()),
        (429, "too_many_connections")
    );
    assert!(refused.retry_after.is_some());

    // A pro tool on free is refused without running, naming the plan that has it; the run
    // goes on with the tools it may use.
    let frames = run(&mut client, "run-free", &["web_browse", "calculator"]).await;
    let refused = denial(&frames, "plan_required");
    assert_eq!(
        (refused["upgrade_to"].as_str(), refused["id"].as_str()),
        (Some("pro"), Some("run-free"))
    );
    assert_eq!(refused["run_id"], frames[0]["run_id"]);
    assert_eq!(
        kinds(&frames)
            .iter()
            .filter(|kind| **kind == "tool_completed")
            .count(),
        1
    );
    assert_eq!(kinds(&frames).last(), Some(&"agent_completed"));

    // Upgraded: the same connection may use the tool at once, and more connections fit.
    cluster.change_plan(&user.user_id, "pro").await;
    let frames = run(&mut client, "run-pro", &["web_browse"]).await;
    assert_eq!(
        kinds(&frames)[2..4],
        ["tool_executing", "tool_completed"],
        "{frames:?}"
    );
    let (_third, connected) = WsClient::connected(gateway, &user.access_token).await;
    assert_eq!(connected["plan"], "pro");

    // Downgraded (at once, as asked): refused again.
    cluster.change_plan(&user.user_id, "free").await;
    let frames = run(&mut client, "run-downgraded", &["web_browse"]).await;
    denial(&frames, "plan_required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_delegations_decide_which_tools_run() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    let (viewer, member, admin) = (
        cluster.register().await,
        cluster.register().await,
        cluster.register().await,
    );
    cluster.assign_role(&viewer.user_id, "viewer").await;
    cluster.assign_role(&admin.user_id, "admin").await;

    let (mut client, connected) = WsClient::connected(gateway, &viewer.access_token).await;
    assert_eq!(connected["roles"], serde_json::json!(["viewer"]));
    // A viewer may search but not calculate.
    let frames = run(&mut client, "run-viewer", &["search", "calculator"]).await;
    denial(&frames, "forbidden_tool");
    assert_eq!(
        kinds(&frames)
            .iter()
            .filter(|kind| **kind == "tool_completed")
            .count(),
        1
    );
    // Roles inherit: an admin holds everything a member holds.
    let (mut admins, _) = WsClient::connected(gateway, &admin.access_token).await;
    let frames = run(&mut admins, "run-admin", &["calculator"]).await;
    assert!(kinds(&frames).contains(&"tool_completed"), "{frames:?}");

    // A member lends the viewer the calculator: the viewer's next run uses it.
    let lent = cluster
        .delegate(&member.user_id, &viewer.user_id, "tool:calculator")
        .await;
    lent.unwrap();
    let frames = run(&mut client, "run-lent", &["calculator"]).await;
    assert!(kinds(&frames).contains(&"tool_completed"), "{frames:?}");
    // Nobody lends what it does not hold.
    let status = cluster
        .delegate(&viewer.user_id, &member.user_id, "admin:audit")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_rate_limited_by_plan_and_persistent_abuse_closes_with_4008() {
    let cluster = Cluster::start().await;
    let gateway = cluster.gateway();
    let (free, pro) = (cluster.register().await, cluster.register().await);
    cluster.change_plan(&pro.user_id, "pro").await;
    let acknowledgements = Acknowledgements::default();
    let (mut client, _) = WsClient::connected(gateway, &free.access_token).await;
    let (mut pros, _) = WsClient::connected(gateway, &pro.access_token).await;

    // The free plan's burst is 30 messages; the bucket refills one every two seconds, so a
    // slow machine may see one more pass before the first refusal.
    let mut answered = 0;
    let limited = loop {
        let reply = client.metered(&format!("m{answered}")).await;
        acknowledgements.observe(&free.user_id, &reply);
        if !is_counted(&reply) {
            break reply;
        }
        answered += 1;
        assert!(answered <= 40, "no rate limit after {answered} messages");
    };
    assert!(answered >= 30, "limited after {answered} messages");
    assert_eq!(limited["type"], "rate_limited", "{limited}");
    assert_eq!(limited["id"], format!("m{answered}"));
    assert!(
        limited["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{limited}"
    );
    // Four more at once make five violations in a row: the connection is closed.
    for n in 0..4 {
        let message =
            serde_json::json!({"type": "cancel_run", "id": format!("more-{n}"), "run_id": "none"});
        assert!(client.try_send_json(message).await);
    }
    assert_eq!(client.closed().await, 4008);
    // The pro plan's limit is ten times higher.
    for n in 0..40 {
        let reply = pros.metered(&format!("p{n}")).await;
        acknowledgements.observe(&pro.user_id, &reply);
        assert!(is_counted(&reply), "pro message {n}: {reply}");
    }
    // Nothing was billed: messages are rate-only.
    assert_ledger_matches(&cluster, &acknowledgements).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_matches_what_users_were_told_and_an_exhausted_quota_names_the_upgrade() {
    let cluster = Cluster::start().await;
    let user = cluster.register().await;
    let acknowledgements = Acknowledgements::default();
    acknowledgements.track(&user.user_id);
    let (mut client, _) = WsClient::connected(cluster.gateway(), &user.access_token).await;
    for n in 0..3 {
        for frame in run(&mut client, &format!("run-{n}"), &["calculator"]).await {
            acknowledgements.observe(&user.user_id, &frame);
        }
    }
    assert_ledger_matches(&cluster, &acknowledgements).await;
    let usage = cluster.usage_of(&user.user_id).await;
    assert_eq!((usage["agent_runs"], usage["tool_calls"]), (3, 3));

    // Another service spends the rest of the month's runs (idempotently: a retry is free).
    let rest = 100 - usage["agent_runs"];
    let spend = key();
    for _ in 0..2 {
        let answer = cluster
            .consume(&user.user_id, "agent_runs", rest, &spend)
            .await;
        assert!(answer.unwrap().allowed);
    }
    acknowledgements.consumed(&user.user_id, "agent_runs", rest, &Ok(allowed()));
    let frames = run(&mut client, "run-over", &["calculator"]).await;
    for frame in &frames {
        acknowledgements.observe(&user.user_id, frame);
    }
    assert_eq!(kinds(&frames), ["error"], "{frames:?}");
    let over = &frames[0];
    assert_eq!(
        (over["code"].as_str(), over["upgrade_to"].as_str()),
        (Some("quota_exceeded"), Some("pro"))
    );
    assert_eq!(cluster.usage_of(&user.user_id).await["agent_runs"], 100);
    // The upgrade it named lifts the quota at once.
    cluster.change_plan(&user.user_id, "pro").await;
    for frame in run(&mut client, "run-upgraded", &["calculator"]).await {
        acknowledgements.observe(&user.user_id, &frame);
    }
    assert_ledger_matches(&cluster, &acknowledgements).await;
    assert_eq!(
        acknowledgements
            .tally(&user.user_id, "agent_runs")
            .acknowledged,
        101
    );
}

fn allowed() -> tollgate_proto::usage::v1::ConsumeResponse {
    tollgate_proto::usage::v1::ConsumeResponse {
        allowed: true,
        ..Default::default()
    }
}
