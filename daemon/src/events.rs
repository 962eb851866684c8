//! What happened in the fleet, as one stream: the event bus that notifications and the live UI
//! read.
//!
//! The daemon's parts publish [`FleetEvent`]s at the places where they already log and count
//! what happened: rollout events (`Shared::on_event`, which also carries the heals after a
//! drift check), a rejected commit, a drift check's drifted clusters, a workflow run's new
//! phase, a finished backup. Readers
//! subscribe ([`Bus::subscribe`]) and get every event published after that, in order; one
//! that falls more than [`CAPACITY`] events behind is told how many it missed (`Lagged`) and
//! goes on, so a slow reader never slows a rollout. The last [`RECENT`] events are kept for
//! readers that start late ([`Bus::since`]: an SSE client's `Last-Event-ID`, the events API).
//!
//! Publishing never blocks and never fails. Nothing in an event is secret: messages are the
//! ones the daemon already logs (credentials redacted where they are built).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;

pub use flotilla_notify::{Event as FleetEvent, Trigger};

/// How far a subscriber may fall behind before it misses events.
pub const CAPACITY: usize = 1024;
/// How many past events the bus keeps for late readers.
pub const RECENT: usize = 512;

/// The event of a rollout engine event.
pub fn of_rollout(e: &flotilla_reconciler::rollout::Event) -> FleetEvent {
    FleetEvent {
        at: e.at.clone(),
        kind: Some(e.kind.clone()),
        placement: Some(e.placement.clone()),
        cluster: e.cluster.clone(),
        rollout: Some(e.rollout.clone()),
        batch: e.batch,
        ..FleetEvent::new(Trigger::of_rollout_kind(&e.kind), e.message.clone())
    }
}

/// The daemon's one event stream (see the module docs).
pub struct Bus {
    sender: broadcast::Sender<Arc<FleetEvent>>,
    seq: AtomicU64,
    recent: Mutex<VecDeque<Arc<FleetEvent>>>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new()
    }
}

impl Bus {
    pub fn new() -> Bus {
        Bus {
            sender: broadcast::channel(CAPACITY).0,
            seq: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }

    /// Numbers, stamps (when `at` is empty) and sends `event` to every subscriber.
    pub fn publish(&self, mut event: FleetEvent) {
        // Numbering and queueing under one lock: subscribers and `since` see one order.
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        event.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if event.at.is_empty() {
            event.at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        let event = Arc::new(event);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        // No subscriber is not an error.
        let _ = self.sender.send(event);
    }

    /// Every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FleetEvent>> {
        self.sender.subscribe()
    }

    /// The kept events with `seq` greater than `after`, oldest first, and a receiver for the
    /// ones after them (taken under the same lock: nothing falls between the two).
    pub fn since(
        &self,
        after: u64,
    ) -> (Vec<Arc<FleetEvent>>, broadcast::Receiver<Arc<FleetEvent>>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let past = recent.iter().filter(|e| e.seq > after).cloned().collect();
        (past, self.sender.subscribe())
    }

    /// The `seq` of the newest event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_names_round_trip_and_rollout_kinds_map() {
        for t in Trigger::ALL {
            assert_eq!(Trigger::parse(t.name()), Some(t));
        }
        assert_eq!(Trigger::parse("nope"), None);
        assert_eq!(Trigger::of_rollout_kind("started"), Trigger::RolloutStarted);
        assert_eq!(
            Trigger::of_rollout_kind("rollback-stopped"),
            Trigger::RolloutFailed
        );
        assert_eq!(
            Trigger::of_rollout_kind("rolled-back-all"),
            Trigger::RolledBack
        );
        assert_eq!(
            Trigger::of_rollout_kind("batch-applying"),
            Trigger::RolloutStep
        );
    }

    #[tokio::test]
    async fn subscribers_get_events_in_order_and_late_readers_get_the_recent_ones() {
        let bus = Bus::new();
        bus.publish(FleetEvent::new(Trigger::DriftFound, "one").cluster("a"));
        let mut rx = bus.subscribe();
        bus.publish(FleetEvent::new(Trigger::SelfHealed, "two").cluster("a"));
        let got = rx.recv().await.expect("an event");
        assert_eq!((got.seq, got.message.as_str()), (2, "two"));
        assert!(!got.at.is_empty());

        for i in 0..RECENT + 10 {
            bus.publish(FleetEvent::new(Trigger::RolloutStep, format!("{i}")));
        }
        let (past, _) = bus.since(0);
        assert_eq!(past.len(), RECENT, "only the newest are kept");
        assert_eq!(past.last().map(|e| e.seq), Some(bus.last_seq()));
        let (past, mut rx) = bus.since(bus.last_seq() - 2);
        assert_eq!(past.len(), 2);
        bus.publish(FleetEvent::new(Trigger::RolloutStep, "after"));
        assert_eq!(rx.recv().await.map(|e| e.seq).ok(), Some(bus.last_seq()));
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_told_and_publishing_never_blocks() {
        let bus = Bus::new();
        let mut rx = bus.subscribe();
        for i in 0..CAPACITY + 5 {
            bus.publish(FleetEvent::new(Trigger::RolloutStep, format!("{i}")));
        }
        match rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 5),
            other => panic!("expected Lagged, got {other:?}"),
        }
        assert_eq!(rx.recv().await.map(|e| e.seq).ok(), Some(6));
    }
}
