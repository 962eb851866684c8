//! Maintenance windows: a window opens at each firing of its cron schedule (in its time zone,
//! UTC by default) and stays open for its duration. No windows means always open.

use chrono::{DateTime, Utc};

use flotilla_spec::Window;

/// True when `now` falls inside one of `windows` (or there are none).
pub fn is_open(windows: &[Window], now: DateTime<Utc>) -> bool {
    windows.is_empty() || windows.iter().any(|w| open_one(w, now))
}

fn open_one(w: &Window, now: DateTime<Utc>) -> bool {
    let tz = w.timezone.as_ref().map(|t| t.tz).unwrap_or(chrono_tz::UTC);
    let local = now.with_timezone(&tz);
    match w.schedule.cron.find_previous_occurrence(&local, true) {
        Ok(start) => local < super::time::later(start, w.duration.value),
        Err(_) => false,
    }
}

/// When the next window opens after `now` (`None` without windows or when no schedule fires
/// again).
pub fn next_open(windows: &[Window], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    windows
        .iter()
        .filter_map(|w| {
            let tz = w.timezone.as_ref().map(|t| t.tz).unwrap_or(chrono_tz::UTC);
            w.schedule
                .cron
                .find_next_occurrence(&now.with_timezone(&tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_spec::types::{Duration, Schedule, TimeZone};

    fn window(cron: &str, dur: &str, tz: Option<&str>) -> Window {
        Window {
            schedule: Schedule::parse(cron).expect("cron"),
            duration: Duration::parse(dur).expect("duration"),
            timezone: tz.map(|t| TimeZone::parse(t).expect("tz")),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_window_is_open_from_its_firing_for_its_duration() {
        // 01:00 Shanghai = 17:00 UTC the day before.
        let w = [window("0 1 * * *", "6h", Some("Asia/Shanghai"))];
        assert!(!is_open(&w, at("2026-11-25T16:59:00Z")));
        assert!(is_open(&w, at("2026-11-25T17:00:00Z")));
        assert!(is_open(&w, at("2026-11-25T22:59:00Z")));
        assert!(!is_open(&w, at("2026-11-25T23:00:00Z")));
        assert_eq!(
            next_open(&w, at("2026-11-25T23:00:00Z")),
            Some(at("2026-11-26T17:00:00Z"))
        );
        assert!(is_open(&[], at("2026-11-25T23:00:00Z")));
    }
}
