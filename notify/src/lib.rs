//! Notifications (docs/notifications.md): which events go where ([`rules`]), what a repeat is
//! ([`dedup`]), how long to wait before trying again ([`backoff`]), what each sink is sent
//! ([`payload`]), where secrets come from ([`secrets`]), and the [`Notifier`] that delivers:
//! one bounded queue and one task per sink, so a slow or dead sink never slows the caller
//! ([`Notifier::submit`] never awaits a sink).
//!
//! The pure parts know nothing of time sources, HTTP or clusters; the notifier knows HTTP
//! (reqwest) but not Kubernetes: Kubernetes Events go through the caller's [`KubeEvents`].

pub mod backoff;
pub mod dedup;
mod notifier;
pub mod payload;
pub mod rules;
pub mod secrets;

use serde::Serialize;

pub use notifier::{KubeEvents, Metrics, Notifier, PostError, Settings, SinkHealth};
pub use rules::{Delivery, Rules};
pub use secrets::{Secret, SecretSource};

/// What an event is about: the notification triggers, and the steps in between that only a
/// live view wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
    #[default]
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

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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

/// One thing that happened in the fleet: what the daemon's event bus carries, the UI streams
/// and notifications deliver. Defined here, the lowest crate that needs it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
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

impl Event {
    /// An event with only its trigger and message set (`seq` and `at` are filled in by
    /// the daemon's bus).
    pub fn new(trigger: Trigger, message: impl Into<String>) -> Event {
        Event {
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

    pub fn placement(mut self, p: impl Into<String>) -> Event {
        self.placement = Some(p.into());
        self
    }

    pub fn cluster(mut self, c: impl Into<String>) -> Event {
        self.cluster = Some(c.into());
        self
    }

    pub fn commit(mut self, c: impl Into<String>) -> Event {
        self.commit = Some(c.into());
        self
    }

    pub fn kind(mut self, k: impl Into<String>) -> Event {
        self.kind = Some(k.into());
        self
    }

    pub fn workflow(mut self, w: impl Into<String>) -> Event {
        self.workflow = Some(w.into());
        self
    }

    pub fn backup(mut self, b: impl Into<String>) -> Event {
        self.backup = Some(b.into());
        self
    }
}

impl Event {
    /// The value of a template variable (`trigger`, `cluster`, ...; see
    /// `flotilla_spec::template::NOTIFICATION_VARIABLES`), `None` when the event has none.
    pub fn field(&self, name: &str) -> Option<String> {
        match name {
            "seq" => Some(self.seq.to_string()),
            "at" => Some(self.at.clone()),
            "trigger" => Some(self.trigger.name().to_string()),
            "kind" => self.kind.clone(),
            "placement" => self.placement.clone(),
            "cluster" => self.cluster.clone(),
            "rollout" => self.rollout.clone(),
            "batch" => self.batch.map(|b| b.to_string()),
            "commit" => self.commit.clone(),
            "workflow" => self.workflow.clone(),
            "backup" => self.backup.clone(),
            "message" => Some(self.message.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Trigger;

    /// fleet.yaml's `triggers:` are checked against the spec's list: it must be this one.
    #[test]
    fn the_spec_knows_every_trigger() {
        let names: Vec<&str> = Trigger::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, flotilla_spec::NOTIFICATION_TRIGGERS);
        for t in Trigger::ALL {
            assert_eq!(Trigger::parse(t.name()), Some(t));
        }
    }
}
