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

use serde::Serialize;
use tokio::sync::broadcast;

/// How far a subscriber may fall behind before it misses events.
pub const CAPACITY: usize = 1024;
/// How many past events the bus keeps for late readers.
pub const RECENT: usize = 512;

/// What an event is about: the notification triggers, and the steps in between that only a
/// live view wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    RolloutStarted,
    RolloutSucceeded,
    /// The rollout failed, or its rollback could not finish.
    RolloutFailed,
    RolledBack,
    RolloutPaused,
    /// Any other rollout step (a batch applying, a cluster healthy, a gate passed, a failed
    /// self-heal, ...).
    RolloutStep,
    DriftFound,
    SelfHealed,
    CommitRejected,
    WorkflowFailed,
    /// Any other workflow run phase (started, succeeded, skipped, ...).
    WorkflowRun,
    BackupFailed,
    BackupSucceeded,
}

impl Trigger {
    /// Every trigger, in a stable order.
    pub const ALL: [Trigger; 13] = [
        Trigger::RolloutStarted,
        Trigger::RolloutSucceeded,
        Trigger::RolloutFailed,
        Trigger::RolledBack,
        Trigger::RolloutPaused,
        Trigger::RolloutStep,
        Trigger::DriftFound,
        Trigger::SelfHealed,
        Trigger::CommitRejected,
        Trigger::WorkflowFailed,
        Trigger::WorkflowRun,
        Trigger::BackupFailed,
        Trigger::BackupSucceeded,
    ];

    /// The name used in fleet.yaml, the API and metrics (`rollout-started`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Trigger::RolloutStarted => "rollout-started",
            Trigger::RolloutSucceeded => "rollout-succeeded",
            Trigger::RolloutFailed => "rollout-failed",
            Trigger::RolledBack => "rolled-back",
            Trigger::RolloutPaused => "rollout-paused",
            Trigger::RolloutStep => "rollout-step",
            Trigger::DriftFound => "drift-found",
            Trigger::SelfHealed => "self-healed",
            Trigger::CommitRejected => "commit-rejected",
            Trigger::WorkflowFailed => "workflow-failed",
            Trigger::WorkflowRun => "workflow-run",
            Trigger::BackupFailed => "backup-failed",
            Trigger::BackupSucceeded => "backup-succeeded",
        }
    }

    pub fn parse(name: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The trigger of a rollout event of kind `kind` (the engine's event kinds).
    pub fn of_rollout_kind(kind: &str) -> Trigger {
        match kind {
            "started" => Trigger::RolloutStarted,
            "succeeded" => Trigger::RolloutSucceeded,
            "failed" | "rollback-stopped" => Trigger::RolloutFailed,
            "rolled-back-all" => Trigger::RolledBack,
            "paused" => Trigger::RolloutPaused,
            // The heal after a drift check records its heals as events of the placement.
            "self-healed" => Trigger::SelfHealed,
            _ => Trigger::RolloutStep,
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetEvent {
    /// Increases by one per event of this daemon process (the SSE event id).
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    pub trigger: Trigger,
    /// The source's own word for it (a rollout event kind such as `batch-applying`, a workflow
    /// run phase), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// The commit it concerns (a rejected commit, the revision a drift check compared with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// A workflow's or backup policy's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    pub message: String,
}

impl FleetEvent {
    /// An event with only its trigger and message set (`seq` and `at` are filled in by
    /// [`Bus::publish`]).
    pub fn new(trigger: Trigger, message: impl Into<String>) -> FleetEvent {
        FleetEvent {
            seq: 0,
            at: String::new(),
            trigger,
            kind: None,
            placement: None,
            cluster: None,
            rollout: None,
            batch: None,
            commit: None,
            workflow: None,
            backup: None,
            message: message.into(),
        }
    }

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

    pub fn placement(mut self, p: impl Into<String>) -> FleetEvent {
        self.placement = Some(p.into());
        self
    }

    pub fn cluster(mut self, c: impl Into<String>) -> FleetEvent {
        self.cluster = Some(c.into());
        self
    }

    pub fn commit(mut self, c: impl Into<String>) -> FleetEvent {
        self.commit = Some(c.into());
        self
    }

    pub fn kind(mut self, k: impl Into<String>) -> FleetEvent {
        self.kind = Some(k.into());
        self
    }

    pub fn workflow(mut self, w: impl Into<String>) -> FleetEvent {
        self.workflow = Some(w.into());
        self
    }

    pub fn backup(mut self, b: impl Into<String>) -> FleetEvent {
        self.backup = Some(b.into());
        self
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
