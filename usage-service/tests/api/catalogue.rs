//! Teams plug in their own tools and meters by declaring them in the catalogue file: the
//! service answers for them exactly as for the built-in ones (costs, quotas, rate-only meters,
//! roles, delegations), and refuses names the catalogue does not declare.

use std::io::Write;

use tollgate_proto::usage::v1::{self as pb, DenyReason, ListPlansRequest};
use tollgate_shared::time::unix_now;
use tonic::Code;
use usage_service::{Application, Config, catalogue::Catalogue};

use crate::{
    access::{assign, delegate, roles_and_permissions},
    both_backends,
    helpers::*,
};

/// A team's catalogue: `word_count` costs 2 `words` (5 a day on free), `pings` are rate-only,
/// `deploy` is for admins, `summarize` only on the dearer plan.
const TEAM_CATALOGUE: &str = r#"
[[meters]]
name = "words"

[[meters]]
name = "pings"
billable = false

[[tools]]
name = "word_count"
meter = "words"
amount = 2

[[tools]]
name = "deploy"
role = "admin"

[[plans]]
id = "free"
name = "Free"
max_connections = 2
tools = ["search", "word_count", "deploy"]
[plans.limits]
messages = { per_minute = 30 }
words = { per_day = 5 }
pings = { per_minute = 3 }

[[plans]]
id = "team"
name = "Team"
max_connections = 5
tools = ["search", "word_count", "deploy", "summarize"]
[plans.limits]
messages = { per_minute = 300 }
words = { per_day = 50 }
"#;

/// A catalogue file holding `text`, removed when dropped.
fn catalogue_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

async fn spawn_with_catalogue(backend: Backend) -> (TestApp, tempfile::NamedTempFile) {
    let file = catalogue_file(TEAM_CATALOGUE);
    let path = file.path().to_owned();
    let app = TestApp::spawn_with(backend, |config| config.plans_file = Some(path)).await;
    (app, file)
}

async fn list_plans(app: &TestApp) -> pb::ListPlansResponse {
    app.client()
        .list_plans(app.check(ListPlansRequest {}))
        .await
        .unwrap()
        .into_inner()
}

async fn a_custom_tool_costs_its_own_meter_and_its_quota_holds(backend: Backend) {
    let (app, _file) = spawn_with_catalogue(backend).await;
    let user = new_user();

    let allowed = app.authorize(&user, "tool:word_count").await.unwrap();
    assert!(allowed.allowed, "{allowed:?}");
    assert_eq!((allowed.meter.as_str(), allowed.amount), ("words", 2));
    // A tool without an entry costs one tool call.
    let search = app.authorize(&user, "tool:search").await.unwrap();
    assert_eq!(
        (search.allowed, search.meter.as_str(), search.amount),
        (true, "tool_calls", 1)
    );
    // A denial says nothing about cost.
    let missing = app.authorize(&user, "tool:summarize").await.unwrap();
    assert_eq!(
        (
            missing.allowed,
            missing.reason(),
            missing.upgrade_to.as_deref()
        ),
        (false, DenyReason::PlanFeatureMissing, Some("team"))
    );
    assert_eq!((missing.meter.as_str(), missing.amount), ("", 0));

    // What the gateway does for each call: consume what Authorize said.
    let first = app.consume(&user, "words", 2, "run1:call1").await.unwrap();
    assert_eq!((first.allowed, first.remaining, first.limit), (true, 3, 5));
    let second = app.consume(&user, "words", 2, "run1:call2").await.unwrap();
    assert_eq!((second.allowed, second.remaining), (true, 1));
    let third = app.consume(&user, "words", 2, "run1:call3").await.unwrap();
    assert_eq!(
        (third.allowed, third.reason(), third.upgrade_to.as_deref()),
        (false, DenyReason::QuotaExceeded, Some("team"))
    );
    let usage = app.usage_of(&user).await;
    let words = usage.meters.iter().find(|m| m.meter == "words").unwrap();
    assert_eq!((words.used, words.limit), (4, Some(5)));
    let meters: Vec<_> = usage.meters.iter().map(|m| m.meter.as_str()).collect();
    assert_eq!(
        meters,
        ["messages", "agent_runs", "tool_calls", "words", "pings"]
    );
}

async fn undeclared_tools_and_meters_are_refused_by_name(backend: Backend) {
    let (app, _file) = spawn_with_catalogue(backend).await;
    let (user, admin) = (new_user(), new_user());
    assign(&app, &admin, "admin").await;
    // `calculator` is a tool of the default catalogue, not of this one.
    for action in ["tool:teleport", "tool:calculator"] {
        let refused = app.authorize(&user, action).await;
        assert_refused(refused, Code::InvalidArgument, "unknown_tool");
    }
    let an_hour = unix_now() + 3600;
    let lent = delegate(&app, &admin, &user, "tool:teleport", an_hour).await;
    assert_refused(lent, Code::InvalidArgument, "unknown_tool");
    let status = app.consume(&user, "bytes", 1, &key()).await.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::InvalidArgument, "unknown_meter".to_owned())
    );
    assert!(status.message().contains("bytes"), "{status:?}");
    // A malformed name is malformed input, not an unknown name.
    let malformed = app.authorize(&user, "tool:Word Count").await;
    assert_refused(malformed, Code::InvalidArgument, "invalid_request");
    let malformed = app.consume(&user, "Words", 1, &key()).await;
    assert_refused(malformed, Code::InvalidArgument, "invalid_request");
}

async fn a_rate_only_meter_limits_but_writes_no_ledger_row(backend: Backend) {
    let (app, _file) = spawn_with_catalogue(backend).await;
    let user = new_user();
    assert_eq!(allowed_of(&app, &user, "pings", 5).await, 3);
    let denied = app.consume(&user, "pings", 1, &key()).await.unwrap();
    assert_eq!(
        (denied.allowed, denied.reason()),
        (false, DenyReason::RateLimited)
    );
    assert!(denied.retry_after_ms > 0);
    // A billable meter next to it is written, so the ledger is read and does count.
    spend(&app, &user, "words", 2).await;
    let usage = app.usage_of(&user).await;
    assert_eq!((used(&usage, "pings"), used(&usage, "words")), (0, 2));
    let pings = usage.meters.iter().find(|m| m.meter == "pings").unwrap();
    assert_eq!(pings.limit, Some(3));
}

/// Each meter of the catalogue and whether it is billable.
fn billable(listed: &pb::ListPlansResponse) -> Vec<(&str, bool)> {
    listed
        .meters
        .iter()
        .map(|m| (m.name.as_str(), m.billable))
        .collect()
}

async fn list_plans_returns_the_whole_catalogue(backend: Backend) {
    let (app, _file) = spawn_with_catalogue(backend).await;
    let listed = list_plans(&app).await;
    assert_eq!(
        billable(&listed),
        [
            ("messages", false),
            ("agent_runs", true),
            ("tool_calls", true),
            ("words", true),
            ("pings", false)
        ]
    );
    let tools: Vec<_> = listed
        .tools
        .iter()
        .map(|t| (t.name.as_str(), t.meter.as_str(), t.amount, t.role.as_str()))
        .collect();
    assert_eq!(
        tools,
        [
            ("deploy", "tool_calls", 1, "admin"),
            ("search", "tool_calls", 1, "viewer"),
            ("summarize", "tool_calls", 1, "member"),
            ("word_count", "words", 2, "member"),
        ]
    );
    let [free, team] = listed.plans.as_slice() else {
        panic!("two plans: {listed:?}");
    };
    assert_eq!(
        (
            free.id.as_str(),
            free.name.as_str(),
            free.rank,
            free.max_connections
        ),
        ("free", "Free", 0, 2)
    );
    assert_eq!(
        (
            free.messages_per_minute,
            free.agent_runs_per_month,
            free.tool_calls_per_day
        ),
        (30, None, None)
    );
    assert_eq!(free.tools, ["deploy", "search", "word_count"]);
    let limits: Vec<_> = free
        .limits
        .iter()
        .map(|l| (l.meter.as_str(), l.per_minute, l.per_day, l.per_month))
        .collect();
    assert_eq!(
        limits,
        [
            ("messages", Some(30), None, None),
            ("pings", Some(3), None, None),
            ("words", None, Some(5), None),
        ]
    );
    assert_eq!((team.id.as_str(), team.rank), ("team", 1));
    assert!(team.tools.contains(&"summarize".to_owned()));
}

async fn the_default_catalogue_is_listed_whole(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let listed = list_plans(&app).await;
    assert_eq!(
        billable(&listed),
        [
            ("messages", false),
            ("agent_runs", true),
            ("tool_calls", true)
        ]
    );
    let tools: Vec<_> = listed
        .tools
        .iter()
        .map(|t| (t.name.as_str(), t.meter.as_str(), t.amount, t.role.as_str()))
        .collect();
    assert_eq!(
        tools,
        [
            ("admin_audit", "tool_calls", 1, "admin"),
            ("calculator", "tool_calls", 1, "member"),
            ("code_interpreter", "tool_calls", 1, "member"),
            ("search", "tool_calls", 1, "viewer"),
            ("web_browse", "tool_calls", 1, "member"),
        ]
    );
    let pro = &listed.plans[1];
    assert_eq!(
        (
            pro.messages_per_minute,
            pro.agent_runs_per_month,
            pro.tool_calls_per_day
        ),
        (300, Some(10_000), Some(20_000))
    );
    assert_eq!(pro.limits.len(), 3, "{pro:?}");
}

async fn roles_decide_who_calls_a_custom_tool_and_delegation_lends_it(backend: Backend) {
    let (app, _file) = spawn_with_catalogue(backend).await;
    let (viewer, member, admin) = (new_user(), new_user(), new_user());
    assign(&app, &viewer, "viewer").await;
    assign(&app, &admin, "admin").await;

    assert!(app.authorize(&viewer, "tool:search").await.unwrap().allowed);
    let denied = app.authorize(&viewer, "tool:word_count").await.unwrap();
    assert_eq!(
        (denied.allowed, denied.reason()),
        (false, DenyReason::PermissionDenied)
    );
    assert_eq!((denied.meter.as_str(), denied.amount), ("", 0));
    assert_eq!(
        roles_and_permissions(&app, &viewer).await.1,
        ["tool:search"]
    );
    assert!(!app.authorize(&member, "tool:deploy").await.unwrap().allowed);
    assert!(app.authorize(&admin, "tool:deploy").await.unwrap().allowed);

    // An admin lends `deploy` to a member for an hour; a viewer cannot lend what it lacks.
    let an_hour = unix_now() + 3600;
    let refused = delegate(&app, &viewer, &member, "tool:word_count", an_hour).await;
    assert_refused(refused, Code::FailedPrecondition, "not_allowed");
    delegate(&app, &admin, &member, "tool:deploy", an_hour)
        .await
        .unwrap();
    let lent = app.authorize(&member, "tool:deploy").await.unwrap();
    assert_eq!(
        (lent.allowed, lent.meter.as_str(), lent.amount),
        (true, "tool_calls", 1)
    );
    let (_, permissions) = roles_and_permissions(&app, &member).await;
    assert!(
        permissions.contains(&"tool:deploy".to_owned()),
        "{permissions:?}"
    );
    assert!(permissions.contains(&"tool:word_count".to_owned()));
}

#[tokio::test]
async fn a_bad_catalogue_stops_the_build_with_one_line_naming_it() {
    let bad = catalogue_file(&TEAM_CATALOGUE.replace("meter = \"words\"", "meter = \"wrods\""));
    // The catalogue is checked before anything is reached, so nothing need be running.
    let mut config = Config::for_tests("sqlite::memory:", "http://127.0.0.1:9");
    config.plans_file = Some(bad.path().to_owned());
    let err = Application::build(config, tollgate_shared::shutdown::Shutdown::new())
        .await
        .expect_err("a catalogue naming an undeclared meter must not start");
    let message = format!("{err:#}");
    assert!(message.starts_with("USAGE_PLANS_FILE: "), "{message}");
    assert!(
        message.contains("tool `word_count`: meter `wrods` is not declared"),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
    // The same file with the typo fixed is a valid catalogue.
    assert!(Catalogue::from_toml(TEAM_CATALOGUE).is_ok());
}

both_backends!(
    a_custom_tool_costs_its_own_meter_and_its_quota_holds,
    undeclared_tools_and_meters_are_refused_by_name,
    a_rate_only_meter_limits_but_writes_no_ledger_row,
    list_plans_returns_the_whole_catalogue,
    the_default_catalogue_is_listed_whole,
    roles_decide_who_calls_a_custom_tool_and_delegation_lends_it,
);
