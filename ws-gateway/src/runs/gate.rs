//! The [`ToolGate`] backed by usage-service: what an agent's tool call costs, and whether the
//! user may make it.

use async_trait::async_trait;
use uuid::Uuid;

use crate::{
    agent::{RunId, ToolDenial, ToolGate, ToolName},
    limits::{Limits, Meter, Metered},
    usage::{Denial, Verdict},
};

/// The [`ToolGate`] of one user: `Authorize(user, "tool:<name>")`, then `Consume` of the
/// tool's cost under the key `<run_id>:<call_id>`.
#[derive(Debug)]
pub struct UsageToolGate {
    limits: Limits,
    user: Uuid,
}

impl UsageToolGate {
    pub fn new(limits: Limits, user: Uuid) -> Self {
        Self { limits, user }
    }

    /// Gives back the `agent_runs` unit of a run that never reached its agent (it was counted
    /// under the run's id before the backend was asked).
    pub async fn refund_run(&self, run_id: RunId) {
        self.limits
            .refund(self.user, Meter::AgentRuns, run_id.to_string())
            .await;
    }
}

#[async_trait]
impl ToolGate for UsageToolGate {
    async fn admit(
        &self,
        run_id: &RunId,
        call_id: &str,
        tool: &ToolName,
    ) -> Result<(), ToolDenial> {
        let action = format!("tool:{tool}");
        let cost = match self.limits.usage().authorize(self.user, &action).await {
            Ok((Verdict::Allowed, cost)) => cost,
            Ok((
                Verdict::Denied {
                    reason, upgrade_to, ..
                },
                _,
            )) => {
                return Err(match reason {
                    Denial::PlanFeatureMissing => ToolDenial::PlanRequired { upgrade_to },
                    Denial::QuotaExceeded | Denial::RateLimited => ToolDenial::QuotaExceeded,
                    Denial::PermissionDenied | Denial::Unspecified => ToolDenial::Forbidden,
                });
            }
            Err(unavailable) if unavailable.code == tonic::Code::InvalidArgument => {
                return Err(ToolDenial::UnknownTool);
            }
            Err(_) => return Err(ToolDenial::Unavailable),
        };
        match self
            .limits
            .meter_tool_call(self.user, &cost, format!("{run_id}:{call_id}"))
            .await
        {
            // A replay is this very call counted before (call ids are unique within a run,
            // and run ids are never reused): it stays counted once.
            Metered::Allowed | Metered::Replayed => Ok(()),
            Metered::Denied { .. } => Err(ToolDenial::QuotaExceeded),
            Metered::Unavailable => Err(ToolDenial::Unavailable),
        }
    }
}
