//! What a run of the delta phase is asked to do, and how each delta says when it was sent.
//!
//! The delta backend ([`super::pacer`]) and the clients ([`super::deltas`]) live in one
//! process, so one [`Clock`] stamps a delta when the backend sends it and the client subtracts
//! that from the time it read the frame, with no clock sync involved. Each delta's text is one
//! record ([`record`]), so a frame in which the gateway merged several deltas still tells each
//! delta's latency, and gaps in the sequence tell what was lost. A run's rate and measured
//! window travel to the backend in `start.input` ([`Pace`]).

use std::time::{Duration, Instant};

/// The gateway's default flood limit: more deltas per second per run would end the run.
pub const MAX_PER_RUN_RATE: f64 = 1000.0;

/// Microseconds since one origin, shared by the backend and the clients of this process.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }

    pub fn micros(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The instant `micros` after the origin.
    pub fn instant(&self, micros: u64) -> Instant {
        self.0 + Duration::from_micros(micros)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// One delta's text: its sequence number in its run and its send time.
pub fn record(seq: u64, sent_us: u64) -> String {
    format!("{seq}:{sent_us};")
}

/// What one run is asked to do, carried in `start.input` as `<per second> <from µs> <until µs>`:
/// deltas at `per_second` from its start until `until_us`; those sent from `from_us` on are
/// measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pace {
    per_second: f64,
    from_us: u64,
    until_us: u64,
}

impl Pace {
    pub fn new(per_second: f64, from_us: u64, until_us: u64) -> Result<Self, String> {
        if !(per_second > 0.0 && per_second <= MAX_PER_RUN_RATE) {
            return Err(format!(
                "a run's rate must be above 0 and at most {MAX_PER_RUN_RATE} deltas/s, not {per_second}"
            ));
        }
        if from_us >= until_us {
            return Err("the measured window is empty".into());
        }
        Ok(Self {
            per_second,
            from_us,
            until_us,
        })
    }

    pub fn parse(input: &str) -> Result<Self, String> {
        let fields: Vec<&str> = input.split_whitespace().collect();
        let [rate, from, until] = fields[..] else {
            return Err("expected `<per second> <from µs> <until µs>`".into());
        };
        let number = |field: &str| {
            field
                .parse::<u64>()
                .map_err(|err| format!("{field}: {err}"))
        };
        let rate = rate
            .parse::<f64>()
            .map_err(|err| format!("{rate}: {err}"))?;
        Self::new(rate, number(from)?, number(until)?)
    }

    pub fn input(&self) -> String {
        format!("{} {} {}", self.per_second, self.from_us, self.until_us)
    }

    /// When delta `seq` of a run that started at `started_us` is due.
    pub fn due_us(&self, started_us: u64, seq: u64) -> u64 {
        started_us + (seq as f64 * 1e6 / self.per_second) as u64
    }

    /// When the run ends: nothing is due from then on.
    pub fn until_us(&self) -> u64 {
        self.until_us
    }

    /// The measured window contains `sent_us`.
    pub fn measures(&self, sent_us: u64) -> bool {
        (self.from_us..self.until_us).contains(&sent_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pace_survives_the_trip_through_start_input() {
        let pace = Pace::new(50.0, 2_000_000, 7_000_000).unwrap();
        assert_eq!(Pace::parse(&pace.input()), Ok(pace));
        assert!(pace.measures(2_000_000));
        assert!(pace.measures(6_999_999));
        assert!(!pace.measures(1_999_999));
        assert!(!pace.measures(7_000_000));
    }

    #[test]
    fn bad_paces_are_refused() {
        for bad in [
            "", "50 1", "50 1 2 3", "fast 1 2", "0 1 2", "-5 1 2", "1001 1 2", "NaN 1 2", "50 2 2",
            "50 3 2", "50 x 2",
        ] {
            assert!(Pace::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
