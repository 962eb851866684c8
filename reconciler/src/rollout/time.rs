//! Checked time arithmetic for the rollout engine: a deadline or soak that would pass the end
//! of chrono's calendar saturates there instead of panicking (`DateTime + TimeDelta`
//! overflows). fleet.yaml bounds durations (`spec::types::MAX_DURATION`), so this only guards
//! against records and callers that bypass validation.

use chrono::{DateTime, TimeDelta, TimeZone};

/// `at + d`, or the latest representable time when that overflows.
pub fn later<Tz: TimeZone>(at: DateTime<Tz>, d: std::time::Duration) -> DateTime<Tz> {
    let tz = at.timezone();
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| at.clone().checked_add_signed(d))
        .unwrap_or_else(|| DateTime::<chrono::Utc>::MAX_UTC.with_timezone(&tz))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn overflowing_durations_saturate_instead_of_panicking() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let far = later(now, std::time::Duration::from_secs(99_999_999_999 * 3600));
        assert_eq!(far, DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            later(now, std::time::Duration::MAX),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            later(now, std::time::Duration::from_secs(60)).signed_duration_since(now),
            TimeDelta::seconds(60)
        );
        let tz = now.with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(
            later(tz, std::time::Duration::MAX).with_timezone(&Utc),
            DateTime::<Utc>::MAX_UTC
        );
    }
}
