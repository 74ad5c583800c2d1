//! The catalogue: the plans, the meters they limit and the tools they include. The contract's
//! default, or a TOML file named by `USAGE_PLANS_FILE` (format in `docs/catalogue.md`),
//! validated at startup so a typo fails the deploy, not a request.
//!
//! Tools and meters are data, not code: a team adds its own by declaring them. Three meters are
//! always declared (`messages`, `agent_runs`, `tool_calls`), since the gateway meters those
//! itself, and today's five tools keep their roles unless an entry says otherwise, so plan files
//! written before the catalogue had meters and tools mean what they meant.
//!
//! Plans are ranked in file order, cheapest first; `upgrade_to` names the cheapest plan that
//! would allow a denied action.

mod file;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{Meter, Permission, PlanId, Role, ToolName};

/// The plan every user starts on.
pub const DEFAULT_PLAN: &str = "free";
/// The tool a plan must list for its users to have the `admin:audit` feature.
pub const ADMIN_AUDIT_TOOL: &str = "admin_audit";

/// A meter `Consume` accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterSpec {
    pub name: Meter,
    /// Billable: every allowed unit gets a ledger row (and counts in `GetUsage`). Rate-only:
    /// the limiter counts it and nothing is written.
    pub billable: bool,
}

/// A tool `Authorize` knows: what one call costs and the least role that may make it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolSpec {
    pub name: ToolName,
    pub meter: Meter,
    pub amount: u64,
    pub role: Role,
}

/// A plan's limits on one meter; `None` is unlimited. At most one quota (day or month).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeterLimits {
    pub per_minute: Option<u64>,
    pub per_day: Option<u64>,
    pub per_month: Option<u64>,
}

impl MeterLimits {
    /// The quota's size, whichever window it has.
    pub fn quota(&self) -> Option<u64> {
        self.per_day.or(self.per_month)
    }

    /// The limit `GetUsage` shows: the quota if there is one, else the rate.
    pub fn headline(&self) -> Option<u64> {
        self.quota().or(self.per_minute)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub id: PlanId,
    pub name: String,
    /// Position in the catalogue, cheapest first.
    pub rank: u32,
    pub max_connections: u32,
    /// Limits per meter; a declared meter missing here is unlimited on this plan.
    pub limits: BTreeMap<Meter, MeterLimits>,
    pub tools: BTreeSet<ToolName>,
}

impl Plan {
    pub fn limits_of(&self, meter: &Meter) -> MeterLimits {
        self.limits.get(meter).copied().unwrap_or_default()
    }

    /// Validated on load: every plan rates `messages`, within `u32`.
    pub fn messages_per_minute(&self) -> u32 {
        self.limits_of(&Meter::messages())
            .per_minute
            .and_then(|rate| u32::try_from(rate).ok())
            .unwrap_or(u32::MAX)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalogue {
    plans: Vec<Plan>,
    /// In file order, the built-in ones first.
    meters: Vec<MeterSpec>,
    /// By name.
    tools: BTreeMap<ToolName, ToolSpec>,
}

impl Catalogue {
    /// The contract's default catalogue.
    pub fn default_catalogue() -> Self {
        Self::from_toml(include_str!("default_plans.toml"))
            .expect("the built-in catalogue is valid")
    }

    /// Reads and validates a catalogue file; the error is one line naming the problem.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        Self::from_toml(&text).map_err(|err| format!("{}: {err}", path.display()))
    }

    /// Parses and validates catalogue text; the error is one line naming the problem.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        file::parse(text)
    }

    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    pub fn meters(&self) -> &[MeterSpec] {
        &self.meters
    }

    pub fn tools(&self) -> impl Iterator<Item = &ToolSpec> {
        self.tools.values()
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

    pub fn meter(&self, name: &Meter) -> Option<&MeterSpec> {
        self.meters.iter().find(|meter| &meter.name == name)
    }

    pub fn tool(&self, name: &ToolName) -> Option<&ToolSpec> {
        self.tools.get(name)
    }

    /// The least role that holds `permission`; None for a tool the catalogue does not declare.
    pub fn least_role(&self, permission: &Permission) -> Option<Role> {
        match permission {
            Permission::Tool(tool) => self.tool(tool).map(|spec| spec.role),
            Permission::AdminAudit => Some(Permission::ADMIN_AUDIT_ROLE),
        }
    }

    /// Whether `role` (with what it inherits) grants `permission`.
    pub fn role_grants(&self, role: Role, permission: &Permission) -> bool {
        self.least_role(permission)
            .is_some_and(|least| least <= role)
    }

    /// Everything `role` grants, inherited permissions included.
    pub fn permissions_of(&self, role: Role) -> impl Iterator<Item = Permission> + '_ {
        let tools = self
            .tools
            .values()
            .filter(move |tool| tool.role <= role)
            .map(|tool| Permission::Tool(tool.name.clone()));
        let features = (role >= Permission::ADMIN_AUDIT_ROLE).then_some(Permission::AdminAudit);
        tools.chain(features)
    }

    /// The tool a plan must list to allow `permission`.
    pub fn plan_feature(permission: &Permission) -> ToolName {
        match permission {
            Permission::Tool(tool) => tool.clone(),
            Permission::AdminAudit => {
                ToolName::parse(ADMIN_AUDIT_TOOL).expect("a valid built-in name")
            }
        }
    }

    /// The cheapest plan that includes `tool`.
    pub fn cheapest_with(&self, tool: &ToolName) -> Option<&Plan> {
        self.plans.iter().find(|plan| plan.tools.contains(tool))
    }

    /// The cheapest plan above `current` whose limit on `meter` (its quota, or its rate when
    /// `quota` is false) is higher or absent.
    pub fn cheapest_looser(&self, current: &Plan, meter: &Meter, quota: bool) -> Option<&Plan> {
        let limit = |plan: &Plan| {
            let limits = plan.limits_of(meter);
            if quota {
                limits.quota()
            } else {
                limits.per_minute
            }
        };
        let looser = |plan: &Plan| match (limit(plan), limit(current)) {
            (None, Some(_)) => true,
            (Some(theirs), Some(ours)) => theirs > ours,
            _ => false,
        };
        self.plans
            .iter()
            .find(|plan| plan.rank > current.rank && looser(plan))
    }
}
