//! Budget periods: calendar days, weeks (from Monday) and months in UTC, or the whole time.

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
    Total,
}

impl Period {
    pub fn parse(text: &str) -> Result<Period> {
        match text {
            "day" | "daily" => Ok(Period::Day),
            "week" | "weekly" => Ok(Period::Week),
            "month" | "monthly" => Ok(Period::Month),
            "total" | "" => Ok(Period::Total),
            other => Err(Error::Invalid(format!("unknown budget period `{other}`: use day, week, month or total"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }
}

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month) of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// When the period holding `now_ms` began (0 for `Total`).
pub fn period_start_ms(period: Period, now_ms: i64) -> i64 {
    let day = now_ms.div_euclid(DAY_MS);
    match period {
        Period::Total => 0,
        Period::Day => day * DAY_MS,
        // 1970-01-01 was a Thursday: Monday is three days later in the week's count.
        Period::Week => (day - (day + 3).rem_euclid(7)) * DAY_MS,
        Period::Month => {
            let (y, m) = civil_from_days(day);
            days_from_civil(y, m, 1) * DAY_MS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_utc_midnight_monday_and_the_first_of_the_month() {
        // 2026-12-08T13:45:00Z, a Tuesday.
        let now = days_from_civil(2026, 12, 8) * DAY_MS + (13 * 60 + 45) * 60_000;
        assert_eq!(period_start_ms(Period::Day, now), days_from_civil(2026, 12, 8) * DAY_MS);
        assert_eq!(period_start_ms(Period::Week, now), days_from_civil(2026, 12, 7) * DAY_MS);
        assert_eq!(period_start_ms(Period::Month, now), days_from_civil(2026, 12, 1) * DAY_MS);
        assert_eq!(period_start_ms(Period::Total, now), 0);
        // A Monday starts its own week; 2024-02-29 sits in a leap February.
        let monday = days_from_civil(2026, 12, 7) * DAY_MS;
        assert_eq!(period_start_ms(Period::Week, monday), monday);
        let leap = days_from_civil(2024, 2, 29) * DAY_MS + 1;
        assert_eq!(period_start_ms(Period::Month, leap), days_from_civil(2024, 2, 1) * DAY_MS);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2000, 3, 1)), (2000, 3));
        assert!(Period::parse("fortnight").is_err());
    }
}
