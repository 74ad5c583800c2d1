//! `tollgate demo`: a client that walks a newcomer through the whole path with the public
//! interfaces only (the JSON HTTP API, the WebSocket protocol and the publish API), printing
//! what it sends and what comes back. Every call has a timeout, so a broken stack fails the
//! demo with a message instead of hanging it.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::CloseFrame},
};
use tollgate_shared::shutdown::Shutdown;

use crate::{
    credentials::{BACKEND_CLIENT, Credentials},
    stack::{Options as StackOptions, Stack},
};

const PATIENCE: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Args)]
pub struct Options {
    /// auth-service's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub auth: String,

    /// ws-gateway's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway: String,

    /// The running stack's data directory, where the backend's credentials are.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = ".tollgate")]
    pub data_dir: PathBuf,
}

/// Where the demo talks to.
#[derive(Debug)]
pub struct Target {
    pub auth: String,
    pub gateway: String,
    pub backend_secret: String,
}

/// Plays the demo against a running stack, or against one it starts itself when nothing
/// answers at the given addresses.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let running = TcpStream::connect(&options.gateway).await.is_ok()
        && TcpStream::connect(&options.auth).await.is_ok();
    if running {
        let backend_secret =
            Credentials::read_backend_secret(&options.data_dir).with_context(|| {
                format!("no credentials in {:?}: pass --data-dir", options.data_dir)
            })?;
        println!(
            "Using the stack at {} and {}.",
            options.auth, options.gateway
        );
        let target = Target {
            auth: options.auth,
            gateway: options.gateway,
            backend_secret,
        };
        return play(&target, &mut std::io::stdout()).await;
    }
    println!(
        "Nothing listens at {}: starting a stack for the demo.",
        options.gateway
    );
    let data = std::env::temp_dir().join(format!("tollgate-demo-{}", std::process::id()));
    let stack = Stack::start(StackOptions::ephemeral(&data), Shutdown::new()).await?;
    let target = Target {
        auth: stack.endpoints().auth_http.to_string(),
        gateway: stack.endpoints().gateway.to_string(),
        backend_secret: stack.backend_secret().to_owned(),
    };
    let played = play(&target, &mut std::io::stdout()).await;
    stack.stop().await?;
    let _ = std::fs::remove_dir_all(&data);
    played
}

/// The walk-through. Writes its narration to `out`; fails on the first step that does not
/// behave as the contract says.
pub async fn play(target: &Target, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(PATIENCE).build()?;
    let auth = format!("http://{}", target.auth);
    let gateway = format!("http://{}", target.gateway);

    let email = format!(
        "demo-{}@example.com",
        std::process::id() ^ rand::random::<u32>()
    );
    let registered = post_json(
        &http,
        &format!("{auth}/v1/register"),
        &json!({"email": email, "password": "correct horse battery staple"}),
    )
    .await?;
    let user_id = registered["user_id"]
        .as_str()
        .context("no user_id")?
        .to_owned();
    let access = registered["access_token"]
        .as_str()
        .context("no access_token")?;
    writeln!(
        out,
        "1. POST /v1/register {email}: user {user_id}, an access token for 15 min"
    )?;

    let mut socket = wait_for_gateway(target, access).await?;
    let connected = next_json(&mut socket).await?;
    expect_type(&connected, "connected")?;
    writeln!(
        out,
        "2. GET /ws with Authorization: Bearer …  ← {connected}"
    )?;

    let run = json!({
        "type": "run_agent", "id": "demo-1", "agent": "demo",
        "input": "What is (2 + 3) * 4? And how does rate limiting work?",
        "tools": ["calculator", "search", "web_browse"],
    });
    writeln!(out, "3. → {run}")?;
    send(&mut socket, &run).await?;
    loop {
        let event = next_json(&mut socket).await?;
        writeln!(out, "   ← {event}")?;
        if event["type"] == "agent_completed" {
            break;
        }
        if event["type"] == "error" && event["code"] != "plan_required" {
            bail!("the run failed: {event}");
        }
    }
    writeln!(
        out,
        "   (web_browse is a pro tool: the free plan gets plan_required and the run goes on)"
    )?;

    let token = service_token(&http, &auth, &target.backend_secret).await?;
    let published = http
        .post(format!("{gateway}/v1/publish"))
        .bearer_auth(&token)
        .json(&json!({"user_id": user_id, "data": {"hello": "from your backend"}}))
        .send()
        .await?;
    if published.status() != reqwest::StatusCode::ACCEPTED {
        bail!("POST /v1/publish answered {}", published.status());
    }
    writeln!(
        out,
        "4. POST /v1/publish as the `backend` client: 202 Accepted"
    )?;
    let event = next_json(&mut socket).await?;
    expect_type(&event, "event")?;
    writeln!(out, "   ← {event}")?;

    socket
        .close(Some(CloseFrame {
            code: 1000.into(),
            reason: "demo done".into(),
        }))
        .await?;
    writeln!(
        out,
        "5. closed with 1000. That is the whole path; see the README for more."
    )?;
    Ok(())
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects once the gateway is ready (it waits for auth-service's keys after a start).
async fn wait_for_gateway(target: &Target, access: &str) -> anyhow::Result<Socket> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut request = format!("ws://{}/ws", target.gateway).into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {access}").parse()?);
        match tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request)).await {
            Ok(Ok((socket, _))) => return Ok(socket),
            Ok(Err(err)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %err, "the gateway is not ready yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(err)) => return Err(err).context("connecting to the gateway"),
            Err(_) => bail!("the gateway did not answer the upgrade"),
        }
    }
}

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = http.post(url).json(body).send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url} answered {status}: {body}");
    }
    Ok(body)
}

async fn service_token(http: &reqwest::Client, auth: &str, secret: &str) -> anyhow::Result<String> {
    let form = format!(
        "grant_type=client_credentials&client_id={BACKEND_CLIENT}&client_secret={secret}\
         &audience=ws-gateway&scope=publish"
    );
    let response = http
        .post(format!("{auth}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST /oauth/token answered {status}: {}", body["error"]);
    }
    Ok(body["access_token"]
        .as_str()
        .context("no access_token")?
        .to_owned())
}

async fn send(socket: &mut Socket, message: &Value) -> anyhow::Result<()> {
    tokio::time::timeout(PATIENCE, socket.send(Message::text(message.to_string())))
        .await
        .context("sending timed out")??;
    Ok(())
}

async fn next_json(socket: &mut Socket) -> anyhow::Result<Value> {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .context("the gateway sent nothing for 15 s")?
            .context("the gateway closed the connection")??;
        match frame {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(frame) => bail!("the gateway closed the connection: {frame:?}"),
            _ => continue,
        }
    }
}

fn expect_type(message: &Value, expected: &str) -> anyhow::Result<()> {
    if message["type"] != expected {
        bail!("expected `{expected}`, got {message}");
    }
    Ok(())
}
