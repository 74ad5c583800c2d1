//! SIGTERM to a gateway under load: clients running agents one after another while a backend
//! publishes events to them. The gateway drains as the contract says (CONTRACT §1): every
//! client gets 1001, the process exits 0 within its grace period, and the ledger holds every
//! run a client saw start, no more than it asked for.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tollgate_integration::{invariants::TOOL_CALLS, *};

const CLIENTS: usize = 6;
const GRACE: Duration = Duration::from_secs(10);

/// What one client has seen so far.
#[derive(Debug, Default)]
struct Progress {
    runs_completed: AtomicUsize,
    events: AtomicUsize,
}

/// The run a client is waiting on.
struct Pending {
    id: String,
    started: bool,
    tool_ran: bool,
}

/// Runs agents (one tool each) back to back until the connection ends; answers the close
/// code.
async fn run_until_closed(
    mut client: WsClient,
    user: String,
    acknowledgements: Acknowledgements,
    progress: Arc<Progress>,
) -> Option<u16> {
    let mut pending: Option<Pending> = None;
    for n in 0.. {
        if pending.is_none() {
            let id = format!("run-{n}");
            client.run_agent(&id, "what is 6*7?", &["calculator"]).await;
            pending = Some(Pending {
                id,
                started: false,
                tool_ran: false,
            });
        }
        let frame = match client.recv().await {
            Received::Json(frame) => frame,
            Received::Close(code) => {
                match pending {
                    // Cut off before its answer: it may have been counted, and a counted run
                    // starts on the node whether or not its connection is still there, so
                    // its tool may have been counted too.
                    Some(run) if !run.started => {
                        acknowledgements.unanswered(&user, &run.id);
                        acknowledgements.uncertain(&user, TOOL_CALLS, 1);
                    }
                    // Cut off mid-run: its tool may have been counted and never shown.
                    Some(run) if !run.tool_ran => acknowledgements.uncertain(&user, TOOL_CALLS, 1),
                    _ => {}
                }
                return code;
            }
            Received::End => panic!("the connection ended without a close frame"),
        };
        acknowledgements.observe(&user, &frame);
        let Some(run) = pending.as_mut() else {
            continue;
        };
        match frame["type"].as_str().unwrap_or_default() {
            "event" => {
                progress.events.fetch_add(1, Ordering::Relaxed);
            }
            "agent_started" => run.started = true,
            "tool_executing" => run.tool_ran = true,
            "agent_completed" => {
                progress.runs_completed.fetch_add(1, Ordering::Relaxed);
                pending = None;
            }
            "error" | "rate_limited" if frame["run_id"].is_null() => pending = None,
            _ => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_every_client_with_1001_and_exits_0() {
    let mut cluster = Cluster::builder()
        .gateway_env("GATEWAY_AGENT_THINK_DELAY", "50ms")
        .gateway_env("GATEWAY_SHUTDOWN_GRACE", "10s")
        .start()
        .await;
    let users = cluster.register_many(CLIENTS).await;
    let acknowledgements = Acknowledgements::default();
    let gateway = cluster.gateway();
    let addr = gateway.http_addr();
    let mut drivers = Vec::new();
    let mut progress = Vec::new();
    for user in &users {
        acknowledgements.track(&user.user_id);
        let (client, _) = WsClient::connected(gateway, &user.access_token).await;
        let seen = Arc::new(Progress::default());
        progress.push(Arc::clone(&seen));
        drivers.push(tokio::spawn(run_until_closed(
            client,
            user.user_id.clone(),
            acknowledgements.clone(),
            seen,
        )));
    }
    // A backend publishing to every user until the gateway is gone.
    let token = cluster.publish_token().await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (stop, ids) = (
            Arc::clone(&stop),
            users.iter().map(|u| u.user_id.clone()).collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            for n in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    return n;
                }
                let user_id = &ids[n as usize % ids.len()];
                let body = json!({"user_id": user_id, "data": {"n": n}});
                let _ = try_publish(addr, Some(&token), &body).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            0
        })
    };
    let loaded = eventually(PATIENCE, || async {
        progress.iter().all(|seen| {
            seen.runs_completed.load(Ordering::Relaxed) >= 2
                && seen.events.load(Ordering::Relaxed) >= 2
        })
    })
    .await;
    assert!(loaded, "the load never got going: {progress:?}");

    cluster.gateways[0].sigterm();
    for driver in drivers {
        let code = driver.await.expect("a client task");
        assert_eq!(
            code,
            Some(1001),
            "a client was not told the server is going away"
        );
    }
    let exit = cluster.gateways[0]
        .exited(GRACE + Duration::from_secs(10))
        .await
        .expect("the gateway did not exit within its grace period");
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    stop.store(true, Ordering::Relaxed);
    assert!(publisher.await.expect("the publisher") > 0);
    assert_ledger_matches(&cluster, &acknowledgements).await;
    for user in &users {
        let runs = acknowledgements.tally(&user.user_id, "agent_runs");
        assert!(runs.acknowledged >= 2, "{runs:?}");
    }
    // The log is read by a thread of its own, which may still be catching up with the exit.
    let gateway = &cluster.gateways[0];
    let stopped = eventually_some(Duration::from_secs(10), || async {
        gateway.log().contains("ws-gateway stopped").then_some(())
    })
    .await;
    assert!(stopped.is_some(), "{}", gateway.log());
}
