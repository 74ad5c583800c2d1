//! The closed-loop load driver shared by every phase.
//!
//! Each caller is a task that sends one request, waits for the answer and sends the next. A
//! workload runs in slices: a short settle period, then a measured window. Only calls that
//! complete inside the window count, so throughput is "completions per second of steady
//! state" and never includes ramp-up or the tail of calls still in flight when the window
//! closes. Each caller owns its state (a client handle, a refresh token) and threads it through
//! its calls and across slices, so no lock sits on the measured path.
//!
//! Slices exist so that a phase and its baseline can alternate (see [`Plan`]): on a shared
//! virtual machine the CPU's speed drifts by tens of percent within a minute, and measuring the
//! two back to back in one block each would put that drift into their ratio.

use std::{future::Future, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::cpu::{CpuUsage, sample_window};

/// Settle period, then the measured window.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub settle: Duration,
    pub measure: Duration,
}

/// What a workload achieved over one or more windows.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub concurrency: usize,
    pub ops: u64,
    pub errors: u64,
    /// Total measured time.
    pub window: Duration,
    /// Latency of successful calls, in microseconds.
    pub latency: Histogram<u64>,
    pub first_error: Option<String>,
    /// CPU use during the windows, when `/proc` tells.
    pub cpu: Option<CpuUsage>,
}

impl Measurement {
    pub fn new(concurrency: usize, window: Duration) -> Self {
        Self {
            concurrency,
            ops: 0,
            errors: 0,
            window,
            latency: new_histogram(),
            first_error: None,
            cpu: None,
        }
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    pub fn quantile(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(quantile))
    }

    /// Adds one completed call.
    pub fn record(&mut self, latency: Duration, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ops += 1;
                self.latency
                    .saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            Err(message) => {
                self.errors += 1;
                self.first_error.get_or_insert(message);
            }
        }
    }

    /// Folds in another caller's results over the same window.
    pub fn merge(&mut self, other: Self) {
        self.ops += other.ops;
        self.errors += other.errors;
        // Both histograms have the same bounds, so adding cannot fail; saturate if it did.
        if self.latency.add(&other.latency).is_err() {
            self.latency.saturating_record(other.latency.max());
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Appends a later window of the same workload.
    pub fn append(&mut self, other: Self) {
        self.cpu = match (self.cpu, other.cpu) {
            (Some(mine), Some(theirs)) => Some(mine.weighted(self.window, theirs, other.window)),
            (mine, theirs) => mine.or(theirs),
        };
        self.window += other.window;
        self.merge(other);
    }
}

/// 1 µs to 60 s at three significant digits: microsecond resolution for fast calls, without
/// clipping a stalled one.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Something that can be measured slice by slice.
pub trait Workload: Send {
    fn slice(&mut self, timing: Timing) -> BoxFuture<'_, Measurement>;
}

/// How a phase is measured: one unmeasured warm-up slice per workload, then `rounds` slices.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub warmup: Duration,
    pub slice: Timing,
    pub rounds: usize,
}

impl Plan {
    /// Measures a workload on its own.
    pub async fn alone(&self, workload: &mut dyn Workload) -> Measurement {
        self.warm(workload).await;
        let mut total = workload.slice(self.slice).await;
        for _ in 1..self.rounds {
            total.append(workload.slice(self.slice).await);
        }
        total
    }

    /// Measures a workload and its baseline in alternating slices, in ABBA order so that a
    /// steady drift in machine speed affects both alike. Returns (baseline, subject).
    pub async fn against(
        &self,
        baseline: &mut dyn Workload,
        subject: &mut dyn Workload,
    ) -> (Measurement, Measurement) {
        self.warm(baseline).await;
        self.warm(subject).await;
        let mut base: Option<Measurement> = None;
        let mut measured: Option<Measurement> = None;
        for round in 0..self.rounds {
            let (for_base, for_subject) = if round % 2 == 0 {
                let base_slice = baseline.slice(self.slice).await;
                (base_slice, subject.slice(self.slice).await)
            } else {
                let subject_slice = subject.slice(self.slice).await;
                (baseline.slice(self.slice).await, subject_slice)
            };
            accumulate(&mut base, for_base);
            accumulate(&mut measured, for_subject);
        }
        let empty = || Measurement::new(0, Duration::ZERO);
        (base.unwrap_or_else(empty), measured.unwrap_or_else(empty))
    }

    async fn warm(&self, workload: &mut dyn Workload) {
        if !self.warmup.is_zero() {
            workload
                .slice(Timing {
                    settle: Duration::ZERO,
                    measure: self.warmup,
                })
                .await;
        }
    }
}

fn accumulate(total: &mut Option<Measurement>, slice: Measurement) {
    match total {
        Some(total) => total.append(slice),
        None => *total = Some(slice),
    }
}

/// Concurrent callers, each with its own state, repeating one async call.
pub struct Calls<S, F> {
    states: Vec<S>,
    call: Arc<F>,
}

impl<S, F> std::fmt::Debug for Calls<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls")
            .field("callers", &self.states.len())
            .finish_non_exhaustive()
    }
}

impl<S, F, Fut> Calls<S, F>
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (S, Result<(), tonic::Status>)> + Send + 'static,
{
    /// One caller per element of `states`; `call` takes a caller's state and gives it back
    /// with the call's outcome.
    pub fn new(states: Vec<S>, call: F) -> Self {
        Self {
            states,
            call: Arc::new(call),
        }
    }
}

impl<S, F, Fut> Workload for Calls<S, F>
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (S, Result<(), tonic::Status>)> + Send + 'static,
{
    fn slice(&mut self, timing: Timing) -> BoxFuture<'_, Measurement> {
        Box::pin(async move {
            let states = std::mem::take(&mut self.states);
            let (states, measurement) = drive(states, timing, Arc::clone(&self.call)).await;
            self.states = states;
            measurement
        })
    }
}

/// Runs every caller through one slice and merges their results. A caller that panics loses
/// its state and counts as an error.
async fn drive<S, F, Fut>(states: Vec<S>, timing: Timing, call: Arc<F>) -> (Vec<S>, Measurement)
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (S, Result<(), tonic::Status>)> + Send + 'static,
{
    let concurrency = states.len();
    let measure_from = Instant::now() + timing.settle;
    let until = measure_from + timing.measure;
    let sampler = sample_window(measure_from.into_std(), timing.measure);
    let callers: Vec<_> = states
        .into_iter()
        .map(|mut state| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                let mut measurement = Measurement::new(1, timing.measure);
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let (next, result) = call(state).await;
                    state = next;
                    let done = Instant::now();
                    if done >= measure_from && done < until {
                        measurement.record(done - sent, result.map_err(describe));
                    }
                }
                (state, measurement)
            })
        })
        .collect();
    let mut states = Vec::with_capacity(concurrency);
    let mut total = Measurement::new(concurrency, timing.measure);
    for caller in callers {
        match caller.await {
            Ok((state, measurement)) => {
                states.push(state);
                total.merge(measurement);
            }
            Err(err) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert(format!("caller panicked: {err}"));
            }
        }
    }
    total.cpu = tokio::task::spawn_blocking(move || sampler.join().ok().flatten())
        .await
        .ok()
        .flatten();
    (states, total)
}

fn describe(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
