//! Repeats: the same trigger, placement, cluster and message to the same sink within a
//! window is sent once (a drift check finding the same drift every interval pages once).
//! Pure: the caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Event;

/// At most this many keys are remembered; beyond it the oldest are forgotten first (a
/// forgotten key is sent again, never lost).
pub const MAX_KEYS: usize = 4096;

/// What makes two events repeats of each other, for one sink.
pub fn key(sink: &str, e: &Event) -> String {
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        sink,
        e.trigger.name(),
        &o(&e.placement),
        &o(&e.cluster),
        &e.message,
    ]
    .join("\u{0}")
}

/// Keys sent within the window, with when they were sent.
pub struct Dedup {
    window: Duration,
    sent: HashMap<String, Instant>,
}

impl Dedup {
    pub fn new(window: Duration) -> Dedup {
        Dedup {
            window,
            sent: HashMap::new(),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// A new window keeps what was sent (a reload does not re-send every repeat).
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// `true`: send it (and remember it from `now`); `false`: a repeat within the window.
    pub fn admit(&mut self, key: String, now: Instant) -> bool {
        if self.window.is_zero() {
            return true;
        }
        if let Some(at) = self.sent.get(&key)
            && now.saturating_duration_since(*at) < self.window
        {
            return false;
        }
        if self.sent.len() >= MAX_KEYS {
            let window = self.window;
            self.sent
                .retain(|_, at| now.saturating_duration_since(*at) < window);
            if self.sent.len() >= MAX_KEYS {
                // Forget the oldest quarter at once (one pass, not one per insert).
                let mut times: Vec<Instant> = self.sent.values().copied().collect();
                let cut = times.len() / 4;
                let (_, cutoff, _) = times.select_nth_unstable(cut);
                let cutoff = *cutoff;
                self.sent.retain(|_, at| *at > cutoff);
            }
        }
        self.sent.insert(key, now);
        true
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drift(cluster: &str, message: &str) -> Event {
        Event {
            trigger: crate::Trigger::DriftFound,
            cluster: Some(cluster.into()),
            message: message.into(),
            ..Event::default()
        }
    }

    #[test]
    fn a_repeat_within_the_window_is_sent_once_then_again_after_it() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(3600));
        let e = drift("prod-1", "2 objects differ");
        assert!(d.admit(key("chat", &e), t0));
        // The drift check finds the same drift every 5 minutes: not sent again.
        for i in 1..12 {
            assert!(!d.admit(key("chat", &e), t0 + Duration::from_secs(300 * i)));
        }
        // Another sink, another cluster, another message: not repeats.
        assert!(d.admit(key("hook", &e), t0));
        assert!(d.admit(key("chat", &drift("prod-2", "2 objects differ")), t0));
        assert!(d.admit(key("chat", &drift("prod-1", "3 objects differ")), t0));
        // After the window, it is news again.
        assert!(d.admit(key("chat", &e), t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn a_zero_window_sends_everything() {
        let mut d = Dedup::new(Duration::ZERO);
        let e = drift("a", "m");
        let t = Instant::now();
        assert!(d.admit(key("s", &e), t));
        assert!(d.admit(key("s", &e), t));
        assert!(d.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn memory_is_bounded_and_the_newest_key_is_kept(n in 1usize..(MAX_KEYS * 2)) {
            let t0 = Instant::now();
            let mut d = Dedup::new(Duration::from_secs(60));
            for i in 0..n {
                d.admit(format!("k{i}"), t0 + Duration::from_millis(i as u64));
            }
            prop_assert!(d.len() <= MAX_KEYS);
            let last = format!("k{}", n - 1);
            prop_assert!(!d.admit(last, t0 + Duration::from_millis(n as u64)));
        }
    }
}
