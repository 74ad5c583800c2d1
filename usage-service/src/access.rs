//! Authorization: may this user, given its plan, its roles and the delegations it holds, take
//! this action? Plus the role and delegation changes that feed it.
//!
//! A delegation grants a permission its grantor holds through a role, for a bounded time. It is
//! honoured only while it is unexpired, unrevoked and its grantor still holds the permission, so
//! a grantor who loses a role cannot keep lending it. Permissions held only by delegation cannot
//! be delegated again, which also rules out delegation loops.

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::{
    catalogue::Catalogue,
    domain::{Action, Meter, Permission, Role, UserId},
    error::UsageError,
    usage::{Usage, UserContext},
};

/// Longest a delegation may last.
pub const MAX_DELEGATION_MS: i64 = 90 * 86_400_000;

/// Why an action was denied (CONTRACT §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    PlanFeatureMissing,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlanFeatureMissing => "PLAN_FEATURE_MISSING",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::RateLimited => "RATE_LIMITED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub denial: Option<DenyReason>,
    /// The cheapest plan that would allow the action, when a plan is what is missing.
    pub upgrade_to: Option<String>,
    /// What one call costs, for an allowed tool action: the meter to `Consume` and how much.
    pub cost: Option<(Meter, u64)>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.denial.is_none()
    }
}

impl Usage {
    pub async fn authorize(
        &self,
        user: UserId,
        action: Action,
    ) -> Result<(Verdict, std::sync::Arc<UserContext>), UsageError> {
        self.require_declared(&action)?;
        let context = self.context(user).await?;
        let feature = Catalogue::plan_feature(&action);
        let denied = |denial, upgrade_to| Verdict {
            denial: Some(denial),
            upgrade_to,
            cost: None,
        };
        let verdict = if !context.plan.tools.contains(&feature) {
            let upgrade_to = self
                .catalogue
                .cheapest_with(&feature)
                .filter(|plan| plan.rank > context.plan.rank)
                .map(|plan| plan.id.to_string());
            denied(DenyReason::PlanFeatureMissing, upgrade_to)
        } else if self.holds(&context, &action).await? {
            let cost = match &action {
                Permission::Tool(tool) => self
                    .catalogue
                    .tool(tool)
                    .map(|spec| (spec.meter.clone(), spec.amount)),
                Permission::AdminAudit => None,
            };
            Verdict {
                denial: None,
                upgrade_to: None,
                cost,
            }
        } else {
            denied(DenyReason::PermissionDenied, None)
        };
        self.metrics.decision(
            "authorize",
            verdict.denial.map_or("allowed", DenyReason::as_str),
        );
        Ok((verdict, context))
    }

    /// Refuses a tool the catalogue does not declare (`unknown_tool`).
    fn require_declared(&self, permission: &Permission) -> Result<(), UsageError> {
        match permission {
            Permission::Tool(tool) if self.catalogue.tool(tool).is_none() => {
                Err(UsageError::UnknownTool(tool.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Whether the user holds `permission` by role or by a delegation still backed by its
    /// grantor's role.
    async fn holds(
        &self,
        context: &UserContext,
        permission: &Permission,
    ) -> Result<bool, UsageError> {
        if self.by_role(&context.roles, permission) {
            return Ok(true);
        }
        let now = self.now_ms();
        for delegation in context
            .delegations
            .iter()
            .filter(|d| &d.permission == permission && d.expires_at_ms > now)
        {
            let grantor = self.context(delegation.from_user).await?;
            if self.by_role(&grantor.roles, permission) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The user's effective roles and permissions (roles plus live, backed delegations).
    pub async fn permissions(
        &self,
        user: UserId,
    ) -> Result<(Vec<Role>, BTreeSet<Permission>), UsageError> {
        let context = self.context(user).await?;
        let mut permissions: BTreeSet<Permission> = context
            .roles
            .iter()
            .flat_map(|&role| self.catalogue.permissions_of(role))
            .collect();
        for delegation in &context.delegations {
            if self.holds(&context, &delegation.permission).await? {
                permissions.insert(delegation.permission.clone());
            }
        }
        Ok((context.roles.clone(), permissions))
    }

    pub async fn assign_role(&self, user: UserId, role: Role) -> Result<Vec<Role>, UsageError> {
        self.store.assign_role(user, role, self.now_ms()).await?;
        self.role_changed(user).await
    }

    pub async fn revoke_role(&self, user: UserId, role: Role) -> Result<Vec<Role>, UsageError> {
        // A user seen for the first time holds the default role before losing this one.
        self.roles(user).await?;
        self.store.revoke_role(user, role).await?;
        self.role_changed(user).await
    }

    async fn role_changed(&self, user: UserId) -> Result<Vec<Role>, UsageError> {
        // Delegations this user granted depend on its roles: their grantees' decisions change
        // too, and those are evaluated through this user's (now evicted) context.
        self.invalidate(user).await;
        Ok(self.context(user).await?.roles.clone())
    }

    pub async fn delegate(
        &self,
        from: UserId,
        to: UserId,
        permission: Permission,
        expires_at_ms: i64,
    ) -> Result<Uuid, UsageError> {
        let now = self.now_ms();
        if from == to {
            return Err(UsageError::InvalidInput(
                "a user cannot delegate to itself".into(),
            ));
        }
        if expires_at_ms <= now {
            return Err(UsageError::InvalidInput(
                "expires_at must be in the future".into(),
            ));
        }
        if expires_at_ms > now + MAX_DELEGATION_MS {
            return Err(UsageError::InvalidInput(
                "a delegation may last at most 90 days".into(),
            ));
        }
        self.require_declared(&permission)?;
        let grantor = self.context(from).await?;
        if !self.by_role(&grantor.roles, &permission) {
            return Err(UsageError::NotAllowed(
                "the grantor does not hold this permission through a role",
            ));
        }
        let id = self
            .store
            .insert_delegation(from, to, &permission, now, expires_at_ms)
            .await?;
        self.invalidate(to).await;
        Ok(id)
    }

    /// Whether one of `roles` grants `permission`.
    fn by_role(&self, roles: &[Role], permission: &Permission) -> bool {
        roles
            .iter()
            .any(|&role| self.catalogue.role_grants(role, permission))
    }

    pub async fn revoke_delegation(&self, id: Uuid) -> Result<(), UsageError> {
        let grantee = self
            .store
            .revoke_delegation(id, self.now_ms())
            .await?
            .ok_or(UsageError::UnknownDelegation)?;
        self.invalidate(grantee).await;
        Ok(())
    }
}
