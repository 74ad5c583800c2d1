//! The results table of `ws-loadgen`: a row per phase, as Markdown.

use std::time::Duration;

use crate::{load::Measurement, report::millis, ws::observe::Split};

/// A row of the results table.
#[derive(Debug)]
pub struct Row {
    pub phase: String,
    pub clients: String,
    pub ops: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
    pub cpu: Option<Split>,
    pub relative: String,
    pub target: String,
    pub met: Option<bool>,
}

impl Row {
    pub fn closed_loop(phase: &str, measurement: &Measurement, cpu: Option<Split>) -> Self {
        Self {
            phase: phase.into(),
            clients: measurement.concurrency.to_string(),
            ops: measurement.ops_per_sec(),
            p50: measurement.quantile(0.5),
            p99: measurement.quantile(0.99),
            errors: measurement.errors,
            cpu,
            relative: "—".into(),
            target: "—".into(),
            met: None,
        }
    }

    pub fn render(&self) -> String {
        let met = match self.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "—",
        };
        // CPU time per operation: what one connect, event or run costs each side.
        let per_op = self.cpu.map_or_else(
            || "n/a".into(),
            |cpu| {
                let micros = |cores: f64| cores / self.ops.max(f64::MIN_POSITIVE) * 1e6;
                format!("{:.0} / {:.0} µs", micros(cpu.own), micros(cpu.server))
            },
        );
        format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {per_op} | {} | {} | {} |",
            self.phase,
            self.clients,
            self.ops,
            millis(self.p50),
            millis(self.p99),
            self.errors,
            Split::describe(self.cpu),
            self.relative,
            self.target,
            met
        )
    }
}

pub fn quantile(histogram: &hdrhistogram::Histogram<u64>, quantile: f64) -> Duration {
    Duration::from_micros(histogram.value_at_quantile(quantile))
}
