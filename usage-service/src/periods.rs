//! Billing periods are calendar months in UTC; tool-call quotas reset every UTC day.

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};

/// `[start, end)` in Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The calendar month (UTC) containing `at_ms`.
pub fn month(at_ms: i64) -> Window {
    let at = datetime(at_ms);
    let first = NaiveDate::from_ymd_opt(at.year(), at.month(), 1).unwrap_or_default();
    let next = first.checked_add_months(Months::new(1)).unwrap_or(first);
    Window {
        start_ms: midnight_ms(first),
        end_ms: midnight_ms(next),
    }
}

/// The UTC day containing `at_ms`.
pub fn day(at_ms: i64) -> Window {
    const DAY_MS: i64 = 86_400_000;
    let start_ms = at_ms.div_euclid(DAY_MS) * DAY_MS;
    Window {
        start_ms,
        end_ms: start_ms + DAY_MS,
    }
}

fn datetime(at_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(at_ms).single().unwrap_or_default()
}

fn midnight_ms(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .map(|naive| naive.and_utc().timestamp_millis())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_days_have_the_right_bounds() {
        // 2026-11-24T05:58:00Z
        let at = 1_795_499_880_000;
        let month = month(at);
        assert_eq!(month.start_ms, 1_793_491_200_000); // 2026-11-01
        assert_eq!(month.end_ms, 1_796_083_200_000); // 2026-12-01
        let day = day(at);
        assert_eq!(day.start_ms, 1_795_478_400_000);
        assert_eq!(day.end_ms - day.start_ms, 86_400_000);
        // December rolls into the next year.
        let december = super::month(1_796_083_200_000);
        assert_eq!(december.end_ms, 1_798_761_600_000); // 2027-01-01
    }
}
