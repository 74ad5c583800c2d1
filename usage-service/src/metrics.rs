//! usage-service's Prometheus metrics.

use std::{borrow::Cow, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};
use tollgate_shared::metrics::LATENCY_BUCKETS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `authorize`, `connection` or a meter's name (bounded: the catalogue declares them).
    pub kind: Cow<'static, str>,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeterLabels {
    pub meter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug)]
pub struct UsageMetrics {
    decisions: Family<DecisionLabels, Counter>,
    consumed: Family<MeterLabels, Counter>,
    plan_changes: Family<ChangeLabels, Counter>,
    consume_latency: Histogram,
}

impl UsageMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            decisions: Family::default(),
            consumed: Family::default(),
            plan_changes: Family::default(),
            consume_latency: Histogram::new(LATENCY_BUCKETS),
        };
        registry.register(
            "usage_decisions",
            "Decisions by kind (authorize, a meter, connection) and outcome (allowed or the deny reason)",
            metrics.decisions.clone(),
        );
        registry.register(
            "usage_consumed",
            "Usage counted, by meter: the amounts of allowed Consume calls (a replay counts once)",
            metrics.consumed.clone(),
        );
        registry.register(
            "usage_plan_changes",
            "Plan changes, applied now or scheduled",
            metrics.plan_changes.clone(),
        );
        registry.register_with_unit(
            "usage_consume_duration",
            "Latency of Consume, including the ledger write",
            Unit::Seconds,
            metrics.consume_latency.clone(),
        );
        metrics
    }

    pub fn decision(&self, kind: impl Into<Cow<'static, str>>, outcome: &'static str) {
        let kind = kind.into();
        self.decisions
            .get_or_create(&DecisionLabels { kind, outcome })
            .inc();
    }

    pub fn consumed(&self, meter: &str, amount: u64) {
        self.consumed
            .get_or_create(&MeterLabels {
                meter: meter.to_owned(),
            })
            .inc_by(amount);
    }

    pub fn plan_change(&self, outcome: &'static str) {
        self.plan_changes
            .get_or_create(&ChangeLabels { outcome })
            .inc();
    }

    pub fn consume_latency(&self, elapsed: Duration) {
        self.consume_latency.observe(elapsed.as_secs_f64());
    }
}
