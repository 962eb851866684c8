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

/// One event as notifications see it: the daemon's `FleetEvent` without the daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// The trigger's name (`rollout-started`, ...).
    pub trigger: String,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    pub message: String,
}

impl Event {
    /// The value of a template variable (`trigger`, `cluster`, ...; see
    /// `flotilla_spec::template::NOTIFICATION_VARIABLES`), `None` when the event has none.
    pub fn field(&self, name: &str) -> Option<String> {
        match name {
            "seq" => Some(self.seq.to_string()),
            "at" => Some(self.at.clone()),
            "trigger" => Some(self.trigger.clone()),
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
