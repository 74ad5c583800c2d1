//! What the run watches besides latency and throughput.
//!
//! - **CPU per process.** Three parties share the two cores: this process (the clients, plus
//!   auth-service and usage-service on their own runtime), the server under test (ws-gateway,
//!   or the echo baseline) and everything else. `crate::cpu` splits "this process" from "the
//!   rest"; [`ServerCpu`] takes the server's share out of "the rest" over the same windows, so
//!   a row says who was busy.
//! - **The gateway's own counters** (`/metrics`), read before and after a phase: how many
//!   `ValidateToken`, `AcquireConnection`, `Consume`… calls each operation cost the gateway, and
//!   how token checks were answered (validated by auth-service or from the positive cache).
//! - **The file-descriptor limit**, checked before a thousand sockets are opened.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;

use crate::{
    cpu::CpuUsage,
    load::{Measurement, Timing, Workload},
};

/// `USER_HZ`, the unit of `/proc/<pid>/stat` (100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of a process, in ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Cores a process kept busy over `[from, from + length)`, sampled on a plain thread so that a
/// saturated runtime cannot delay the samples.
pub fn sample_process(
    pid: u32,
    from: Instant,
    length: Duration,
) -> std::thread::JoinHandle<Option<f64>> {
    std::thread::spawn(move || {
        std::thread::sleep(from.saturating_duration_since(Instant::now()));
        let (start, started) = (process_ticks(pid)?, Instant::now());
        std::thread::sleep(length);
        let (end, seconds) = (process_ticks(pid)?, started.elapsed().as_secs_f64());
        Some(end.saturating_sub(start) as f64 / TICKS_PER_SECOND / seconds.max(f64::MIN_POSITIVE))
    })
}

/// utime + stime of each of this process's threads, summed by thread name.
fn thread_ticks() -> Option<BTreeMap<String, u64>> {
    let mut ticks = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1.to_owned();
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        *ticks.entry(name).or_insert(0) += utime + stime;
    }
    Some(ticks)
}

/// Cores each group of this process's threads (by name: `clients`, `services`, `backend`…)
/// kept busy over `[from, from + length)`. Threads that ended during the window are missed.
pub fn sample_threads(
    from: Instant,
    length: Duration,
) -> std::thread::JoinHandle<Option<BTreeMap<String, f64>>> {
    std::thread::spawn(move || {
        std::thread::sleep(from.saturating_duration_since(Instant::now()));
        let (start, started) = (thread_ticks()?, Instant::now());
        std::thread::sleep(length);
        let (end, seconds) = (thread_ticks()?, started.elapsed().as_secs_f64());
        Some(
            end.into_iter()
                .map(|(name, ticks)| {
                    let before = start.get(&name).copied().unwrap_or(0);
                    let cores = ticks.saturating_sub(before) as f64 / TICKS_PER_SECOND;
                    (name, cores / seconds.max(f64::MIN_POSITIVE))
                })
                .filter(|(_, cores)| *cores > 0.0)
                .collect(),
        )
    })
}

/// CPU over a measured window, in cores: this process, the server under test, the rest.
#[derive(Clone, Copy, Debug, Default)]
pub struct Split {
    pub own: f64,
    pub server: f64,
    pub other: f64,
}

impl Split {
    /// From `crate::cpu`'s own/other and the server's share (which is part of "other").
    pub fn new(usage: Option<CpuUsage>, server: Option<f64>) -> Option<Self> {
        let usage = usage?;
        let server = server.unwrap_or(0.0);
        Some(Self {
            own: usage.own,
            server,
            other: (usage.other - server).max(0.0),
        })
    }

    fn weighted(self, mine: Duration, other: Self, theirs: Duration) -> Self {
        let (a, b) = (mine.as_secs_f64(), theirs.as_secs_f64());
        let total = (a + b).max(f64::MIN_POSITIVE);
        let mix = |x: f64, y: f64| (x * a + y * b) / total;
        Self {
            own: mix(self.own, other.own),
            server: mix(self.server, other.server),
            other: mix(self.other, other.other),
        }
    }

    pub fn describe(split: Option<Self>) -> String {
        split.map_or_else(
            || "n/a".into(),
            |s| format!("{:.2} / {:.2} / {:.2}", s.own, s.server, s.other),
        )
    }
}

/// A workload whose slices also sample the CPU of the server process it talks to.
pub struct ServerCpu<'a> {
    inner: &'a mut dyn Workload,
    pid: u32,
    total: Option<(Split, Duration)>,
    measuring: bool,
}

impl std::fmt::Debug for ServerCpu<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCpu")
            .field("pid", &self.pid)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<'a> ServerCpu<'a> {
    pub fn new(inner: &'a mut dyn Workload, pid: u32) -> Self {
        Self {
            inner,
            pid,
            total: None,
            measuring: false,
        }
    }

    /// CPU over the measured slices (warm-up slices, which have no settle time, excluded).
    pub fn split(&self) -> Option<Split> {
        self.total.map(|(split, _)| split)
    }
}

impl Workload for ServerCpu<'_> {
    fn slice(&mut self, timing: Timing) -> BoxFuture<'_, Measurement> {
        Box::pin(async move {
            // `Plan` warms up with a slice without settle time; only later slices count.
            self.measuring |= !timing.settle.is_zero();
            let sampler = sample_process(self.pid, Instant::now() + timing.settle, timing.measure);
            let measurement = self.inner.slice(timing).await;
            let server = tokio::task::spawn_blocking(move || sampler.join().ok().flatten())
                .await
                .ok()
                .flatten();
            if self.measuring
                && let Some(split) = Split::new(measurement.cpu, server)
            {
                self.total = Some(match self.total {
                    Some((total, length)) => (
                        total.weighted(length, split, timing.measure),
                        length + timing.measure,
                    ),
                    None => (split, timing.measure),
                });
            }
            measurement
        })
    }
}

/// The gateway's counters and histogram counts, by full series name with labels.
#[derive(Clone, Debug, Default)]
pub struct Counters(BTreeMap<String, f64>);

impl Counters {
    /// Reads `/metrics`.
    pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Self> {
        let (status, body) = super::http::get(addr, "/metrics").await?;
        anyhow::ensure!(status.is_success(), "/metrics answered {status}");
        Ok(Self::parse(std::str::from_utf8(&body)?))
    }

    /// Prometheus text format: `name{labels} value`, comments skipped.
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| {
                    let (series, value) = line.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// What grew from `earlier` to `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(series, value)| {
                    let before = earlier.0.get(series).copied().unwrap_or(0.0);
                    (series.clone(), value - before)
                })
                .filter(|(_, delta)| *delta != 0.0)
                .collect(),
        )
    }

    /// The sum of every series of `name` whose labels contain all of `labels`.
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                    && labels.iter().all(|label| series.contains(label))
            })
            .fold(0.0, |total, (_, value)| total + value)
    }

    /// Calls to auth-service and usage-service by method (all outcomes), from the count of the
    /// upstream latency histogram.
    pub fn upstream_calls(&self) -> BTreeMap<String, f64> {
        let mut calls = BTreeMap::new();
        for (series, value) in &self.0 {
            let Some(labels) = series.strip_prefix(UPSTREAM_COUNT) else {
                continue;
            };
            if let Some(method) = label(labels, "method") {
                *calls.entry(method.to_owned()).or_insert(0.0) += value;
            }
        }
        calls
    }

    /// Upstream calls per `per` (one operation), e.g. `AcquireConnection 1.00, …`.
    pub fn upstream_per(&self, per: f64) -> String {
        if per <= 0.0 {
            return "none".into();
        }
        self.describe_upstream(|count| {
            // Stragglers of an earlier phase (a release after the last close) round to nothing.
            let value = count / per;
            (value >= 0.005).then(|| format!("{value:.2}"))
        })
    }

    /// Upstream calls in total, e.g. `AcquireConnection 1000, …`.
    pub fn upstream_totals(&self) -> String {
        self.describe_upstream(|count| Some(format!("{count:.0}")))
    }

    fn describe_upstream(&self, value: impl Fn(f64) -> Option<String>) -> String {
        let calls: Vec<String> = self
            .upstream_calls()
            .iter()
            .filter_map(|(method, count)| Some(format!("{method} {}", value(*count)?)))
            .collect();
        if calls.is_empty() {
            "none".into()
        } else {
            calls.join(", ")
        }
    }
}

const UPSTREAM_COUNT: &str = "tollgate_gateway_upstream_rpc_duration_seconds_count";
pub const AUTH_OUTCOMES: &str = "tollgate_gateway_auth_outcomes_total";
pub const DECISIONS: &str = "tollgate_gateway_rate_limit_decisions_total";
pub const EVENTS_DELIVERED: &str = "tollgate_gateway_events_delivered_total";
pub const QUEUE_DROPS: &str = "tollgate_gateway_send_queue_drops_total";

/// The value of one label in `{a="x",b="y"}`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix("=\""))
        .map(|value| value.trim_end_matches('"'))
}

/// The soft limit on open files, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Fails early, naming the fix, when `needed` descriptors would not fit under the soft limit.
/// The gateway process inherits the same limit.
pub fn check_open_files(needed: u64) -> anyhow::Result<()> {
    let Some(limit) = open_files_limit() else {
        return Ok(());
    };
    anyhow::ensure!(
        limit >= needed,
        "the open-files limit is {limit} but the run needs about {needed} descriptors; \
         raise it first (`ulimit -n {needed}` in the shell that starts ws-loadgen)"
    );
    Ok(())
}

/// Just enough of `Counters` for a report line to say how token checks were answered.
pub fn auth_reasons(delta: &Counters) -> String {
    let reasons: Vec<String> = ["validated", "cached", "degraded"]
        .iter()
        .filter_map(|reason| {
            let count = delta.sum(AUTH_OUTCOMES, &[&format!("reason=\"{reason}\"")]);
            (count > 0.0).then(|| format!("{reason} {count:.0}"))
        })
        .collect();
    if reasons.is_empty() {
        "none".into()
    } else {
        reasons.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# HELP tollgate_gateway_upstream_rpc_duration_seconds Latency.
tollgate_gateway_upstream_rpc_duration_seconds_count{method=\"Consume\",outcome=\"ok\"} 10
tollgate_gateway_upstream_rpc_duration_seconds_count{method=\"Consume\",outcome=\"error\"} 2
tollgate_gateway_upstream_rpc_duration_seconds_count{method=\"Authorize\",outcome=\"ok\"} 4
tollgate_gateway_auth_outcomes_total{outcome=\"accepted\",reason=\"cached\"} 7
tollgate_gateway_auth_outcomes_total{outcome=\"accepted\",reason=\"validated\"} 1
";

    #[test]
    fn upstream_calls_are_summed_by_method_and_divided_per_operation() {
        let counters = Counters::parse(SAMPLE);
        let calls = counters.upstream_calls();
        assert_eq!(calls.get("Consume"), Some(&12.0));
        assert_eq!(calls.get("Authorize"), Some(&4.0));
        assert_eq!(counters.upstream_per(4.0), "Authorize 1.00, Consume 3.00");
        assert_eq!(counters.sum(AUTH_OUTCOMES, &["outcome=\"accepted\""]), 8.0);
        assert_eq!(auth_reasons(&counters), "validated 1, cached 7");
    }

    #[test]
    fn deltas_keep_only_what_changed() {
        let before = Counters::parse(SAMPLE);
        let after = Counters::parse(&SAMPLE.replace("} 10", "} 15"));
        let delta = after.since(&before);
        assert_eq!(delta.upstream_per(1.0), "Consume 5.00");
        assert_eq!(delta.upstream_totals(), "Consume 5");
        assert_eq!(delta.upstream_per(10_000.0), "none");
        assert_eq!(Counters::default().sum(AUTH_OUTCOMES, &[]).to_string(), "0");
    }
}
