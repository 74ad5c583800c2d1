//! The markdown report: one row per phase, each compared with its same-run baseline or scaled
//! per core, next to the target from the issue. Targets are reported, never asserted: a missed
//! target is a finding, not a failed run.

use std::{fmt::Write as _, time::Duration};

use crate::load::Measurement;

#[derive(Debug)]
pub struct Row {
    pub phase: &'static str,
    pub measurement: Measurement,
    /// The comparison that the target is about, e.g. `0.82 × health`.
    pub relative: String,
    pub target: String,
    /// `None` for baselines, or when the baseline did not run.
    pub met: Option<bool>,
}

impl Row {
    /// A baseline row: no target of its own.
    pub fn baseline(phase: &'static str, measurement: Measurement) -> Self {
        Self {
            phase,
            measurement,
            relative: "baseline".into(),
            target: "—".into(),
            met: None,
        }
    }

    /// Throughput relative to a baseline, at least `min_ratio`, and optionally a p99 ceiling.
    pub fn ratio(
        phase: &'static str,
        measurement: Measurement,
        baseline: Option<(&'static str, &Measurement)>,
        min_ratio: f64,
        max_p99: Option<Duration>,
    ) -> Self {
        let p99_target = max_p99.map(|max| format!(", p99 < {}", millis(max)));
        let ratio = baseline.map(|(name, base)| {
            let ratio = measurement.ops_per_sec() / base.ops_per_sec().max(f64::MIN_POSITIVE);
            (name, ratio)
        });
        let (relative, met) = match ratio {
            Some((name, ratio)) => {
                let p99_ok = max_p99.is_none_or(|max| measurement.quantile(0.99) < max);
                (
                    format!("{ratio:.2} × {name}"),
                    Some(ratio >= min_ratio && p99_ok && measurement.errors == 0),
                )
            }
            None => ("baseline not run".into(), None),
        };
        let base = baseline.map_or("baseline", |(name, _)| name);
        Self {
            phase,
            relative,
            target: format!("≥ {min_ratio} × {base}{}", p99_target.unwrap_or_default()),
            met,
            measurement,
        }
    }

    /// Throughput per core, at least `min_per_core`.
    pub fn per_core(
        phase: &'static str,
        measurement: Measurement,
        cores: usize,
        min_per_core: f64,
    ) -> Self {
        let per_core = measurement.ops_per_sec() / cores as f64;
        Self {
            phase,
            relative: format!("{per_core:.0}/s per core"),
            target: format!("≥ {min_per_core:.0}/s per core"),
            met: Some(per_core >= min_per_core && measurement.errors == 0),
            measurement,
        }
    }
}

/// Renders the table, and the first error of any phase that had errors.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| Phase | Callers | ops/s | p50 | p99 | Errors | CPU own / other | Relative | Target | Met |\n\
         |---|---:|---:|---:|---:|---:|---:|---|---|---|\n",
    );
    for row in rows {
        let m = &row.measurement;
        let met = match row.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            row.phase,
            m.concurrency,
            m.ops_per_sec(),
            millis(m.quantile(0.5)),
            millis(m.quantile(0.99)),
            m.errors,
            m.cpu.map_or_else(
                || "n/a".into(),
                |cpu| format!("{:.2} / {:.2}", cpu.own, cpu.other)
            ),
            row.relative,
            row.target,
            met,
        );
    }
    out.push_str(
        "\nCPU own / other: cores kept busy during the measured window by this process \
         (callers and service) and by every other process (PostgreSQL, Redis, unrelated load).\n",
    );
    for row in rows {
        if let Some(error) = &row.measurement.first_error {
            let _ = writeln!(out, "\n{}: first error: {error}", row.phase);
        }
    }
    out
}

/// Milliseconds with enough digits for sub-millisecond calls.
pub fn millis(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(ops: u64, p99_micros: u64) -> Measurement {
        let mut measurement = Measurement::new(8, Duration::from_secs(1));
        for _ in 0..ops {
            measurement.record(Duration::from_micros(p99_micros), Ok(()));
        }
        measurement
    }

    #[test]
    fn ratio_targets_need_throughput_latency_and_no_errors() {
        let base = measurement(100, 100);
        let fast = Row::ratio("x", measurement(80, 500), Some(("b", &base)), 0.7, None);
        assert_eq!(fast.met, Some(true));
        assert_eq!(fast.relative, "0.80 × b");
        let slow_tail = Row::ratio(
            "x",
            measurement(80, 5_000),
            Some(("b", &base)),
            0.7,
            Some(Duration::from_millis(2)),
        );
        assert_eq!(slow_tail.met, Some(false));
        let mut failing = measurement(80, 500);
        failing.record(Duration::ZERO, Err("boom".into()));
        assert_eq!(
            Row::ratio("x", failing, Some(("b", &base)), 0.7, None).met,
            Some(false)
        );
        assert_eq!(
            Row::ratio("x", measurement(80, 500), None, 0.7, None).met,
            None
        );
    }

    #[test]
    fn per_core_targets_divide_by_cores() {
        let row = Row::per_core("x", measurement(3000, 100), 2, 1000.0);
        assert_eq!(row.relative, "1500/s per core");
        assert_eq!(row.met, Some(true));
        assert_eq!(
            Row::per_core("x", measurement(1500, 100), 2, 1000.0).met,
            Some(false)
        );
    }

    #[test]
    fn the_table_has_one_line_per_row_and_names_errors() {
        let mut failing = measurement(1, 100);
        failing.record(Duration::ZERO, Err("Unavailable: down".into()));
        let table = render(&[
            Row::baseline("Health/Check", measurement(10, 100)),
            Row::per_core("Refresh", failing, 2, 1000.0),
        ]);
        assert!(table.contains("| Health/Check | 8 | 10 | 0.100 ms | 0.100 ms | 0 |"));
        assert!(table.contains("**not met**"));
        assert!(table.contains("Refresh: first error: Unavailable: down"));
    }
}
