//! Budget periods in UTC: when the current one started and when the next begins.

use crate::config::BudgetPeriod;

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 for a civil date (proleptic Gregorian), after Howard Hinnant.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// (year, month, day) for days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The start of the period containing `now_ms`, and the start of the next one.
pub fn bounds(period: BudgetPeriod, now_ms: i64) -> (i64, i64) {
    let today = now_ms.div_euclid(MS_PER_DAY);
    match period {
        BudgetPeriod::Day => (today * MS_PER_DAY, (today + 1) * MS_PER_DAY),
        BudgetPeriod::Week => {
            // 1970-01-01 was a Thursday; weeks start on Monday.
            let monday = today - (today + 3).rem_euclid(7);
            (monday * MS_PER_DAY, (monday + 7) * MS_PER_DAY)
        }
        BudgetPeriod::Month => {
            let (year, month, _) = civil_from_days(today);
            let start = days_from_civil(year, month, 1);
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            let end = days_from_civil(next_year, next_month, 1);
            (start * MS_PER_DAY, end * MS_PER_DAY)
        }
    }
}

/// `2026-11-25 00:00 UTC` for a time in milliseconds.
pub fn format_utc(ms: i64) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let minutes = ms.rem_euclid(MS_PER_DAY) / 60_000;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minutes / 60,
        minutes % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-25 22:07:20 UTC, a Wednesday.
    const NOW: i64 = 1_795_644_440_000;

    #[test]
    fn periods_start_and_end_where_a_calendar_says() {
        assert_eq!(format_utc(NOW), "2026-11-25 22:07 UTC");
        let (start, end) = bounds(BudgetPeriod::Day, NOW);
        assert_eq!(
            (format_utc(start), format_utc(end)),
            ("2026-11-25 00:00 UTC".into(), "2026-11-26 00:00 UTC".into())
        );
        let (start, end) = bounds(BudgetPeriod::Week, NOW);
        assert_eq!(
            (format_utc(start), format_utc(end)),
            ("2026-11-23 00:00 UTC".into(), "2026-11-30 00:00 UTC".into())
        );
        let (start, end) = bounds(BudgetPeriod::Month, NOW);
        assert_eq!(
            (format_utc(start), format_utc(end)),
            ("2026-11-01 00:00 UTC".into(), "2026-12-01 00:00 UTC".into())
        );
        let december = bounds(BudgetPeriod::Month, end + 1);
        assert_eq!(format_utc(december.1), "2027-01-01 00:00 UTC");
        let leap = days_from_civil(2028, 2, 29);
        assert_eq!(civil_from_days(leap), (2028, 2, 29));
    }
}
