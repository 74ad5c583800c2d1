//! Parsing: every message type with its id, and each way a frame can be bad.

use std::collections::BTreeMap;

use super::{run::RunFields, *};

#[test]
fn valid_messages_parse_with_their_ids() {
    assert_eq!(
        Command::parse(r#"{"type":"ping","id":"a1"}"#),
        Ok(Command::Ping(Ping {
            id: Some(RequestId::Text("a1".into()))
        }))
    );
    assert_eq!(
        Command::parse(r#"{"type":"auth","token":"t"}"#),
        Ok(Command::Auth(Auth {
            id: None,
            token: "t".into(),
            since: None,
        }))
    );
    let Ok(Command::Auth(auth)) = Command::parse(r#"{"type":"auth","token":"t","since":4}"#) else {
        panic!("an auth frame with since")
    };
    assert_eq!(
        auth.since().unwrap().map(crate::history::Since::get),
        Some(4)
    );
    for bad in [r#""4""#, "-4", "4.5"] {
        let frame = format!(r#"{{"type":"auth","token":"t","since":{bad}}}"#);
        let Ok(Command::Auth(auth)) = Command::parse(&frame) else {
            panic!("{frame}")
        };
        assert!(auth.since().is_err(), "{frame}");
    }
    assert_eq!(
        Command::parse(r#"{"type":"refresh_token","id":2,"token":"t2"}"#),
        Ok(Command::RefreshToken(RefreshToken {
            id: Some(RequestId::Number(2.into())),
            token: "t2".into()
        }))
    );
    assert_eq!(
        Command::parse(
            r#"{"type":"run_agent","id":7,"agent":"demo","input":"2+2","tools":["calculator"]}"#
        ),
        Ok(Command::RunAgent(RunAgent {
            id: Some(RequestId::Number(7.into())),
            fields: RunFields {
                agent: "demo".into(),
                input: "2+2".into(),
                tools: vec!["calculator".into()],
                metadata: BTreeMap::new(),
                run_id: None,
            }
        }))
    );
    let chosen = "0197a3c2-e0f4-7c1b-9d5e-8f6a7b8c9d0e";
    assert!(matches!(
        Command::parse(&format!(
            r#"{{"type":"run_agent","agent":"demo","input":"hi","run_id":"{chosen}"}}"#
        )),
        Ok(Command::RunAgent(RunAgent { fields: RunFields { run_id: Some(id), .. }, .. })) if id == chosen
    ));
    assert_eq!(
        Command::parse(r#"{"type":"cancel_run","run_id":"r"}"#),
        Ok(Command::CancelRun(CancelRun {
            id: None,
            run_id: "r".into()
        }))
    );
}

#[test]
fn bad_frames_are_explained_and_keep_the_id() {
    let cases = [
        ("not json", "not a JSON object"),
        ("[1,2]", "not a JSON object"),
        (r#"{"id":"x"}"#, "missing field `type`"),
        (r#"{"type":5}"#, "`type` must be a string"),
        (r#"{"type":"launch"}"#, "unknown message type `launch`"),
        (r#"{"type":"auth"}"#, "missing field `token`"),
        (r#"{"type":"refresh_token"}"#, "missing field `token`"),
        (r#"{"type":"ping","extra":1}"#, "unknown field `extra`"),
        (r#"{"type":"auth","token":5}"#, "invalid type"),
        (
            r#"{"type":"run_agent","agent":"demo"}"#,
            "missing field `input`",
        ),
        (r#"{"type":"cancel_run"}"#, "missing field `run_id`"),
        (r#"{"type":"ping","id":true}"#, "`id` must be a string"),
    ];
    for (frame, expected) in cases {
        let err = Command::parse(frame).unwrap_err();
        assert!(err.message.contains(expected), "{frame}: {}", err.message);
    }
    let err = Command::parse(r#"{"type":"nope","id":"r1"}"#).unwrap_err();
    assert_eq!(err.id, Some(RequestId::Text("r1".into())));
    let long_id = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(200));
    assert!(Command::parse(&long_id).is_err());
    let long_type = format!(r#"{{"type":"{}\n"}}"#, "y".repeat(100));
    let err = Command::parse(&long_type).unwrap_err();
    assert!(
        err.message.len() < 80,
        "client input is cut: {}",
        err.message
    );
}

#[test]
fn tokens_never_show_in_debug_output() {
    for frame in [
        r#"{"type":"auth","token":"secret-token-123"}"#,
        r#"{"type":"refresh_token","token":"secret-token-123"}"#,
    ] {
        let command = Command::parse(frame).unwrap();
        let shown = format!("{command:?}");
        assert!(!shown.contains("secret-token-123"), "{shown}");
    }
}
