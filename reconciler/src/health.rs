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
