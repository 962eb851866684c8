//! Polling on a schedule: every interval, at once when triggered (a webhook), and with
//! exponential backoff while the remote fails. The current snapshot stays in use meanwhile.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::{GitError, GitSource, Poll};

/// A handle that makes a [`Poller`] poll now (e.g. from a webhook handler). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Trigger(Sender<()>);

impl Trigger {
    /// Asks for a poll now. Several triggers before the poll count as one.
    pub fn fire(&self) {
        // The poller is gone: nothing to do.
        let _ = self.0.send(());
    }
}

/// Drives a [`GitSource`]: call [`Poller::wait_and_poll`] in a loop on a thread of its own.
#[derive(Debug)]
pub struct Poller {
    source: GitSource,
    interval: Duration,
    max_backoff: Duration,
    failures: u32,
    first: bool,
    tx: Sender<()>,
    rx: Receiver<()>,
}

/// The wait before the next poll after `failures` failures in a row: the interval, doubled
/// per failure, capped at `max_backoff` (never below the interval).
pub fn backoff(interval: Duration, max_backoff: Duration, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX);
    interval
        .saturating_mul(factor)
        .min(max_backoff.max(interval))
}

impl Poller {
    pub fn new(source: GitSource, interval: Duration, max_backoff: Duration) -> Poller {
        let (tx, rx) = std::sync::mpsc::channel();
        Poller {
            source,
            interval,
            max_backoff,
            failures: 0,
            first: true,
            tx,
            rx,
        }
    }

    pub fn trigger(&self) -> Trigger {
        Trigger(self.tx.clone())
    }

    pub fn source(&self) -> &GitSource {
        &self.source
    }

    pub fn source_mut(&mut self) -> &mut GitSource {
        &mut self.source
    }

    /// How long [`Poller::wait_and_poll`] will wait unless triggered.
    pub fn delay(&self) -> Duration {
        backoff(self.interval, self.max_backoff, self.failures)
    }

    /// Waits until the next poll is due (at once the first time, or when triggered), polls,
    /// and returns what the poll found. After an error the next wait backs off.
    pub fn wait_and_poll(&mut self) -> Result<Poll, GitError> {
        if !std::mem::take(&mut self.first) {
            match self.rx.recv_timeout(self.delay()) {
                Ok(()) => while self.rx.try_recv().is_ok() {},
                Err(RecvTimeoutError::Timeout) => {}
                // Unreachable: we hold a sender ourselves.
                Err(RecvTimeoutError::Disconnected) => {}
            }
        }
        let result = self.source.poll();
        match &result {
            Ok(_) => self.failures = 0,
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                tracing::warn!(
                    error = %e,
                    failures = self.failures,
                    retry_in = ?self.delay(),
                    "poll failed; keeping the last snapshot"
                );
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(30), s(600), 0), s(30));
        assert_eq!(backoff(s(30), s(600), 1), s(60));
        assert_eq!(backoff(s(30), s(600), 3), s(240));
        assert_eq!(backoff(s(30), s(600), 5), s(600));
        assert_eq!(backoff(s(30), s(600), 1000), s(600));
        assert_eq!(backoff(s(30), s(10), 3), s(30));
    }
}
