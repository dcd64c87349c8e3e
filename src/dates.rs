//! Times as vm0fs writes and reads them: ISO-8601 UTC with milliseconds (the API's
//! timestamps, the status file, the `user.vm0.*` attributes) and the signed seconds of an
//! archive (before 1970 when negative). A low room: the API client, the filesystem and
//! the mount all use it, and it uses none of them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// ISO-8601 UTC with milliseconds, as the API writes timestamps.
pub fn format_time(t: SystemTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// A time from an archive's seconds and nanoseconds (before 1970 when negative).
pub fn from_unix(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(u64::from(nsec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_times_convert_both_sides_of_1970() {
        let cases = [
            ((0, 0), UNIX_EPOCH),
            ((1, 5), UNIX_EPOCH + Duration::new(1, 5)),
            ((-1, 0), UNIX_EPOCH - Duration::from_secs(1)),
            (
                (-2, 500),
                UNIX_EPOCH - Duration::from_secs(2) + Duration::from_nanos(500),
            ),
        ];
        for ((sec, nsec), want) in cases {
            assert_eq!(from_unix(sec, nsec), want, "{sec}.{nsec}");
        }
    }

    #[test]
    fn times_are_formatted_as_the_api_writes_them() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(format_time(t), "2023-11-14T22:13:20.123Z");
    }
}
