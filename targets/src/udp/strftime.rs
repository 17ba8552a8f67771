//! A small, dependency-free `strftime` for the UDP time service, always in UTC.
//!
//! Supported conversions (the documented subset; anything else is copied literally,
//! so a client's typo or a truncated request never makes the server fail):
//!
//! | spec | meaning | example |
//! |---|---|---|
//! | `%Y` | year, at least 4 digits | `2024` |
//! | `%y` | year modulo 100, 2 digits | `24` |
//! | `%m` | month `01`-`12` | `03` |
//! | `%d` | day of month `01`-`31` | `07` |
//! | `%e` | day of month, space padded | ` 7` |
//! | `%H` `%M` `%S` | hour, minute, second, 2 digits | `09` |
//! | `%j` | day of year `001`-`366` | `067` |
//! | `%a` | abbreviated weekday | `Thu` |
//! | `%b` | abbreviated month | `Mar` |
//! | `%Z` | time zone, always `UTC` | `UTC` |
//! | `%s` | seconds since the Unix epoch | `1709800000` |
//! | `%%` | a literal `%` | `%` |
//!
//! A lone `%` at the end of the format is copied as `%`.

use std::io::Write as _;

/// The format used for an empty request.
pub const DEFAULT_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A UTC calendar time broken into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub unix: i64,
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Sunday
    pub weekday: u32,
    /// 1..=366
    pub yday: u32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm,
/// exact for every i64 year range we can reach from an i64 of seconds).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl UtcTime {
    pub fn from_unix(unix: i64) -> UtcTime {
        let days = unix.div_euclid(86_400);
        let secs = unix.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        UtcTime {
            unix,
            year,
            month,
            day,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
            yday: (days - days_from_civil(year, 1, 1) + 1) as u32,
        }
    }

    /// The current time (seconds resolution); a clock before 1970 counts backwards.
    pub fn now() -> UtcTime {
        UtcTime::from_unix(unix_now())
    }
}

/// Seconds since the Unix epoch, negative if the clock is set before it.
pub fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The formatted time would be longer than the caller's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("formatted time exceeds {limit} bytes")]
pub struct TooLong {
    pub limit: usize,
}

/// Formats `t` according to `format` (bytes; need not be UTF-8), stopping with an
/// error as soon as the output would exceed `limit` bytes, because a short format such
/// as `%s%s%s...` expands several-fold and a reply must still fit in one datagram.
pub fn format(format: &[u8], t: &UtcTime, limit: usize) -> Result<Vec<u8>, TooLong> {
    let mut out = Vec::with_capacity(format.len().min(limit) + 16);
    let mut bytes = format.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
        } else {
            // Writing into a Vec cannot fail.
            let _ = match bytes.next() {
                Some(b'Y') => write!(out, "{:04}", t.year),
                Some(b'y') => write!(out, "{:02}", t.year.rem_euclid(100)),
                Some(b'm') => write!(out, "{:02}", t.month),
                Some(b'd') => write!(out, "{:02}", t.day),
                Some(b'e') => write!(out, "{:2}", t.day),
                Some(b'H') => write!(out, "{:02}", t.hour),
                Some(b'M') => write!(out, "{:02}", t.minute),
                Some(b'S') => write!(out, "{:02}", t.second),
                Some(b'j') => write!(out, "{:03}", t.yday),
                Some(b'a') => write!(out, "{}", WEEKDAYS[t.weekday as usize % 7]),
                Some(b'b') => write!(out, "{}", MONTHS[(t.month as usize + 11) % 12]),
                Some(b'Z') => write!(out, "UTC"),
                Some(b's') => write!(out, "{}", t.unix),
                Some(b'%') => write!(out, "%"),
                Some(other) => {
                    out.push(b'%');
                    out.push(other);
                    Ok(())
                }
                None => {
                    out.push(b'%');
                    Ok(())
                }
            };
        }
        if out.len() > limit {
            return Err(TooLong { limit });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(f: &str, unix: i64) -> String {
        String::from_utf8(format(f.as_bytes(), &UtcTime::from_unix(unix), 1 << 16).unwrap())
            .unwrap()
    }

    #[test]
    fn epoch_and_a_leap_day_format_like_libc() {
        assert_eq!(fmt(DEFAULT_FORMAT, 0), "1970-01-01 00:00:00");
        assert_eq!(
            fmt("%a %b %e %j %y %Z %s %%", 0),
            "Thu Jan  1 001 70 UTC 0 %"
        );
        // 2024-02-29T13:05:09Z: `date -u -d @1709211909`
        assert_eq!(
            fmt("%Y-%m-%d %H:%M:%S %a %b %j", 1_709_211_909),
            "2024-02-29 13:05:09 Thu Feb 060"
        );
        // 2000-12-31 is day 366 of a leap year; 1969-12-31 23:59:59 is before the epoch.
        assert_eq!(fmt("%j", 978_220_800), "366");
        assert_eq!(fmt("%Y-%m-%d %H:%M:%S %a", -1), "1969-12-31 23:59:59 Wed");
    }

    #[test]
    fn unknown_and_trailing_percent_are_copied_literally() {
        assert_eq!(fmt("%q %", 0), "%q %");
        assert_eq!(fmt("", 0), "");
        assert_eq!(
            format(b"\xff%Y", &UtcTime::from_unix(0), 100).unwrap(),
            b"\xff1970"
        );
    }

    #[test]
    fn expanding_format_is_refused_past_the_limit() {
        let f = "%s".repeat(100);
        assert_eq!(
            format(f.as_bytes(), &UtcTime::from_unix(1_700_000_000), 64),
            Err(TooLong { limit: 64 })
        );
    }

    #[test]
    fn days_round_trip_over_four_centuries() {
        for days in (-146_097..146_097).step_by(13) {
            let t = UtcTime::from_unix(days * 86_400);
            assert_eq!(days_from_civil(t.year, t.month, t.day), days);
        }
    }
}
