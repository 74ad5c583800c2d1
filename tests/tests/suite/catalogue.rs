//! usage-service started with a bad catalogue (`USAGE_PLANS_FILE`) refuses to start: a non-zero
//! exit and one line naming the file's problem, before it reaches any dependency.

use tollgate_integration::*;

/// A plans file whose tool costs a meter it never declares.
const BAD_CATALOGUE: &str = r#"
[[meters]]
name = "words"

[[tools]]
name = "word_count"
meter = "wrods"
amount = 2

[[plans]]
id = "free"
max_connections = 2
tools = ["word_count"]
[plans.limits]
messages = { per_minute = 30 }
words = { per_day = 5 }
"#;

#[tokio::test]
async fn usage_service_with_a_bad_catalogue_exits_with_one_line() {
    let path = std::env::temp_dir().join(format!("plans-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, BAD_CATALOGUE).unwrap();
    let env = vec![
        ("USAGE_PLANS_FILE".to_owned(), path.display().to_string()),
        ("USAGE_GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("USAGE_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
    ];
    let (status, stderr) = Service::run_to_exit(Binary::Usage, env).await;
    std::fs::remove_file(&path).unwrap();
    assert!(!status.success(), "started with a bad catalogue: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("USAGE_PLANS_FILE"), "{stderr}");
    assert!(
        lines[0].contains("tool `word_count`: meter `wrods` is not declared"),
        "{stderr}"
    );
}
