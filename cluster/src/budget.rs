//! The request budget of one cluster: a QPS/burst token bucket every request waits on, and
//! the retry policy (bounded attempts, exponential backoff) for transient failures.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Bounded retries with exponential backoff, for 429, 5xx, timeouts and connection errors
/// (never for other 4xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait before the second attempt; doubled for each further one.
    pub base_delay: Duration,
    /// The longest wait between two attempts (a server's `retryAfterSeconds` included).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): `base * 2^(attempt-1)`, or
    /// the server's `retry_after` when that is longer, capped at `max_delay`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = attempt.saturating_sub(1).min(16);
        let backoff = self.base_delay.saturating_mul(1u32 << exp);
        backoff
            .max(retry_after.unwrap_or(Duration::ZERO))
            .min(self.max_delay)
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.max(1)
    }
}

/// A token bucket: `burst` requests at once, then `qps` per second. A `qps` that is not a
/// positive number means no limit.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(qps: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            qps,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    fn unlimited(&self) -> bool {
        !(self.qps.is_finite() && self.qps > 0.0)
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&self) {
        if self.unlimited() {
            return;
        }
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
                s.tokens = (s.tokens + elapsed * self.qps).min(self.burst);
                s.last = now;
                if s.tokens >= 1.0 {
                    s.tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.tokens) / self.qps)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_and_is_capped() {
        let p = RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(p.delay(1, None), Duration::from_millis(200));
        assert_eq!(p.delay(2, None), Duration::from_millis(400));
        assert_eq!(p.delay(3, None), Duration::from_millis(800));
        assert_eq!(p.delay(4, None), Duration::from_secs(1));
        assert_eq!(p.delay(40, None), Duration::from_secs(1));
        // A server's Retry-After is honoured when longer, still within the cap.
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(1)
        );
        let zero = RetryPolicy { attempts: 0, ..p };
        assert_eq!(zero.attempts(), 1);
    }

    #[tokio::test]
    async fn bucket_allows_the_burst_then_paces() {
        let b = TokenBucket::new(50.0, 5);
        let start = std::time::Instant::now();
        for _ in 0..5 {
            b.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "the burst is free"
        );
        for _ in 0..5 {
            b.acquire().await;
        }
        // Five more at 50/s take about 100 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn zero_qps_is_unlimited() {
        let b = TokenBucket::new(0.0, 1);
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            b.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
