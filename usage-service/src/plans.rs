//! The plan catalogue: the contract's default (free, pro, enterprise) or a TOML file named by
//! `USAGE_PLANS_FILE`, validated at startup so a typo fails the deploy, not a request.
//!
//! ```toml
//! [[plans]]
//! id = "free"                  # every user starts on `free`, so it must exist
//! name = "Free"
//! max_connections = 2
//! messages_per_minute = 30
//! agent_runs_per_month = 100   # omit for unlimited
//! tool_calls_per_day = 200     # omit for unlimited
//! tools = ["search", "calculator"]
//! ```
//!
//! Plans are ranked in file order, cheapest first; `upgrade_to` names the cheapest plan that
//! would allow a denied action.

use std::{collections::BTreeSet, path::Path};

use serde::Deserialize;

use crate::domain::{PlanId, Tool};

/// The plan every user starts on.
pub const DEFAULT_PLAN: &str = "free";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub id: PlanId,
    pub name: String,
    /// Position in the catalogue, cheapest first.
    pub rank: u32,
    pub max_connections: u32,
    pub messages_per_minute: u32,
    pub agent_runs_per_month: Option<u64>,
    pub tool_calls_per_day: Option<u64>,
    pub tools: BTreeSet<Tool>,
}

#[derive(Clone, Debug)]
pub struct Catalogue {
    plans: Vec<Plan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    plans: Vec<RawPlan>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    id: String,
    name: Option<String>,
    max_connections: i64,
    messages_per_minute: i64,
    agent_runs_per_month: Option<i64>,
    tool_calls_per_day: Option<i64>,
    tools: Vec<String>,
}

impl Catalogue {
    /// The contract's default catalogue.
    pub fn default_catalogue() -> Self {
        Self::from_toml(include_str!("default_plans.toml"))
            .expect("the built-in catalogue is valid")
    }

    /// Reads and validates a plans file; the error is one line naming the problem.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        Self::from_toml(&text).map_err(|err| format!("{}: {err}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|err| one_line(&err.to_string()))?;
        let mut plans = Vec::with_capacity(file.plans.len());
        for (rank, raw) in file.plans.into_iter().enumerate() {
            let plan = validate(raw, rank as u32)?;
            if plans.iter().any(|known: &Plan| known.id == plan.id) {
                return Err(format!("plan `{}` is defined twice", plan.id));
            }
            plans.push(plan);
        }
        if !plans.iter().any(|plan| plan.id.as_str() == DEFAULT_PLAN) {
            return Err(format!(
                "the catalogue must define the `{DEFAULT_PLAN}` plan every user starts on"
            ));
        }
        Ok(Self { plans })
    }

    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    pub fn get(&self, id: &PlanId) -> Option<&Plan> {
        self.plans.iter().find(|plan| &plan.id == id)
    }

    pub fn default_plan(&self) -> &Plan {
        self.plans
            .iter()
            .find(|plan| plan.id.as_str() == DEFAULT_PLAN)
            .expect("validated on load")
    }

    /// The cheapest plan that includes `tool`.
    pub fn cheapest_with(&self, tool: Tool) -> Option<&Plan> {
        self.plans.iter().find(|plan| plan.tools.contains(&tool))
    }
}

fn validate(raw: RawPlan, rank: u32) -> Result<Plan, String> {
    let id = PlanId::parse(&raw.id).map_err(|err| format!("plan `{}`: {err}", raw.id))?;
    let count = |field: &str, value: i64| -> Result<u64, String> {
        u64::try_from(value).map_err(|_| format!("plan `{id}`: {field} must not be negative"))
    };
    let small = |field: &str, value: i64| -> Result<u32, String> {
        u32::try_from(count(field, value)?)
            .map_err(|_| format!("plan `{id}`: {field} is too large"))
    };
    let mut tools = BTreeSet::new();
    for name in &raw.tools {
        let tool = Tool::parse(name).map_err(|err| format!("plan `{id}`: {err}"))?;
        tools.insert(tool);
    }
    Ok(Plan {
        name: raw.name.unwrap_or_else(|| id.to_string()),
        rank,
        max_connections: small("max_connections", raw.max_connections)?,
        messages_per_minute: small("messages_per_minute", raw.messages_per_minute)?,
        agent_runs_per_month: raw
            .agent_runs_per_month
            .map(|v| count("agent_runs_per_month", v))
            .transpose()?,
        tool_calls_per_day: raw
            .tool_calls_per_day
            .map(|v| count("tool_calls_per_day", v))
            .transpose()?,
        tools,
        id,
    })
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalogue_matches_the_contract() {
        let catalogue = Catalogue::default_catalogue();
        let ids: Vec<_> = catalogue
            .plans()
            .iter()
            .map(|plan| plan.id.as_str())
            .collect();
        assert_eq!(ids, ["free", "pro", "enterprise"]);
        let free = catalogue.default_plan();
        assert_eq!((free.max_connections, free.messages_per_minute), (2, 30));
        assert_eq!(
            (free.agent_runs_per_month, free.tool_calls_per_day),
            (Some(100), Some(200))
        );
        let enterprise = &catalogue.plans()[2];
        assert_eq!(
            (
                enterprise.agent_runs_per_month,
                enterprise.tool_calls_per_day
            ),
            (None, None)
        );
        assert!(enterprise.tools.contains(&Tool::AdminAudit));
        assert_eq!(
            catalogue
                .cheapest_with(Tool::CodeInterpreter)
                .unwrap()
                .id
                .as_str(),
            "pro"
        );
        assert_eq!(
            catalogue.cheapest_with(Tool::Search).unwrap().id.as_str(),
            "free"
        );
    }

    #[test]
    fn bad_files_fail_with_one_line() {
        let plan = |id: &str, extra: &str| {
            format!(
                "[[plans]]\nid = \"{id}\"\nmax_connections = 1\nmessages_per_minute = 1\ntools = [\"search\"]\n{extra}\n"
            )
        };
        for (text, expected) in [
            (
                plan("free", "").replace("search", "teleport"),
                "unknown tool",
            ),
            (
                plan("free", "tool_calls_per_day = -5"),
                "must not be negative",
            ),
            (
                format!("{}{}", plan("free", ""), plan("free", "")),
                "defined twice",
            ),
            (plan("pro", ""), "must define the `free` plan"),
            (plan("Free!", ""), "plan_id must be"),
            (plan("free", "colour = \"blue\""), "unknown field"),
            ("plans = 3".to_owned(), "invalid type"),
        ] {
            let err = Catalogue::from_toml(&text).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(!err.contains('\n'), "not one line: {err}");
        }
    }
}
