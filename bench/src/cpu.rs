//! Where the CPU went during a measured window: this process (callers and service together)
//! versus everything else on the machine (PostgreSQL, Redis, and any unrelated load). On a
//! shared 2-core machine a compile job elsewhere halves the numbers; this column makes such a
//! run recognisable instead of silently wrong. Linux only (`/proc`); elsewhere it is absent.

use std::time::{Duration, Instant};

/// CPU consumed over a window, in cores (1.0 = one core busy for the whole window).
#[derive(Clone, Copy, Debug)]
pub struct CpuUsage {
    pub own: f64,
    pub other: f64,
}

impl CpuUsage {
    /// The average of two windows of lengths `mine` and `theirs`.
    pub fn weighted(self, mine: Duration, other: Self, theirs: Duration) -> Self {
        let (a, b) = (mine.as_secs_f64(), theirs.as_secs_f64());
        let total = (a + b).max(f64::MIN_POSITIVE);
        Self {
            own: (self.own * a + other.own * b) / total,
            other: (self.other * a + other.other * b) / total,
        }
    }
}

/// Cumulative busy time of the machine and of this process, in clock ticks.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    at: Instant,
    machine_busy: u64,
    own: u64,
}

/// `USER_HZ`: the unit of `/proc/stat` and `/proc/self/stat`, 100 on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;

impl CpuSnapshot {
    pub fn take() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let machine: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal …: everything but idle and iowait.
        let machine_busy = machine
            .iter()
            .take(8)
            .enumerate()
            .filter(|(index, _)| *index != 3 && *index != 4)
            .map(|(_, ticks)| ticks)
            .sum();
        let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name start at field 3 (state); utime and
        // stime are fields 14 and 15.
        let mut after_comm = own_stat.rsplit_once(')')?.1.split_whitespace().skip(11);
        let utime: u64 = after_comm.next()?.parse().ok()?;
        let stime: u64 = after_comm.next()?.parse().ok()?;
        Some(Self {
            at: Instant::now(),
            machine_busy,
            own: utime + stime,
        })
    }

    /// Usage from `self` to `later`.
    pub fn until(&self, later: &Self) -> Option<CpuUsage> {
        let seconds = later.at.duration_since(self.at).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let own = later.own.saturating_sub(self.own) as f64 / TICKS_PER_SECOND;
        let machine =
            later.machine_busy.saturating_sub(self.machine_busy) as f64 / TICKS_PER_SECOND;
        Some(CpuUsage {
            own: own / seconds,
            other: (machine - own).max(0.0) / seconds,
        })
    }
}

/// Samples the window `[from, from + length)` on a plain thread, so a saturated runtime cannot
/// delay the samples.
pub fn sample_window(from: Instant, length: Duration) -> std::thread::JoinHandle<Option<CpuUsage>> {
    std::thread::spawn(move || {
        std::thread::sleep(from.saturating_duration_since(Instant::now()));
        let start = CpuSnapshot::take()?;
        std::thread::sleep(length);
        start.until(&CpuSnapshot::take()?)
    })
}
