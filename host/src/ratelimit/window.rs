//! Fixed windows in UTC: the window a moment falls in, for each unit of the rate limit API.
//!
//! Seconds, minutes, hours and days are counted from the Unix epoch; a week starts on
//! Monday 00:00 UTC; a month and a year are calendar ones, so a quota "per month" resets on
//! the first of the month as a customer's plan says, whatever the month's length.

use super::proto::Unit;

/// `[start, end)` in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

const DAY: u64 = 86_400;

/// Seconds since the Unix epoch, the clock every window and log interval is read from.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl Window {
    /// The window of `unit` that holds `now` (seconds since the epoch); `None` for
    /// `Unit::Unknown`.
    pub fn of(unit: Unit, now: u64) -> Option<Window> {
        let fixed = |length: u64| {
            let start = now - now % length;
            Window {
                start,
                end: start + length,
            }
        };
        Some(match unit {
            Unit::Unknown => return None,
            Unit::Second => fixed(1),
            Unit::Minute => fixed(60),
            Unit::Hour => fixed(3_600),
            Unit::Day => fixed(DAY),
            Unit::Week => {
                // 1970-01-01 was a Thursday: Monday is three days later in the cycle.
                let days = now / DAY;
                let since_monday = (days + 3) % 7;
                let start = (days - since_monday) * DAY;
                Window {
                    start,
                    end: start + 7 * DAY,
                }
            }
            Unit::Month => {
                let (year, month, _) = civil_from_days(now / DAY);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                Window {
                    start: days_from_civil(year, month, 1) * DAY,
                    end: days_from_civil(next_year, next_month, 1) * DAY,
                }
            }
            Unit::Year => {
                let (year, _, _) = civil_from_days(now / DAY);
                Window {
                    start: days_from_civil(year, 1, 1) * DAY,
                    end: days_from_civil(year + 1, 1, 1) * DAY,
                }
            }
        })
    }

    /// Seconds from `now` to the window's end (at least 1, so a reset is never "now").
    pub fn seconds_left(&self, now: u64) -> u64 {
        self.end.saturating_sub(now).max(1)
    }
}

/// Year, month (1–12) and day of the month of a day counted from 1970-01-01 (the
/// proleptic Gregorian calendar's era arithmetic, valid for every day after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The day counted from 1970-01-01 of a calendar date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-30T16:48:46Z, a Monday.
    const NOW: u64 = 1_796_057_326;

    #[test]
    fn fixed_units_align_to_the_epoch() {
        assert_eq!(Window::of(Unit::Second, NOW).unwrap().start, NOW);
        let minute = Window::of(Unit::Minute, NOW).unwrap();
        assert_eq!((minute.start % 60, minute.end - minute.start), (0, 60));
        assert!(minute.start <= NOW && NOW < minute.end);
        let day = Window::of(Unit::Day, NOW).unwrap();
        assert_eq!(day.start, days_from_civil(2026, 11, 30) * DAY);
        assert_eq!(day.seconds_left(NOW), day.end - NOW);
        assert_eq!(Window::of(Unit::Unknown, NOW), None);
    }

    #[test]
    fn weeks_start_on_monday() {
        let week = Window::of(Unit::Week, NOW).unwrap();
        assert_eq!(week.start, days_from_civil(2026, 11, 30) * DAY);
        let sunday = days_from_civil(2026, 12, 6) * DAY + 3_600;
        assert_eq!(Window::of(Unit::Week, sunday).unwrap(), week);
        assert_eq!(week.end, days_from_civil(2026, 12, 7) * DAY);
    }

    #[test]
    fn months_and_years_are_calendar_ones() {
        let november = Window::of(Unit::Month, NOW).unwrap();
        assert_eq!(november.start, days_from_civil(2026, 11, 1) * DAY);
        assert_eq!(november.end, days_from_civil(2026, 12, 1) * DAY);
        let december = Window::of(Unit::Month, november.end).unwrap();
        assert_eq!(december.end, days_from_civil(2027, 1, 1) * DAY);
        let february = Window::of(Unit::Month, days_from_civil(2028, 2, 29) * DAY).unwrap();
        assert_eq!((february.end - february.start) / DAY, 29);
        let year = Window::of(Unit::Year, NOW).unwrap();
        assert_eq!(year.start, days_from_civil(2026, 1, 1) * DAY);
        assert_eq!((year.end - year.start) / DAY, 365);
    }

    #[test]
    fn calendar_conversions_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in (0..80_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
