use super::*;

/// The default catalogue as it was written before meters and tools were data.
const FIRST_FORMAT: &str = r#"
[[plans]]
id = "free"
name = "Free"
max_connections = 2
messages_per_minute = 30
agent_runs_per_month = 100
tool_calls_per_day = 200
tools = ["search", "calculator"]

[[plans]]
id = "pro"
name = "Pro"
max_connections = 10
messages_per_minute = 300
agent_runs_per_month = 10000
tool_calls_per_day = 20000
tools = ["search", "calculator", "code_interpreter", "web_browse"]

[[plans]]
id = "enterprise"
name = "Enterprise"
max_connections = 100
messages_per_minute = 3000
tools = ["search", "calculator", "code_interpreter", "web_browse", "admin_audit"]
"#;

fn tool(name: &str) -> ToolName {
    ToolName::parse(name).unwrap()
}

fn meter(name: &str) -> Meter {
    Meter::parse(name).unwrap()
}

fn permission(raw: &str) -> Permission {
    Permission::parse(raw).unwrap()
}

#[test]
fn the_default_catalogue_matches_the_contract() {
    let catalogue = Catalogue::default_catalogue();
    let ids: Vec<_> = catalogue.plans().iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["free", "pro", "enterprise"]);
    fn row(plan: &Plan) -> (u32, u32, Option<u64>, Option<u64>, Vec<&str>) {
        (
            plan.max_connections,
            plan.messages_per_minute(),
            plan.limits_of(&Meter::agent_runs()).per_month,
            plan.limits_of(&Meter::tool_calls()).per_day,
            plan.tools.iter().map(ToolName::as_str).collect::<Vec<_>>(),
        )
    }
    let [free, pro, enterprise] = catalogue.plans() else {
        panic!("three plans");
    };
    assert_eq!(
        row(free),
        (2, 30, Some(100), Some(200), vec!["calculator", "search"])
    );
    assert_eq!(
        row(pro),
        (
            10,
            300,
            Some(10_000),
            Some(20_000),
            vec!["calculator", "code_interpreter", "search", "web_browse"]
        )
    );
    assert_eq!(
        row(enterprise),
        (
            100,
            3000,
            None,
            None,
            vec![
                "admin_audit",
                "calculator",
                "code_interpreter",
                "search",
                "web_browse"
            ]
        )
    );
    // Messages are limited by rate only, runs per month, tool calls per day: nothing else.
    for plan in catalogue.plans() {
        let messages = plan.limits_of(&Meter::messages());
        assert_eq!((messages.per_day, messages.per_month), (None, None));
        assert_eq!(plan.limits_of(&Meter::agent_runs()).per_minute, None);
        assert_eq!(plan.limits_of(&Meter::tool_calls()).per_minute, None);
    }
    let meters: Vec<_> = catalogue
        .meters()
        .iter()
        .map(|m| (m.name.as_str(), m.billable))
        .collect();
    assert_eq!(
        meters,
        [
            ("messages", false),
            ("agent_runs", true),
            ("tool_calls", true)
        ]
    );
    for spec in catalogue.tools() {
        assert_eq!((spec.meter.as_str(), spec.amount), ("tool_calls", 1));
    }
    assert_eq!(
        catalogue
            .cheapest_with(&tool("code_interpreter"))
            .unwrap()
            .id
            .as_str(),
        "pro"
    );
    assert_eq!(
        catalogue
            .cheapest_with(&tool("search"))
            .unwrap()
            .id
            .as_str(),
        "free"
    );
}

#[test]
fn the_default_roles_are_todays() {
    let catalogue = Catalogue::default_catalogue();
    let granted = |role: Role| {
        catalogue
            .permissions_of(role)
            .map(|p| p.to_string())
            .collect::<BTreeSet<_>>()
    };
    let set = |items: &[&str]| {
        items
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(granted(Role::Viewer), set(&["tool:search"]));
    assert_eq!(
        granted(Role::Member),
        set(&[
            "tool:search",
            "tool:calculator",
            "tool:code_interpreter",
            "tool:web_browse"
        ])
    );
    assert_eq!(
        granted(Role::Admin),
        set(&[
            "tool:search",
            "tool:calculator",
            "tool:code_interpreter",
            "tool:web_browse",
            "tool:admin_audit",
            "admin:audit"
        ])
    );
    assert!(!catalogue.role_grants(Role::Member, &Permission::AdminAudit));
    assert!(!catalogue.role_grants(Role::Admin, &permission("tool:teleport")));
    assert_eq!(catalogue.least_role(&permission("tool:teleport")), None);
}

#[test]
fn a_first_format_file_loads_as_the_default_catalogue() {
    let first = Catalogue::from_toml(FIRST_FORMAT).unwrap();
    assert_eq!(first, Catalogue::default_catalogue());
}

#[test]
fn teams_declare_their_own_meters_and_tools() {
    let catalogue = Catalogue::from_toml(
        r#"
        [[meters]]
        name = "words"

        [[meters]]
        name = "pings"
        billable = false

        [[meters]]
        name = "messages"
        billable = false

        [[tools]]
        name = "word_count"
        meter = "words"
        amount = 2

        [[tools]]
        name = "lookup.v2"
        role = "viewer"

        [[plans]]
        id = "free"
        max_connections = 1
        messages_per_minute = 10
        tools = ["word_count", "lookup.v2", "search", "notes"]
        [plans.limits]
        words = { per_day = 5 }
        pings = { per_minute = 2, per_month = 100 }
        "#,
    )
    .unwrap();
    let spec = catalogue.tool(&tool("word_count")).unwrap();
    assert_eq!(
        (spec.meter.as_str(), spec.amount, spec.role),
        ("words", 2, Role::Member)
    );
    // A listed name without an entry costs one tool call; today's tools keep today's roles.
    let notes = catalogue.tool(&tool("notes")).unwrap();
    assert_eq!(
        (notes.meter.as_str(), notes.amount, notes.role),
        ("tool_calls", 1, Role::Member)
    );
    assert_eq!(catalogue.tool(&tool("search")).unwrap().role, Role::Viewer);
    assert_eq!(
        catalogue.tool(&tool("lookup.v2")).unwrap().role,
        Role::Viewer
    );
    assert!(
        catalogue.tool(&tool("calculator")).is_none(),
        "not listed, not declared"
    );
    let billable: Vec<_> = catalogue
        .meters()
        .iter()
        .map(|m| (m.name.as_str(), m.billable))
        .collect();
    assert_eq!(
        billable,
        [
            ("messages", false),
            ("agent_runs", true),
            ("tool_calls", true),
            ("words", true),
            ("pings", false)
        ]
    );
    let free = catalogue.default_plan();
    assert_eq!(
        free.limits_of(&meter("pings")),
        MeterLimits {
            per_minute: Some(2),
            per_day: None,
            per_month: Some(100)
        }
    );
    assert_eq!(free.limits_of(&meter("words")).per_day, Some(5));
    assert_eq!(free.limits_of(&Meter::agent_runs()), MeterLimits::default());
    assert!(catalogue.role_grants(Role::Viewer, &permission("tool:lookup.v2")));
    assert!(!catalogue.role_grants(Role::Viewer, &permission("tool:word_count")));
    assert!(catalogue.role_grants(Role::Member, &permission("tool:word_count")));
}

#[test]
fn upgrades_name_the_cheapest_plan_with_more_room() {
    let catalogue = Catalogue::default_catalogue();
    let [free, pro, enterprise] = catalogue.plans() else {
        panic!("three plans");
    };
    let looser = |plan: &Plan, meter: Meter, quota: bool| {
        catalogue
            .cheapest_looser(plan, &meter, quota)
            .map(|plan| plan.id.as_str())
    };
    assert_eq!(looser(free, Meter::tool_calls(), true), Some("pro"));
    assert_eq!(looser(pro, Meter::agent_runs(), true), Some("enterprise"));
    assert_eq!(looser(free, Meter::messages(), false), Some("pro"));
    assert_eq!(looser(enterprise, Meter::messages(), false), None);
    assert_eq!(looser(enterprise, Meter::tool_calls(), true), None);
}

#[test]
fn bad_catalogues_fail_with_one_line_naming_the_problem() {
    let plan = |id: &str, extra: &str| {
        format!(
            "[[plans]]\nid = \"{id}\"\nmax_connections = 1\nmessages_per_minute = 1\ntools = [\"search\"]\n{extra}\n"
        )
    };
    let free = plan("free", "");
    for (text, expected) in [
        (
            format!("{free}{}", plan("free", "")),
            "plan `free` is defined twice",
        ),
        (
            format!("[[tools]]\nname = \"x\"\n[[tools]]\nname = \"x\"\n{free}"),
            "tool `x` is defined twice",
        ),
        (
            format!("[[meters]]\nname = \"words\"\n[[meters]]\nname = \"words\"\n{free}"),
            "meter `words` is defined twice",
        ),
        (
            format!("[[meters]]\nname = \"tool_calls\"\n[[meters]]\nname = \"tool_calls\"\n{free}"),
            "meter `tool_calls` is defined twice",
        ),
        (
            format!("[[tools]]\nname = \"x\"\nmeter = \"words\"\n{free}"),
            "tool `x`: meter `words` is not declared",
        ),
        (
            plan("free", "[plans.limits]\nwords = { per_day = 5 }"),
            "plan `free`: limits name meter `words`, which is not declared",
        ),
        (
            plan("free", "tool_calls_per_day = -5"),
            "plan `free`: tool_calls_per_day must not be negative",
        ),
        (
            plan("free", "[plans.limits]\nagent_runs = { per_month = -1 }"),
            "plan `free`: limits.agent_runs.per_month must not be negative",
        ),
        (
            free.replace("max_connections = 1", "max_connections = -1"),
            "plan `free`: max_connections must not be negative",
        ),
        (
            format!("[[tools]]\nname = \"x\"\namount = -2\n{free}"),
            "tool `x`: amount must not be negative",
        ),
        (
            format!("[[tools]]\nname = \"x\"\namount = 0\n{free}"),
            "tool `x`: amount must be between 1 and 1000000",
        ),
        (
            format!("[[tools]]\nname = \"x\"\nrole = \"owner\"\n{free}"),
            "tool `x`: role must be viewer, member or admin",
        ),
        (
            format!("[[tools]]\nname = \"Word Count\"\n{free}"),
            "tools: tool `Word?Count` must be",
        ),
        (
            format!("[[meters]]\nname = \"Words\"\n{free}"),
            "meters: meter `Words` must be",
        ),
        (
            free.replace("[\"search\"]", "[\"search\", \"web browse\"]"),
            "plan `free`: tool `web?browse` must be",
        ),
        (
            plan(
                "free",
                "[plans.limits]\ntool_calls = { per_day = 1, per_month = 2 }",
            ),
            "limits.tool_calls.per_day and limits.tool_calls.per_month are both set",
        ),
        (
            plan("free", "[plans.limits]\nmessages = { per_minute = 5 }"),
            "messages_per_minute and limits.messages both limit `messages`",
        ),
        (
            free.replace("messages_per_minute = 1\n", ""),
            "plan `free`: `messages` needs a per_minute rate",
        ),
        (
            plan("free", "[plans.limits]\nmessages = { per_day = 5 }")
                .replace("messages_per_minute = 1\n", ""),
            "plan `free`: `messages` needs a per_minute rate",
        ),
        (
            free.replace(
                "messages_per_minute = 1",
                "messages_per_minute = 5000000000",
            ),
            "plan `free`: the `messages` per_minute rate is too large",
        ),
        (plan("pro", ""), "must define the `free` plan"),
        (plan("Free!", ""), "plan `Free!`: plan_id must be"),
        (plan("free", "colour = \"blue\""), "unknown field"),
        (
            format!("[[tools]]\nname = \"x\"\ncost = 3\n{free}"),
            "unknown field",
        ),
        ("plans = 3".to_owned(), "invalid type"),
    ] {
        let err = Catalogue::from_toml(&text).unwrap_err();
        assert!(err.contains(expected), "expected {expected:?}, got {err:?}");
        assert!(!err.contains('\n'), "not one line: {err}");
    }
}

#[test]
fn a_missing_file_is_one_line_naming_it() {
    let err = Catalogue::load(std::path::Path::new("/nonexistent/plans.toml")).unwrap_err();
    assert!(
        err.starts_with("cannot read /nonexistent/plans.toml"),
        "{err}"
    );
    assert!(!err.contains('\n'));
}
