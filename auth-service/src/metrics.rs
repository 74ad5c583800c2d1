//! auth-service's Prometheus metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct AuthMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    revocations: Counter,
}

impl AuthMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "auth_outcomes",
            "Outcomes of auth operations (register, login, refresh, validate, service_token, ...) by reason",
            metrics.outcomes.clone(),
        );
        registry.register(
            "auth_session_revocations",
            "Sessions revoked",
            metrics.revocations.clone(),
        );
        metrics
    }

    pub fn outcome(&self, operation: &'static str, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { operation, outcome })
            .inc();
    }

    pub fn revoked(&self) {
        self.revocations.inc();
    }
}
