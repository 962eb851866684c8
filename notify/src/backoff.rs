//! When to try a failed delivery again: exponential backoff with jitter, capped, for
//! failures worth retrying (connection errors, timeouts, 429 and 5xx answers). Pure: the
//! jitter comes in as a number in [0, 1).

use std::time::Duration;

/// The retry schedule of one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first retry, before jitter.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
    /// Tries in all (the first one included).
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
            attempts: 6,
        }
    }
}

impl Backoff {
    /// The wait after failed try number `attempt` (1 = the first try), or `None` when no
    /// try is left. "Equal jitter": half the exponential step, plus up to the other half.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Option<Duration> {
        if attempt == 0 || attempt >= self.attempts {
            return None;
        }
        let step = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt - 1))
            .min(self.cap);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Some(step / 2 + (step / 2).mul_f64(jitter))
    }
}

/// Whether an HTTP answer is worth retrying: 429 and 5xx are; other statuses are final.
pub fn retry_status(code: u16) -> bool {
    code == 429 || (500..600).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_up_to_the_cap_and_stops_after_the_last_attempt() {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(5),
            attempts: 5,
        };
        let full: Vec<_> = (1..6).map(|a| b.delay(a, 1.0)).collect();
        assert_eq!(
            full,
            [
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(5)),
                None
            ]
        );
        assert_eq!(b.delay(1, 0.0), Some(Duration::from_millis(500)));
        assert_eq!(b.delay(0, 0.5), None);
    }

    #[test]
    fn retries_5xx_and_429_only() {
        for c in [429, 500, 502, 503, 599] {
            assert!(retry_status(c), "{c}");
        }
        for c in [200, 301, 400, 401, 403, 404, 410, 422] {
            assert!(!retry_status(c), "{c}");
        }
    }

    proptest! {
        #[test]
        fn a_delay_lies_in_half_to_the_full_step_and_never_over_the_cap(
            base_ms in 1u64..5_000,
            cap_ms in 1u64..120_000,
            attempt in 1u32..40,
            jitter in 0.0f64..1.0,
        ) {
            let b = Backoff {
                base: Duration::from_millis(base_ms),
                cap: Duration::from_millis(cap_ms),
                attempts: 100,
            };
            let d = b.delay(attempt, jitter).expect("a try is left");
            let step = Duration::from_millis(base_ms)
                .saturating_mul(2u32.saturating_pow(attempt - 1))
                .min(Duration::from_millis(cap_ms));
            prop_assert!(d >= step / 2);
            prop_assert!(d <= step);
            prop_assert!(d <= b.cap);
            // Later retries never wait less (before jitter).
            let next = b.delay(attempt + 1, 0.0).expect("a try is left");
            prop_assert!(next >= step / 2);
        }
    }
}
