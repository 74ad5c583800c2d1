//! The catalogue file: its TOML shape and its validation into a [`Catalogue`]. Every problem is
//! one line naming the plan, meter or tool at fault.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::{Catalogue, DEFAULT_PLAN, MeterLimits, MeterSpec, Plan, ToolSpec};
use crate::{
    domain::{Meter, PlanId, Role, ToolName},
    metering::MAX_AMOUNT,
};

/// What today's five tools cost and who may call them, unless an entry says otherwise.
const BUILT_IN_TOOLS: [(&str, Role); 5] = [
    ("search", Role::Viewer),
    ("calculator", Role::Member),
    ("code_interpreter", Role::Member),
    ("web_browse", Role::Member),
    ("admin_audit", Role::Admin),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    meters: Vec<RawMeter>,
    #[serde(default)]
    tools: Vec<RawTool>,
    plans: Vec<RawPlan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeter {
    name: String,
    #[serde(default = "billable_by_default")]
    billable: bool,
}

fn billable_by_default() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    name: String,
    meter: Option<String>,
    amount: Option<i64>,
    role: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    id: String,
    name: Option<String>,
    max_connections: i64,
    tools: Vec<String>,
    #[serde(default)]
    limits: BTreeMap<String, RawLimits>,
    // The first format's fields: sugar for the built-in meters' limits.
    messages_per_minute: Option<i64>,
    agent_runs_per_month: Option<i64>,
    tool_calls_per_day: Option<i64>,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    per_minute: Option<i64>,
    per_day: Option<i64>,
    per_month: Option<i64>,
}

pub(super) fn parse(text: &str) -> Result<Catalogue, String> {
    let file: File = toml::from_str(text).map_err(|err| one_line(&err.to_string()))?;
    let meters = meters(file.meters)?;
    let mut tools = tool_entries(file.tools, &meters)?;
    let mut plans: Vec<Plan> = Vec::with_capacity(file.plans.len());
    for (rank, raw) in file.plans.into_iter().enumerate() {
        let plan = plan(raw, rank as u32, &meters)?;
        if plans.iter().any(|known| known.id == plan.id) {
            return Err(format!("plan `{}` is defined twice", plan.id));
        }
        plans.push(plan);
    }
    if !plans.iter().any(|plan| plan.id.as_str() == DEFAULT_PLAN) {
        return Err(format!(
            "the catalogue must define the `{DEFAULT_PLAN}` plan every user starts on"
        ));
    }
    // A name a plan lists is a tool; without an entry it costs one tool call.
    for name in plans.iter().flat_map(|plan| &plan.tools) {
        tools.entry(name.clone()).or_insert_with(|| ToolSpec {
            name: name.clone(),
            meter: Meter::tool_calls(),
            amount: 1,
            role: default_role(name),
        });
    }
    Ok(Catalogue {
        plans,
        meters,
        tools,
    })
}

/// The built-in meters, then the declared ones; a built-in one may be declared once to set
/// whether it is billable. Unless declared, messages are rate-only (the limiter's count is all
/// a message needs) and agent runs and tool calls billable.
fn meters(raw: Vec<RawMeter>) -> Result<Vec<MeterSpec>, String> {
    let mut meters: Vec<MeterSpec> = Meter::BUILT_IN
        .iter()
        .map(|name| {
            let name = Meter::parse(name).expect("a valid built-in name");
            let billable = name != Meter::messages();
            MeterSpec { name, billable }
        })
        .collect();
    let mut declared = BTreeSet::new();
    for entry in raw {
        let name = Meter::parse(&entry.name).map_err(|err| format!("meters: {err}"))?;
        if !declared.insert(name.clone()) {
            return Err(format!("meter `{name}` is defined twice"));
        }
        let spec = MeterSpec {
            name,
            billable: entry.billable,
        };
        match meters.iter_mut().find(|known| known.name == spec.name) {
            Some(built_in) => *built_in = spec,
            None => meters.push(spec),
        }
    }
    Ok(meters)
}

fn tool_entries(
    raw: Vec<RawTool>,
    meters: &[MeterSpec],
) -> Result<BTreeMap<ToolName, ToolSpec>, String> {
    let mut tools = BTreeMap::new();
    for entry in raw {
        let name = ToolName::parse(&entry.name).map_err(|err| format!("tools: {err}"))?;
        let meter = match entry.meter {
            Some(meter) => Meter::parse(&meter).map_err(|err| format!("tool `{name}`: {err}"))?,
            None => Meter::tool_calls(),
        };
        if !meters.iter().any(|known| known.name == meter) {
            return Err(format!(
                "tool `{name}`: meter `{meter}` is not declared in [[meters]]"
            ));
        }
        let amount = match entry.amount {
            None => 1,
            Some(amount) if amount < 0 => {
                return Err(format!("tool `{name}`: amount must not be negative"));
            }
            Some(amount) if !(1..=MAX_AMOUNT).contains(&(amount as u64)) => {
                return Err(format!(
                    "tool `{name}`: amount must be between 1 and {MAX_AMOUNT}"
                ));
            }
            Some(amount) => amount as u64,
        };
        let role = match entry.role {
            Some(role) => Role::parse(&role).map_err(|err| format!("tool `{name}`: {err}"))?,
            None => default_role(&name),
        };
        let spec = ToolSpec {
            name: name.clone(),
            meter,
            amount,
            role,
        };
        if tools.insert(name.clone(), spec).is_some() {
            return Err(format!("tool `{name}` is defined twice"));
        }
    }
    Ok(tools)
}

/// Today's role for one of today's tools; `member` for any other.
fn default_role(tool: &ToolName) -> Role {
    BUILT_IN_TOOLS
        .iter()
        .find(|(name, _)| *name == tool.as_str())
        .map_or(Role::Member, |&(_, role)| role)
}

fn plan(raw: RawPlan, rank: u32, meters: &[MeterSpec]) -> Result<Plan, String> {
    let id = PlanId::parse(&raw.id).map_err(|err| format!("plan `{}`: {err}", raw.id))?;
    let fail = |message: String| format!("plan `{id}`: {message}");
    let max_connections = u64::try_from(raw.max_connections)
        .map_err(|_| fail("max_connections must not be negative".into()))
        .and_then(|n| u32::try_from(n).map_err(|_| fail("max_connections is too large".into())))?;
    let mut tools = BTreeSet::new();
    for name in &raw.tools {
        tools.insert(ToolName::parse(name).map_err(|err| fail(err.to_string()))?);
    }
    let limits = limits(&raw, meters).map_err(fail)?;
    Ok(Plan {
        name: raw.name.unwrap_or_else(|| id.to_string()),
        rank,
        max_connections,
        limits,
        tools,
        id,
    })
}

/// A plan's limits per meter: `[plans.limits]` and the first format's fields, which are sugar
/// for the built-in meters.
fn limits(raw: &RawPlan, meters: &[MeterSpec]) -> Result<BTreeMap<Meter, MeterLimits>, String> {
    let mut limits = BTreeMap::new();
    for (meter, &raw_limits) in &raw.limits {
        let meter = Meter::parse(meter).map_err(|err| format!("limits: {err}"))?;
        if !meters.iter().any(|known| known.name == meter) {
            return Err(format!(
                "limits name meter `{meter}`, which is not declared in [[meters]]"
            ));
        }
        let checked = meter_limits(raw_limits, |window| format!("limits.{meter}.{window}"))?;
        limits.insert(meter, checked);
    }
    let sugar = [
        (
            "messages_per_minute",
            Meter::messages(),
            raw.messages_per_minute.map(|n| RawLimits {
                per_minute: Some(n),
                ..RawLimits::default()
            }),
        ),
        (
            "agent_runs_per_month",
            Meter::agent_runs(),
            raw.agent_runs_per_month.map(|n| RawLimits {
                per_month: Some(n),
                ..RawLimits::default()
            }),
        ),
        (
            "tool_calls_per_day",
            Meter::tool_calls(),
            raw.tool_calls_per_day.map(|n| RawLimits {
                per_day: Some(n),
                ..RawLimits::default()
            }),
        ),
    ];
    for (field, meter, raw_limits) in sugar {
        let Some(raw_limits) = raw_limits else {
            continue;
        };
        if limits.contains_key(&meter) {
            return Err(format!(
                "{field} and limits.{meter} both limit `{meter}`; keep one"
            ));
        }
        let checked = meter_limits(raw_limits, |_| field.to_owned())?;
        limits.insert(meter, checked);
    }
    match limits.get(&Meter::messages()).and_then(|l| l.per_minute) {
        None => Err(
            "`messages` needs a per_minute rate (messages_per_minute or limits.messages), since every message is metered".into(),
        ),
        Some(rate) if u32::try_from(rate).is_err() => {
            Err("the `messages` per_minute rate is too large".into())
        }
        Some(_) => Ok(limits),
    }
}

/// Checks one meter's limits; `field` names a window's setting in errors.
fn meter_limits(raw: RawLimits, field: impl Fn(&str) -> String) -> Result<MeterLimits, String> {
    let count = |window: &str, value: Option<i64>| {
        value
            .map(|value| {
                u64::try_from(value).map_err(|_| format!("{} must not be negative", field(window)))
            })
            .transpose()
    };
    let limits = MeterLimits {
        per_minute: count("per_minute", raw.per_minute)?,
        per_day: count("per_day", raw.per_day)?,
        per_month: count("per_month", raw.per_month)?,
    };
    if limits.per_day.is_some() && limits.per_month.is_some() {
        return Err(format!(
            "{} and {} are both set; a meter has one quota window",
            field("per_day"),
            field("per_month")
        ));
    }
    Ok(limits)
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
