//! kstatus-like health of live objects.

use serde::Serialize;

/// How a live object is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HealthStatus {
    Healthy,
    Progressing,
    Degraded,
    Missing,
    Unknown,
}

/// A health status and the reason a person needs ("2 of 3 replicas available").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub status: HealthStatus,
    pub reason: String,
}

/// Placeholder until the kstatus rules land: objects are assumed healthy.
pub fn assess(_live: &serde_json::Value) -> Health {
    Health {
        status: HealthStatus::Healthy,
        reason: String::new(),
    }
}
