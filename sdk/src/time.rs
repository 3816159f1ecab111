//! UTC calendar arithmetic for quotas and usage records (no time-zone data needed).
//!
//! ```
//! use tollgate_sdk::time::{civil_from_days, utc_day, month_index, next_month_start_secs};
//! let t = 1_709_251_200; // 2024-03-01T00:00:00Z
//! assert_eq!(civil_from_days(utc_day(t)), (2024, 3, 1));
//! assert_eq!(month_index(t), 2024 * 12 + 2);
//! assert_eq!(next_month_start_secs(t - 1), t); // from 2024-02-29T23:59:59Z
//! ```

const SECS_PER_DAY: u64 = 86_400;

/// Days since 1970-01-01 of a Unix time in seconds.
pub fn utc_day(unix_secs: u64) -> u64 {
    unix_secs / SECS_PER_DAY
}

/// (year, month 1-12, day 1-31) of a day number since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day number since 1970-01-01 of a (year, month 1-12, day 1-31).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) as u64
}

/// A number that changes exactly when the UTC month does: `year * 12 + month - 1`.
pub fn month_index(unix_secs: u64) -> u64 {
    let (year, month, _) = civil_from_days(utc_day(unix_secs));
    year as u64 * 12 + u64::from(month) - 1
}

/// Unix seconds of the next UTC midnight.
pub fn next_day_start_secs(unix_secs: u64) -> u64 {
    (utc_day(unix_secs) + 1) * SECS_PER_DAY
}

/// Unix seconds of the first instant of the next UTC month.
pub fn next_month_start_secs(unix_secs: u64) -> u64 {
    let (year, month, _) = civil_from_days(utc_day(unix_secs));
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    days_from_civil(year, month, 1) * SECS_PER_DAY
}

/// `2024-03-01T12:00:00Z` for a Unix time in seconds.
pub fn rfc3339(unix_secs: u64) -> String {
    let (year, month, day) = civil_from_days(utc_day(unix_secs));
    let rest = unix_secs % SECS_PER_DAY;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips() {
        for days in (0..80_000).step_by(13) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn boundaries() {
        let t = 1_735_689_599; // 2024-12-31T23:59:59Z
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59Z");
        assert_eq!(next_day_start_secs(t), t + 1);
        assert_eq!(next_month_start_secs(t), t + 1);
        assert_eq!(month_index(t + 1), month_index(t) + 1);
        assert_eq!(
            rfc3339(next_month_start_secs(1_706_745_600)),
            "2024-03-01T00:00:00Z"
        );
    }
}
