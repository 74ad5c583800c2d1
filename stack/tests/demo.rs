#![allow(clippy::unwrap_used)]

//! The README's promise: the stack starts on the embedded default with nothing else running,
//! and the demo walks register → connect → agent run → published event against it.

use tollgate::{
    credentials::Credentials,
    demo::{Target, play},
    stack::{Options, Stack},
};
use tollgate_shared::shutdown::Shutdown;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_walks_the_whole_path_on_the_embedded_stack() {
    let data = tempfile::tempdir().unwrap();
    let stack = Stack::start(Options::ephemeral(data.path()), Shutdown::new())
        .await
        .unwrap();
    // The credentials file a developer's backend would read holds the live secret.
    assert_eq!(
        Credentials::read_backend_secret(data.path()).as_deref(),
        Some(stack.backend_secret())
    );
    let target = Target {
        auth: stack.endpoints().auth_http.to_string(),
        gateway: stack.endpoints().gateway.to_string(),
        backend_secret: stack.backend_secret().to_owned(),
    };
    let mut narration = Vec::new();
    play(&target, &mut narration).await.unwrap();
    let narration = String::from_utf8(narration).unwrap();
    for expected in [
        "\"type\":\"connected\"",
        "\"type\":\"tool_completed\"",
        "\"code\":\"plan_required\"",
        "\"type\":\"agent_completed\"",
        "\"type\":\"event\"",
    ] {
        assert!(
            narration.contains(expected),
            "{expected} missing:\n{narration}"
        );
    }
    assert!(!narration.contains(stack.backend_secret()));
    stack.stop().await.unwrap();
}

/// The signing keys are sealed under a key the stack keeps in its data directory, so a restart
/// on the same directory opens them again: the same key signs and issued tokens stay valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_data_directory_keeps_the_signing_keys() {
    let data = tempfile::tempdir().unwrap();
    let jwks = |stack: &Stack| {
        let url = format!(
            "http://{}/.well-known/jwks.json",
            stack.endpoints().auth_http
        );
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let first = Stack::start(Options::ephemeral(data.path()), Shutdown::new())
        .await
        .unwrap();
    let before = jwks(&first).await;
    first.stop().await.unwrap();
    let key_file = data.path().join(tollgate::key_encryption::FILE_NAME);
    let key = std::fs::read_to_string(&key_file).unwrap();

    let second = Stack::start(Options::ephemeral(data.path()), Shutdown::new())
        .await
        .unwrap();
    assert_eq!(jwks(&second).await, before);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    second.stop().await.unwrap();
}
