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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct AuthMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    revocations: Counter,
    pruned: Family<TableLabels, Counter>,
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
        registry.register(
            "auth_pruned_rows",
            "Expired rows deleted by pruning, by table (sessions, refresh_tokens)",
            metrics.pruned.clone(),
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

    pub fn pruned(&self, table: &'static str, rows: u64) {
        self.pruned
            .get_or_create(&TableLabels { table })
            .inc_by(rows);
    }
}
